//! A placement: which host cell each guest cell goes to and which pCPU each vCPU gets. The fit
//! engine decides it; the XML rewrite, the migration and the DB fixup carry it out; playbooks
//! pass it between modules (`repin_migrate` returns it, `nova_instance_fixup` takes it).

use crate::model::cpuset::CpuSet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Nova's `hw:cpu_thread_policy`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ThreadPolicy {
    Prefer,
    Isolate,
    Require,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct CellPlacement {
    pub guest_cell: u32,
    pub host_cell: u32,
    pub vcpus: Vec<u32>,
    /// vCPU -> pCPU (string keys, as Nova's `cpu_pinning_raw`); empty for unpinned guests.
    pub vcpu_pins: BTreeMap<String, u32>,
    pub memory_mb: u64,
    pub pagesize_kb: Option<u64>,
    /// Isolated emulator pCPUs on this cell (Nova's `cpuset_reserved`).
    #[serde(default)]
    pub cpuset_reserved: Vec<u32>,
    #[serde(default)]
    pub thread_policy: Option<ThreadPolicy>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Placement {
    pub cells: Vec<CellPlacement>,
    /// Where the emulator threads run: the reserved pCPU(s) with `isolate`, else the union of
    /// the guest's pCPUs (Nova's `share` behaviour before Train).
    pub emulator_pins: Vec<u32>,
    #[serde(default)]
    pub dedicated: bool,
}

impl Placement {
    pub fn pinned_cpus(&self) -> CpuSet {
        self.cells
            .iter()
            .flat_map(|c| {
                c.vcpu_pins
                    .values()
                    .copied()
                    .chain(c.cpuset_reserved.iter().copied())
            })
            .collect()
    }
}
