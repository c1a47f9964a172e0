//! The placement engine: does a guest fit on a host, per NUMA cell, and on which pCPUs.
//!
//! Semantics are Nova Stein's (`nova.virt.hardware.numa_get_constraints` and
//! `numa_fit_instance_to_host`, 19.3.2): the same request keys, the same errors for bad
//! requests, and the same fit/no-fit decision per host cell. Where Nova's search is
//! path-dependent (it mutates the guest cell's page size while trying permutations, so a later
//! permutation can miss a cell that fits), this engine evaluates every cell afresh: it may find
//! a valid placement Nova misses, never the reverse. The equivalence tests show such cases.
//!
//! Packing policy (ours, deterministic; Nova takes the first permutation in cell order):
//! - cell choice: the fitting host cell that leaves the fewest free pCPUs (best fit), ties to the
//!   lower cell id; multi-cell guests search assignments in that order;
//! - within a cell: fill the free threads of partly used cores first (fewest free threads first,
//!   then lowest core), so whole free cores stay intact for `isolate`/`require` guests; `require`
//!   takes the largest sibling groups Nova would; `isolate` takes whole free cores, one thread
//!   each; an isolated emulator pCPU comes from outside those cores, partly used cores first.
//!
//! The pipeline, one file per step (this file holds the types and re-exports the functions):
//! - `request.rs`: flavor + image -> [`GuestTopology`] ([`constraints`], Nova's
//!   `numa_get_constraints`, its helpers named after Nova's);
//! - `cell.rs`: one guest cell on one host cell, yes/no with the reason (`check_cell`), then
//!   its pCPUs (`place_cell`);
//! - `search.rs`: guest cells onto distinct host cells ([`place`]), the refusal's reasons
//!   ([`fit_topology`]), a whole request ([`fit_request`]);
//! - `accounting.rs`: a placement's usage on a host ([`claim`]) and its check ([`validate`]);
//! - `drain.rs`: many guests off a host, on top of `place` and `claim`.

pub use crate::model::placement::{CellPlacement, Placement, ThreadPolicy};
mod accounting;
mod cell;
pub mod drain;
mod request;
mod search;
#[cfg(test)]
mod testkit;

pub use accounting::{claim, validate};
pub use request::{constraints, cpu_policies, CpuPolicies, RequestError};
pub use search::{fit_request, fit_topology, place};

use crate::model::cpuset::CpuSet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// Host side: the shape of Nova's NUMATopology (field names are Nova's).

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct MemPages {
    pub size_kb: u64,
    pub total: u64,
    #[serde(default)]
    pub used: u64,
    #[serde(default)]
    pub reserved: u64,
}

impl MemPages {
    pub fn free(&self) -> u64 {
        self.total
            .saturating_sub(self.used)
            .saturating_sub(self.reserved)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct HostCell {
    pub id: u32,
    /// pCPUs of this cell that pinned guests may use (cell CPUs ∩ dedicated set).
    pub cpuset: CpuSet,
    /// Thread sibling groups (cores), trimmed to `cpuset`.
    #[serde(default)]
    pub siblings: Vec<CpuSet>,
    #[serde(default)]
    pub pinned_cpus: CpuSet,
    /// MiB.
    pub memory: u64,
    #[serde(default)]
    pub memory_usage: u64,
    #[serde(default)]
    pub mempages: Vec<MemPages>,
    /// Accepted for compatibility with Nova's objects; Nova 19 decides on `pinned_cpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usage: Option<u64>,
}

impl HostCell {
    pub fn free_cpus(&self) -> CpuSet {
        self.cpuset.difference(&self.pinned_cpus)
    }
    fn threads_per_core(&self) -> usize {
        self.siblings
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(1)
            .max(1)
    }
    fn avail_memory(&self) -> i64 {
        (self.memory as i128 - self.memory_usage as i128).clamp(i64::MIN as i128, i64::MAX as i128)
            as i64
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Default)]
pub struct HostState {
    #[serde(default)]
    pub name: String,
    pub cells: Vec<HostCell>,
}

// ---------------------------------------------------------------------------------------------
// Request side.

/// A request as the scheduler sees it: flavor sizes, flavor extra specs, image properties.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub vcpus: u32,
    pub memory_mb: u64,
    #[serde(default)]
    pub extra_specs: BTreeMap<String, Value>,
    #[serde(default)]
    pub image_properties: BTreeMap<String, Value>,
}

/// Requested page size: Nova's MEMPAGES_SMALL/LARGE/ANY or an explicit size in KiB.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PageRequest {
    Small,
    Large,
    Any,
    Kb(u64),
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct GuestCellReq {
    pub id: u32,
    pub vcpus: Vec<u32>,
    pub memory_mb: u64,
    #[serde(default)]
    pub pagesize: Option<PageRequest>,
}

/// The guest's NUMA topology to place (Nova's InstanceNUMATopology before fitting).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct GuestTopology {
    pub cells: Vec<GuestCellReq>,
    pub dedicated: bool,
    #[serde(default)]
    pub thread_policy: Option<ThreadPolicy>,
    /// Emulator threads `isolate`: one more pCPU, on the host cell of guest cell 0.
    #[serde(default)]
    pub emulator_isolate: bool,
}

impl GuestTopology {
    /// What a running guest asks for, read from its libvirt definition: its guest NUMA cells
    /// (or one cell), page size, dedicated or not, isolated emulator. libvirt does not record
    /// the thread policy: the caller may give it (`None` = Nova's default, prefer).
    pub fn from_guest(
        g: &crate::model::domain::Guest,
        thread_policy: Option<ThreadPolicy>,
    ) -> GuestTopology {
        let pagesize = g.hugepage_kb.map(PageRequest::Kb);
        let cells = if g.numa_cells.is_empty() {
            vec![GuestCellReq {
                id: 0,
                vcpus: (0..g.vcpus).collect(),
                memory_mb: g.memory_mb,
                pagesize,
            }]
        } else {
            g.numa_cells
                .iter()
                .map(|c| GuestCellReq {
                    id: c.id,
                    vcpus: c.vcpus.clone(),
                    memory_mb: c.memory_mb,
                    pagesize,
                })
                .collect()
        };
        let dedicated = g.is_dedicated();
        GuestTopology {
            cells,
            dedicated,
            thread_policy: if dedicated { thread_policy } else { None },
            emulator_isolate: g.reserved_cpus().is_some(),
        }
    }

    /// The thread policy the engine applies: the one asked for, else prefer for a pinned guest
    /// (Nova's default); none for an unpinned one.
    pub fn effective_thread_policy(&self) -> Option<ThreadPolicy> {
        self.dedicated
            .then(|| self.thread_policy.unwrap_or(ThreadPolicy::Prefer))
    }

    pub fn total_vcpus(&self) -> usize {
        self.cells.iter().map(|c| c.vcpus.len()).sum()
    }
    pub fn total_memory_mb(&self) -> u64 {
        self.cells.iter().map(|c| c.memory_mb).sum()
    }
}

/// Where an existing guest's thread policy comes from (libvirt's definition does not record it).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PolicySource {
    /// Nova's database (the instance's numa_topology, else its flavor and image).
    NovaDb,
    /// The caller's argument.
    Argument,
    /// Nobody said: Nova's default, prefer.
    #[default]
    Assumed,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Refusal {
    /// `No numa available with <N> vcpu and <M> memory`, as the in-band patch says it.
    pub msg: String,
    /// One line per host cell (and per guest cell when several), saying what is short.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FitOptions {
    /// Also require free memory (memory - memory_usage) for unpinned NUMA guests. Nova lets
    /// those overcommit (its limits decide); for a migration we want the memory to be there.
    pub strict_memory: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            strict_memory: true,
        }
    }
}

pub fn no_numa_msg(vcpus: usize, memory_mb: u64) -> String {
    format!("No numa available with {vcpus} vcpu and {memory_mb} memory")
}

/// What the fit of a request comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The request asks for no NUMA placement (floating guest): nothing to place.
    NotNuma,
    Fits(Placement),
    NoFit(Refusal),
}
