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

pub mod drain;

use crate::limits;
use crate::model::cpuset::CpuSet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
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

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ThreadPolicy {
    Prefer,
    Isolate,
    Require,
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

    pub fn total_vcpus(&self) -> usize {
        self.cells.iter().map(|c| c.vcpus.len()).sum()
    }
    pub fn total_memory_mb(&self) -> u64 {
        self.cells.iter().map(|c| c.memory_mb).sum()
    }
}

/// An extra spec or image property as the string Nova sees (borrowed: decisions are hot).
fn spec_str(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "True" } else { "False" })),
        _ => None,
    }
}

/// Nova's request errors keep Nova's exception names, so operators can search for them.
fn req_err(name: &str, msg: impl std::fmt::Display) -> String {
    format!("{name}: {msg}")
}

/// Python's `int(text)`: surrounding whitespace, a sign, decimal digits (single `_` between).
fn py_int(text: &str) -> Option<i64> {
    let t = text.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    if !digits.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return None;
    }
    let n: i64 = digits.replace('_', "").parse().ok()?;
    Some(if neg { -n } else { n })
}

/// oslo.utils `string_to_bytes(text, 'IEC', return_int=True)`: `<number>[KMGT][i](b|bit|B)`,
/// powers of 1024, bits divided by 8, rounded up.
fn iec_bytes(text: &str) -> Option<f64> {
    let unit_end = if text.ends_with("bit") {
        3
    } else if text.ends_with('b') || text.ends_with('B') {
        1
    } else {
        return None;
    };
    let bits = unit_end == 3 || text.ends_with('b');
    let rest = &text[..text.len() - unit_end];
    let (num, exp) = if let Some(r) = rest.strip_suffix('i') {
        let (n, p) = r.split_at(r.len().saturating_sub(1));
        (n, "KMGT".find(p)? as i32 + 1)
    } else {
        match rest.chars().last() {
            Some(c @ ('K' | 'M' | 'G' | 'T')) => {
                (&rest[..rest.len() - 1], "KMGT".find(c)? as i32 + 1)
            }
            _ => (rest, 0),
        }
    };
    // ^[-+]?\d*\.?\d+
    let body = num.strip_prefix(['-', '+']).unwrap_or(num);
    let ok = !body.is_empty()
        && body.chars().last().is_some_and(|c| c.is_ascii_digit())
        && body.chars().all(|c| c.is_ascii_digit() || c == '.')
        && body.matches('.').count() <= 1;
    if !ok {
        return None;
    }
    let mut mag: f64 = num.parse().ok()?;
    if bits {
        mag /= 8.0;
    }
    Some((mag * 1024f64.powi(exp)).ceil())
}

/// `hw:mem_page_size` as Nova reads it (`check_and_return_pages_size`).
fn parse_pagesize(v: &str) -> Result<PageRequest, String> {
    let kb: f64 = match v {
        "small" => return Ok(PageRequest::Small),
        "large" => return Ok(PageRequest::Large),
        "any" => return Ok(PageRequest::Any),
        _ => match py_int(v) {
            Some(n) => n as f64,
            None => iec_bytes(v).map(|b| b / 1024.0).unwrap_or(0.0),
        },
    };
    if kb <= 0.0 {
        let shown = if kb == 0.0 {
            "0".to_string()
        } else {
            kb.to_string()
        };
        return Err(req_err(
            "MemoryPageSizeInvalid",
            format!("Invalid memory page size '{shown}'"),
        ));
    }
    // A fractional size (e.g. "1.5MB") matches no host page pool, as in Nova; 0 stands for it.
    Ok(PageRequest::Kb(if kb.fract() == 0.0 {
        kb as u64
    } else {
        0
    }))
}

/// The image properties as Nova's `ImageMetaProps.from_dict` types them; its coercion errors
/// (`ValueError`, `Invalid`) come before anything else, as in Nova.
struct ImageProps {
    numa_nodes: Option<i64>,
    cpu_policy: Option<String>,
    cpu_thread_policy: Option<String>,
    mem_page_size: Option<String>,
    numa_cpus: Option<Vec<Vec<u32>>>,
    numa_mem: Option<Vec<u64>>,
    realtime_mask: Option<String>,
}

fn image_props(req: &Request) -> Result<ImageProps, String> {
    if req.image_properties.is_empty() {
        return Ok(ImageProps {
            numa_nodes: None,
            cpu_policy: None,
            cpu_thread_policy: None,
            mem_page_size: None,
            numa_cpus: None,
            numa_mem: None,
            realtime_mask: None,
        });
    }
    let get = |k: &str| req.image_properties.get(k).filter(|v| !v.is_null());
    let value_error = |v: &Value| {
        req_err(
            "ValueError",
            format!(
                "Field value {} is invalid",
                spec_str(v)
                    .map(Cow::into_owned)
                    .unwrap_or_else(|| v.to_string())
            ),
        )
    };
    let enum_field = |k: &str, allowed: &[&str]| -> Result<Option<String>, String> {
        match get(k) {
            None => Ok(None),
            Some(v) => match spec_str(v) {
                Some(s) if allowed.contains(&s.as_ref()) => Ok(Some(s.into_owned())),
                _ => Err(value_error(v)),
            },
        }
    };
    let numa_nodes = match get("hw_numa_nodes") {
        None => None,
        Some(Value::Number(n)) => Some(
            n.as_i64()
                .ok_or_else(|| value_error(&Value::Number(n.clone())))?,
        ),
        Some(Value::Bool(b)) => Some(*b as i64),
        Some(v) => Some(spec_str(v).and_then(|s| py_int(&s)).ok_or_else(|| {
            req_err(
                "ValueError",
                format!("invalid literal for int() with base 10: {v}"),
            )
        })?),
    };
    // hw_numa_cpus.N / hw_numa_mem.N, consecutive from 0 (the plain list forms are ignored by
    // from_dict).
    let mut cpus = Vec::new();
    while let Some(v) = get(&format!("hw_numa_cpus.{}", cpus.len())) {
        let s = spec_str(v).unwrap_or_default();
        cpus.push(
            crate::model::cpuset::parse_spec(&s)
                .map_err(|e| req_err("Invalid", e))?
                .to_vec(),
        );
    }
    let mut mems = Vec::new();
    while let Some(v) = get(&format!("hw_numa_mem.{}", mems.len())) {
        let s = spec_str(v).unwrap_or_default();
        let m = py_int(&s).ok_or_else(|| {
            req_err(
                "ValueError",
                format!("invalid literal for int() with base 10: '{s}'"),
            )
        })?;
        mems.push(
            limits::memory_mib("hw_numa_mem", m.max(0) as u64)
                .map_err(|e| req_err("InvalidRequest", e))?,
        );
    }
    Ok(ImageProps {
        numa_nodes,
        cpu_policy: enum_field("hw_cpu_policy", &["dedicated", "shared"])?,
        cpu_thread_policy: enum_field("hw_cpu_thread_policy", &["prefer", "isolate", "require"])?,
        mem_page_size: get("hw_mem_page_size")
            .and_then(spec_str)
            .map(Cow::into_owned),
        numa_cpus: (!cpus.is_empty()).then_some(cpus),
        numa_mem: (!mems.is_empty()).then_some(mems),
        realtime_mask: get("hw_cpu_realtime_mask")
            .and_then(spec_str)
            .filter(|s| !s.is_empty())
            .map(Cow::into_owned),
    })
}

/// A NUMA node count from the flavor or image, at most [`limits::MAX_NUMA_NODES`].
fn numa_nodes(field: &str, n: i64) -> Result<u32, String> {
    limits::at_most(
        field,
        n.max(0) as u64,
        limits::MAX_NUMA_NODES as u64,
        "NUMA nodes",
    )
    .map(|n| n as u32)
    .map_err(|e| req_err("InvalidRequest", e))
}

/// Nova's `numa_get_constraints` (19.3.2): the guest topology a request asks for, `None` when
/// it asks for no NUMA placement at all (no pinning, no NUMA nodes, no page size), or Nova's
/// error. Checks run in Nova's order so the same request fails with the same exception.
pub fn constraints(req: &Request) -> Result<Option<GuestTopology>, String> {
    if req.vcpus == 0 {
        return Err(req_err("InvalidRequest", "vcpus must be at least 1"));
    }
    // Bounds before anything is sized from the request (the vCPU list, the cells).
    let bound = |r: Result<u64, limits::Error>| r.map_err(|e| req_err("InvalidRequest", e));
    bound(limits::vcpus("vcpus", req.vcpus).map(u64::from))?;
    bound(limits::memory_mib("memory_mb", req.memory_mb))?;
    let image = image_props(req)?;
    // Present flavor keys, empty values included (Nova tests presence for the .N maps and
    // truthiness elsewhere).
    let raw = |k: &str| {
        req.extra_specs
            .get(k)
            .map(|v| spec_str(v).unwrap_or_default())
    };
    let flavor = |k: &str| raw(k).filter(|s| !s.is_empty());

    // hw:numa_nodes / hw_numa_nodes
    let fnodes = flavor("hw:numa_nodes");
    if fnodes.is_some() && image.numa_nodes.is_some_and(|n| n != 0) {
        return Err(req_err("ImageNUMATopologyForbidden", "Image property 'hw_numa_nodes' is not permitted to override NUMA configuration set against the flavor"));
    }
    let nodes: Option<u32> = match (&fnodes, image.numa_nodes) {
        (Some(f), _) => match f.parse::<i64>() {
            // strutils.is_int_like: str(int(v)) == v, so "+1", "02", " 2" are refused
            Ok(n) if n.to_string() == *f && n >= 1 => Some(numa_nodes("hw:numa_nodes", n)?),
            _ => {
                return Err(req_err(
                    "InvalidNUMANodesNumber",
                    format!(
                    "The property 'numa_nodes' cannot be '{f}'. It must be a number greater than 0"
                ),
                ))
            }
        },
        (None, Some(n)) if n < 1 => {
            return Err(req_err(
                "InvalidNUMANodesNumber",
                format!(
                    "The property 'numa_nodes' cannot be '{n}'. It must be a number greater than 0"
                ),
            ))
        }
        (None, Some(n)) => Some(numa_nodes("hw_numa_nodes", n)?),
        (None, None) => None,
    };
    // hw:mem_page_size: the image may only choose when the flavor says large or any.
    let pagesize = match (
        flavor("hw:mem_page_size"),
        image.mem_page_size.clone().filter(|s| !s.is_empty()),
    ) {
        (None, Some(i)) => {
            return Err(req_err(
                "MemoryPageSizeForbidden",
                format!("Page size {i} forbidden against '<empty>'"),
            ))
        }
        (None, None) => None,
        (Some(f), i) => {
            let p = parse_pagesize(&f)?;
            match i {
                Some(i) if matches!(p, PageRequest::Any | PageRequest::Large) => {
                    Some(parse_pagesize(&i)?)
                }
                Some(i) => {
                    return Err(req_err(
                        "MemoryPageSizeForbidden",
                        format!("Page size {i} forbidden against '{f}'"),
                    ))
                }
                None => Some(p),
            }
        }
    };
    let mut cells = None;
    if nodes.is_some() || pagesize.is_some() {
        let nodes = nodes.unwrap_or(1);
        let flavor_map = |key: &str,
                          parse: &dyn Fn(&str) -> Result<Vec<u32>, String>|
         -> Result<Option<Vec<Vec<u32>>>, String> {
            let mut out = Vec::new();
            while let Some(v) = raw(&format!("{key}.{}", out.len())) {
                out.push(parse(&v)?);
            }
            Ok((!out.is_empty()).then_some(out))
        };
        let fcpus = flavor_map("hw:numa_cpus", &|v| {
            crate::model::cpuset::parse_spec(v)
                .map(|s| s.to_vec())
                .map_err(|e| req_err("Invalid", e))
        })?;
        let cpu_list = match (fcpus, &image.numa_cpus) {
            (None, img) => img.clone(),
            (Some(_), Some(_)) => return Err(req_err("ImageNUMATopologyForbidden", "Image property 'hw_numa_cpus' is not permitted to override NUMA configuration set against the flavor")),
            (Some(f), None) => Some(f),
        };
        let fmem = flavor_map("hw:numa_mem", &|v| match py_int(v) {
            // Bounded first: the value is carried as u32 MiB (64 TiB fits).
            Some(m) => Ok(vec![limits::memory_mib("hw:numa_mem", m.max(0) as u64)
                .map_err(|e| req_err("InvalidRequest", e))?
                as u32]),
            None => Err(req_err(
                "ValueError",
                format!("invalid literal for int() with base 10: '{v}'"),
            )),
        })?;
        let mem_list: Option<Vec<u64>> = match (fmem, &image.numa_mem) {
            (None, img) => img.clone(),
            (Some(_), Some(_)) => return Err(req_err("ImageNUMATopologyForbidden", "Image property 'hw_numa_mem' is not permitted to override NUMA configuration set against the flavor")),
            (Some(f), None) => Some(f.into_iter().map(|m| m[0] as u64).collect()),
        };
        let incomplete = || {
            req_err(
                "ImageNUMATopologyIncomplete",
                "CPU and memory allocation must be provided for all NUMA nodes",
            )
        };
        if cpu_list.is_some() != mem_list.is_some() {
            return Err(incomplete());
        }
        if cpu_list.as_ref().is_some_and(|l| l.len() != nodes as usize)
            || mem_list.as_ref().is_some_and(|l| l.len() != nodes as usize)
        {
            return Err(incomplete());
        }
        let mut out = Vec::new();
        match (cpu_list, mem_list) {
            (Some(cpus), Some(mems)) => {
                let mut avail: std::collections::BTreeSet<u32> = (0..req.vcpus).collect();
                let mut total = 0u64;
                for n in 0..nodes as usize {
                    for c in &cpus[n] {
                        if *c > req.vcpus - 1 {
                            return Err(req_err(
                                "ImageNUMATopologyCPUOutOfRange",
                                format!("CPU number {c} is larger than max of {}", req.vcpus - 1),
                            ));
                        }
                        if !avail.remove(c) {
                            return Err(req_err(
                                "ImageNUMATopologyCPUDuplicates",
                                format!("CPU number {c} is assigned to two nodes"),
                            ));
                        }
                    }
                    total += mems[n];
                    out.push(GuestCellReq {
                        id: n as u32,
                        vcpus: cpus[n].clone(),
                        memory_mb: mems[n],
                        pagesize,
                    });
                }
                if !avail.is_empty() {
                    return Err(req_err(
                        "ImageNUMATopologyCPUsUnassigned",
                        format!("CPU number(s) {avail:?} are not assigned to any node"),
                    ));
                }
                if total != req.memory_mb {
                    return Err(req_err(
                        "ImageNUMATopologyMemoryOutOfRange",
                        format!(
                            "{total} MB of memory assigned, but expected {} MB",
                            req.memory_mb
                        ),
                    ));
                }
            }
            _ => {
                if !req.vcpus.is_multiple_of(nodes) || !req.memory_mb.is_multiple_of(nodes as u64) {
                    return Err(req_err("ImageNUMATopologyAsymmetric", "Asymmetric NUMA topologies require explicit assignment of CPUs and memory to nodes in image or flavor"));
                }
                let (ncpus, mem) = (req.vcpus / nodes, req.memory_mb / nodes as u64);
                for n in 0..nodes {
                    out.push(GuestCellReq {
                        id: n,
                        vcpus: (n * ncpus..(n + 1) * ncpus).collect(),
                        memory_mb: mem,
                        pagesize,
                    });
                }
            }
        }
        cells = Some(out);
    }

    // hw:cpu_policy
    let fpol = flavor("hw:cpu_policy");
    if let Some(p) = &fpol {
        if p != "dedicated" && p != "shared" {
            return Err(req_err("InvalidCPUAllocationPolicy", format!("CPU policy '{p}' from flavor extra specs is invalid, must be one of ['dedicated', 'shared']")));
        }
    }
    let dedicated = match (fpol.as_deref(), image.cpu_policy.as_deref()) {
        (Some("dedicated"), _) => true,
        (Some("shared"), Some("dedicated")) => return Err(req_err("ImageCPUPinningForbidden", "Image property 'hw_cpu_policy' is not permitted to override CPU pinning policy set against the flavor")),
        (Some("shared"), _) => false,
        (None, Some("dedicated")) => true,
        _ => false,
    };
    // hw:cpu_thread_policy: a present-but-empty flavor value is neither None nor prefer in Nova.
    let ftp_raw = raw("hw:cpu_thread_policy");
    if let Some(p) = ftp_raw.as_deref().filter(|p| !p.is_empty()) {
        if !["prefer", "isolate", "require"].contains(&p) {
            return Err(req_err("InvalidCPUThreadAllocationPolicy", format!("CPU thread policy '{p}' from flavor extra specs is invalid, must be one of ['prefer', 'isolate', 'require']")));
        }
    }
    let tp_of = |p: &str| match p {
        "isolate" => ThreadPolicy::Isolate,
        "require" => ThreadPolicy::Require,
        _ => ThreadPolicy::Prefer,
    };
    let itp = image.cpu_thread_policy.as_deref();
    let thread_policy: Option<String> = match ftp_raw.as_deref() {
        None | Some("prefer") => ftp_raw.as_deref().or(itp).map(str::to_string),
        Some(f) => {
            if itp.is_some_and(|i| i != f) {
                return Err(req_err("ImageCPUThreadPolicyForbidden", "Image property 'hw_cpu_thread_policy' is not permitted to override CPU thread pinning policy set against the flavor"));
            }
            Some(f.to_string())
        }
    };
    // hw:emulator_threads_policy (flavor only in Stein)
    let emu = flavor("hw:emulator_threads_policy");
    if let Some(e) = &emu {
        if e != "share" && e != "isolate" {
            return Err(req_err(
                "InvalidEmulatorThreadsPolicy",
                format!(
                    "Emulator threads policy '{e}' is invalid, must be one of ['share', 'isolate']"
                ),
            ));
        }
    }
    let emulator_isolate = emu.as_deref() == Some("isolate");
    let realtime = flavor("hw:cpu_realtime").is_some_and(|v| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "1" | "t" | "true" | "on" | "y" | "yes"
        )
    });
    let rt_mask = image
        .realtime_mask
        .clone()
        .or_else(|| flavor("hw:cpu_realtime_mask").map(Cow::into_owned));

    if !dedicated {
        if thread_policy.as_deref().is_some_and(|t| !t.is_empty()) {
            return Err(req_err(
                "CPUThreadPolicyConfigurationInvalid",
                "Cannot set cpu thread pinning policy in a non dedicated cpu pinning policy",
            ));
        }
        if emulator_isolate {
            return Err(req_err(
                "BadRequirementEmulatorThreadsPolicy",
                "An isolated CPU emulator threads option requires a dedicated CPU policy option.",
            ));
        }
        if realtime {
            return Err(req_err(
                "RealtimeConfigurationInvalid",
                "Cannot set realtime policy in a non dedicated cpu pinning policy",
            ));
        }
        return Ok(cells.map(|cells| GuestTopology {
            cells,
            dedicated: false,
            thread_policy: None,
            emulator_isolate: false,
        }));
    }
    if realtime && rt_mask.is_none() {
        return Err(req_err("RealtimeMaskNotFoundOrInvalid", "Realtime policy needs vCPU(s) mask configured with at least 1 RT vCPU and 1 ordinary vCPU. See hw:cpu_realtime_mask or hw_cpu_realtime_mask"));
    }
    if thread_policy.as_deref() == Some("") {
        // Nova sets the empty string on the cell object, whose enum field refuses it.
        return Err(req_err("ValueError", "Field value  is invalid"));
    }
    let thread_policy = thread_policy.as_deref().map(tp_of);
    let cells = cells.unwrap_or_else(|| {
        vec![GuestCellReq {
            id: 0,
            vcpus: (0..req.vcpus).collect(),
            memory_mb: req.memory_mb,
            pagesize: None,
        }]
    });
    Ok(Some(GuestTopology {
        cells,
        dedicated: true,
        thread_policy,
        emulator_isolate,
    }))
}

// ---------------------------------------------------------------------------------------------
// Placement.

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

/// Why a guest cell does not fit on a host cell, or which page size it gets.
/// Why a guest cell does not fit on a host cell. Kept as data while searching (a decision
/// formats nothing) and put into words only for a refusal.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Why {
    Pages(PageRequest),
    SmallPages { small_mb: u64 },
    Memory { have: u64 },
    Usable { have: usize, need: usize },
    FreeMemory { have: i64 },
    NoVcpus,
    Free { have: usize, need: usize },
    IsolateCores { have: usize, need: usize },
    IsolateReserved { n: usize },
    RequireNoSmt,
    RequirePairs { n: usize },
    NoReserved,
}

impl Why {
    fn describe(&self, h: &HostCell, g: &GuestCellReq) -> String {
        match *self {
            Why::Pages(req) => {
                let detail: Vec<String> = page_candidates(h, req)
                    .map(|s| match h.mempages.iter().find(|p| p.size_kb == s) {
                        Some(p) => format!("{} free {} KiB pages", p.free(), s),
                        None => format!("no {s} KiB pages"),
                    })
                    .collect();
                let what = match req {
                    PageRequest::Kb(k) => format!("{k} KiB"),
                    other => format!("{other:?}").to_lowercase(),
                };
                let detail = if detail.is_empty() { "no page pools".to_string() } else { detail.join(", ") };
                format!("{} MiB in pages of {what} not available ({detail})", g.memory_mb)
            }
            Why::SmallPages { small_mb } => format!("{} MiB does not fit in {small_mb} MiB of small pages", g.memory_mb),
            Why::Memory { have } => format!("{have} MiB memory, needs {}", g.memory_mb),
            Why::Usable { have, need } => format!("{have} pCPUs usable for pinning, needs {need}"),
            Why::FreeMemory { have } => format!("{} MiB free memory, needs {}", have.max(0), g.memory_mb),
            Why::NoVcpus => format!("guest cell {} has no vCPUs to pin", g.id),
            Why::Free { have, need } => format!("{have} free pCPUs, needs {need}"),
            Why::IsolateCores { have, need } => format!("thread policy isolate needs {need} fully free cores, {have} free"),
            Why::IsolateReserved { n } => format!("thread policy isolate: no pCPU left outside the {n} isolated cores for the emulator threads"),
            Why::RequireNoSmt => "thread policy require needs SMT (thread siblings), the host has none".into(),
            Why::RequirePairs { n } => format!("thread policy require: {n} vCPUs do not fit on free sibling pairs"),
            Why::NoReserved => "no free pCPU left for the isolated emulator threads".into(),
        }
    }
}

/// The page sizes a request may use on a cell, in the order Nova tries them (largest first).
fn page_candidates(h: &HostCell, req: PageRequest) -> impl Iterator<Item = u64> + '_ {
    let smallest = h.mempages.iter().map(|p| p.size_kb).min();
    let mut last = u64::MAX;
    // Descending sizes without allocating: pools are few (4K, 2M, 1G).
    let desc = std::iter::from_fn(move || {
        let next = h
            .mempages
            .iter()
            .map(|p| p.size_kb)
            .filter(|s| *s < last)
            .max()?;
        last = next;
        Some(next)
    });
    let explicit = match req {
        PageRequest::Kb(k) => Some(k),
        _ => None,
    };
    desc.filter(move |s| match req {
        PageRequest::Small => Some(*s) == smallest,
        PageRequest::Large => Some(*s) != smallest,
        PageRequest::Any => true,
        PageRequest::Kb(_) => false,
    })
    .chain(explicit)
}

/// Nova's memory checks for one cell: the page size it gets, or why not.
fn cell_memory_check(h: &HostCell, g: &GuestCellReq) -> Result<Option<u64>, Why> {
    // Sizes are bounded where they enter (`limits`); the arithmetic is checked here anyway, as
    // a HostState may be built by hand.
    let mem_kb = g.memory_mb.saturating_mul(1024);
    match g.pagesize {
        Some(req) => {
            let fits = |size: u64| {
                h.mempages
                    .iter()
                    .find(|p| p.size_kb == size)
                    .is_some_and(|p| {
                        p.size_kb > 0
                            && mem_kb <= p.free().saturating_mul(p.size_kb)
                            && mem_kb.is_multiple_of(p.size_kb)
                    })
            };
            match page_candidates(h, req).find(|s| fits(*s)) {
                Some(s) => Ok(Some(s)),
                None => Err(Why::Pages(req)),
            }
        }
        None => {
            match h.mempages.iter().min_by_key(|p| p.size_kb) {
                Some(small) => {
                    let small_kb = small.total.saturating_mul(small.size_kb);
                    if mem_kb > small_kb || mem_kb.checked_rem(small.size_kb) != Some(0) {
                        return Err(Why::SmallPages {
                            small_mb: small_kb / 1024,
                        });
                    }
                }
                None => {
                    if g.memory_mb > h.memory {
                        return Err(Why::Memory { have: h.memory });
                    }
                }
            }
            Ok(None)
        }
    }
}

/// Free threads of one core: in the cell's usable set and not pinned.
fn core_free(core: &CpuSet, h: &HostCell) -> usize {
    core.count_and_not(&h.pinned_cpus, Some(&h.cpuset))
}

/// Can the guest cell go on the host cell? Nova 19.3.2's conditions (`_numa_fit_instance_cell`,
/// `_numa_fit_instance_cell_with_pinning`, `_pack_instance_onto_cores`), counted without
/// building anything; `place_cell` then picks the pCPUs for the chosen cell only.
fn check_cell(
    h: &HostCell,
    g: &GuestCellReq,
    topo: &GuestTopology,
    reserved: usize,
    opts: &FitOptions,
) -> Result<Option<u64>, Why> {
    let pagesize = cell_memory_check(h, g)?;
    let n = g.vcpus.len();
    let usable = h.cpuset.len();
    if n + reserved > usable {
        return Err(Why::Usable {
            have: usable,
            need: n + reserved,
        });
    }
    if !topo.dedicated {
        if opts.strict_memory && (g.memory_mb as i64) > h.avail_memory() {
            return Err(Why::FreeMemory {
                have: h.avail_memory(),
            });
        }
        return Ok(pagesize);
    }
    if n == 0 {
        // Nova's packing returns no pinning for an empty cell and so refuses it.
        return Err(Why::NoVcpus);
    }
    let free = h.cpuset.count_and_not(&h.pinned_cpus, None);
    if free < n + reserved {
        return Err(Why::Free {
            have: free,
            need: n + reserved,
        });
    }
    if (g.memory_mb as i64) > h.avail_memory() {
        return Err(Why::FreeMemory {
            have: h.avail_memory(),
        });
    }
    // Nova only pins CPUs that a sibling group names; with no sibling information at all
    // (Nova crashes there) every free CPU is a core of its own.
    let (sib_free, tpc) = if h.siblings.is_empty() {
        (free, 1)
    } else {
        (
            h.siblings.iter().map(|s| core_free(s, h)).sum(),
            h.threads_per_core(),
        )
    };
    match topo.thread_policy {
        Some(ThreadPolicy::Isolate) => {
            let whole = if h.siblings.is_empty() {
                free
            } else {
                h.siblings
                    .iter()
                    .filter(|s| s.len() == tpc && core_free(s, h) == tpc)
                    .count()
            };
            if whole < n {
                return Err(Why::IsolateCores {
                    have: whole,
                    need: n,
                });
            }
            if sib_free < n * tpc + reserved {
                return Err(Why::IsolateReserved { n });
            }
        }
        Some(ThreadPolicy::Require) => {
            if tpc <= 1 {
                return Err(Why::RequireNoSmt);
            }
            let count_ge = |t: usize| h.siblings.iter().filter(|s| core_free(s, h) >= t).count();
            if !(2..=tpc).any(|t| t * count_ge(t) >= n) {
                return Err(Why::RequirePairs { n });
            }
            if sib_free < n + reserved {
                return Err(Why::NoReserved);
            }
        }
        None | Some(ThreadPolicy::Prefer) => {
            if sib_free < n + reserved {
                return Err(Why::Free {
                    have: sib_free,
                    need: n + reserved,
                });
            }
        }
    }
    Ok(pagesize)
}

/// The free threads of each core of the cell (cores with none left are dropped), in the
/// packing order: fewest free threads first, then by lowest thread id.
fn free_cores(h: &HostCell) -> Vec<Vec<u32>> {
    let free = h.free_cpus();
    let mut cores: Vec<Vec<u32>> = if h.siblings.is_empty() {
        free.iter().map(|id| vec![id]).collect()
    } else {
        h.siblings
            .iter()
            .map(|s| s.intersection(&free).to_vec())
            .filter(|f| !f.is_empty())
            .collect()
    };
    cores.sort_by(|a, b| a.len().cmp(&b.len()).then(a[0].cmp(&b[0])));
    cores
}

/// Pick the pCPUs of a cell `check_cell` accepted: our packing policy (module docs).
fn place_cell(
    h: &HostCell,
    g: &GuestCellReq,
    topo: &GuestTopology,
    reserved: usize,
    pagesize_kb: Option<u64>,
) -> CellPlacement {
    let mut place = CellPlacement {
        guest_cell: g.id,
        host_cell: h.id,
        vcpus: g.vcpus.clone(),
        vcpu_pins: BTreeMap::new(),
        memory_mb: g.memory_mb,
        pagesize_kb,
        cpuset_reserved: Vec::new(),
        thread_policy: topo.thread_policy,
    };
    if !topo.dedicated {
        return place;
    }
    let n = g.vcpus.len();
    let cores = free_cores(h);
    let tpc = if h.siblings.is_empty() {
        1
    } else {
        h.threads_per_core()
    };
    // The emulator's pCPU: partly used cores first (`cores` is in that order); with isolate
    // never on a core the vCPUs use.
    let take_reserved = |used: &CpuSet, skip_cores: bool| -> Vec<u32> {
        let mut out = Vec::new();
        for c in &cores {
            if skip_cores && c.iter().any(|x| used.contains(*x)) {
                continue;
            }
            out.extend(
                c.iter()
                    .copied()
                    .filter(|x| !used.contains(*x))
                    .take(reserved - out.len()),
            );
        }
        out
    };
    let (pins, res): (Vec<u32>, Vec<u32>) = match topo.thread_policy {
        Some(ThreadPolicy::Isolate) => {
            // Whole free cores, lowest first, one thread each.
            let mut whole: Vec<&Vec<u32>> = cores.iter().filter(|c| c.len() == tpc).collect();
            whole.sort_by_key(|c| c[0]);
            let pins = whole.iter().take(n).map(|c| c[0]).collect();
            let used: CpuSet = whole
                .iter()
                .take(n)
                .flat_map(|c| c.iter().copied())
                .collect();
            (pins, take_reserved(&used, true))
        }
        Some(ThreadPolicy::Require) => {
            // The largest sibling groups that hold the guest, as Nova chooses them.
            let count_ge = |t: usize| cores.iter().filter(|c| c.len() >= t).count();
            let t = (2..=tpc).rev().find(|t| t * count_ge(*t) >= n).unwrap_or(2);
            let pins: Vec<u32> = cores
                .iter()
                .filter(|c| c.len() >= t)
                .flat_map(|c| c.iter().take(t).copied())
                .take(n)
                .collect();
            let used: CpuSet = pins.iter().copied().collect();
            (pins, take_reserved(&used, false))
        }
        None | Some(ThreadPolicy::Prefer) => {
            let pins: Vec<u32> = cores.iter().flatten().copied().take(n).collect();
            let used: CpuSet = pins.iter().copied().collect();
            (pins, take_reserved(&used, false))
        }
    };
    let mut vcpus = g.vcpus.clone();
    vcpus.sort_unstable();
    place.vcpu_pins = vcpus
        .iter()
        .zip(pins)
        .map(|(v, p)| (v.to_string(), p))
        .collect();
    place.cpuset_reserved = res;
    place
}

fn reserved_of(topo: &GuestTopology, gi: usize) -> usize {
    usize::from(topo.emulator_isolate && gi == 0)
}

/// Every (guest cell, host cell) pair once, row-major: the cell fits are independent.
fn cell_table(
    host: &HostState,
    topo: &GuestTopology,
    opts: &FitOptions,
) -> Vec<Result<Option<u64>, Why>> {
    topo.cells
        .iter()
        .enumerate()
        .flat_map(|(gi, g)| {
            host.cells
                .iter()
                .map(move |h| check_cell(h, g, topo, reserved_of(topo, gi), opts))
        })
        .collect()
}

/// The decision alone, as Nova's `numa_fit_instance_to_host` makes it: a placement or None.
/// No explanation is built; `fit_topology` adds one for refusals.
pub fn place(host: &HostState, topo: &GuestTopology, opts: &FitOptions) -> Option<Placement> {
    if host.cells.len() < topo.cells.len() {
        return None;
    }
    let hc = host.cells.len();
    let table = cell_table(host, topo, opts);
    let free_of = |h: &HostCell| h.cpuset.count_and_not(&h.pinned_cpus, None);
    let chosen: Vec<usize> = if topo.cells.len() == 1 {
        // The common case: the best-fit cell directly (fewest free pCPUs, then lowest id).
        vec![(0..hc)
            .filter(|i| table[*i].is_ok())
            .min_by_key(|i| (free_of(&host.cells[*i]), host.cells[*i].id))?]
    } else {
        let order: Vec<Vec<usize>> = (0..topo.cells.len())
            .map(|gi| {
                let mut idx: Vec<usize> = (0..hc).filter(|i| table[gi * hc + i].is_ok()).collect();
                idx.sort_by_key(|i| (free_of(&host.cells[*i]), host.cells[*i].id));
                idx
            })
            .collect();
        let mut chosen = Vec::new();
        if !assign(&order, 0, &mut chosen) {
            return None;
        }
        chosen
    };
    let cells: Vec<CellPlacement> = chosen
        .iter()
        .enumerate()
        .map(|(gi, hi)| {
            let pagesize = table[gi * hc + hi].unwrap_or(None);
            place_cell(
                &host.cells[*hi],
                &topo.cells[gi],
                topo,
                reserved_of(topo, gi),
                pagesize,
            )
        })
        .collect();
    let emulator_pins = if topo.emulator_isolate {
        cells
            .iter()
            .flat_map(|c| c.cpuset_reserved.iter().copied())
            .collect()
    } else {
        let all: CpuSet = cells
            .iter()
            .flat_map(|c| c.vcpu_pins.values().copied())
            .collect();
        all.to_vec()
    };
    Some(Placement {
        cells,
        emulator_pins,
        dedicated: topo.dedicated,
    })
}

/// Place a guest topology on a host, or say per cell why not.
pub fn fit_topology(
    host: &HostState,
    topo: &GuestTopology,
    opts: &FitOptions,
) -> Result<Placement, Refusal> {
    place(host, topo, opts).ok_or_else(|| explain(host, topo, opts))
}

/// The refusal: Nova's message and, per host cell, what is short.
fn explain(host: &HostState, topo: &GuestTopology, opts: &FitOptions) -> Refusal {
    let msg = no_numa_msg(topo.total_vcpus(), topo.total_memory_mb());
    if host.cells.len() < topo.cells.len() {
        let why = format!(
            "the guest has {} NUMA cells, the host only {}",
            topo.cells.len(),
            host.cells.len()
        );
        return Refusal {
            msg,
            reasons: vec![why],
        };
    }
    let hc = host.cells.len();
    let table = cell_table(host, topo, opts);
    let mut reasons = Vec::new();
    for (gi, g) in topo.cells.iter().enumerate() {
        for (hi, h) in host.cells.iter().enumerate() {
            let prefix = if topo.cells.len() > 1 {
                format!("guest cell {} on cell {}", g.id, h.id)
            } else {
                format!("cell {}", h.id)
            };
            match &table[gi * hc + hi] {
                Err(why) => reasons.push(format!("{prefix}: {}", why.describe(h, g))),
                Ok(_) if topo.cells.len() > 1 => reasons.push(format!("{prefix}: fits alone")),
                Ok(_) => {}
            }
        }
    }
    if topo.cells.len() > 1 {
        reasons.push("no assignment puts every guest cell on a distinct host cell".into());
    }
    Refusal { msg, reasons }
}

fn assign(order: &[Vec<usize>], gi: usize, chosen: &mut Vec<usize>) -> bool {
    if gi == order.len() {
        return true;
    }
    for &hi in &order[gi] {
        if !chosen.contains(&hi) {
            chosen.push(hi);
            if assign(order, gi + 1, chosen) {
                return true;
            }
            chosen.pop();
        }
    }
    false
}

/// What the fit of a request comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The request asks for no NUMA placement (floating guest): nothing to place.
    NotNuma,
    Fits(Placement),
    NoFit(Refusal),
}

/// From a request (flavor + image): Nova's constraints, then the fit. `Err` is a bad request.
pub fn fit_request(host: &HostState, req: &Request, opts: &FitOptions) -> Result<Decision, String> {
    match constraints(req)? {
        None => Ok(Decision::NotNuma),
        Some(topo) => Ok(match fit_topology(host, &topo, opts) {
            Ok(p) => Decision::Fits(p),
            Err(r) => Decision::NoFit(r),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Usage accounting and validation (shared by drain planning and post-migration checks).

/// Account a placement on a host: pins (whole cores for `isolate`), memory, pages.
pub fn claim(host: &mut HostState, p: &Placement) {
    for c in &p.cells {
        let Some(h) = host.cells.iter_mut().find(|h| h.id == c.host_cell) else {
            continue;
        };
        let mut pins: CpuSet = c
            .vcpu_pins
            .values()
            .copied()
            .chain(c.cpuset_reserved.iter().copied())
            .collect();
        if c.thread_policy == Some(ThreadPolicy::Isolate) {
            let cores: Vec<CpuSet> = h
                .siblings
                .iter()
                .filter(|s| c.vcpu_pins.values().any(|p| s.contains(*p)))
                .cloned()
                .collect();
            for s in cores {
                pins = pins.union(&s);
            }
        }
        h.pinned_cpus = h.pinned_cpus.union(&pins);
        h.memory_usage = h.memory_usage.saturating_add(c.memory_mb);
        if let Some(size) = c.pagesize_kb {
            if let Some(pool) = h.mempages.iter_mut().find(|m| m.size_kb == size) {
                let pages = c.memory_mb.saturating_mul(1024).checked_div(size);
                pool.used = pool.used.saturating_add(pages.unwrap_or(0));
            }
        }
    }
}

/// Check a placement against a host state and its topology: distinct, free, allowed pCPUs on
/// distinct host cells, memory and pages available, thread policy respected. Used to verify
/// plans (ours and Nova's) and a guest's live pins after a migration.
pub fn validate(host: &HostState, topo: &GuestTopology, p: &Placement) -> Result<(), String> {
    if p.cells.len() != topo.cells.len() {
        return Err(format!(
            "placement has {} cells, the guest {}",
            p.cells.len(),
            topo.cells.len()
        ));
    }
    let mut used_cells = std::collections::BTreeSet::new();
    let mut all = CpuSet::new();
    for (c, g) in p.cells.iter().zip(&topo.cells) {
        let h = host
            .cells
            .iter()
            .find(|h| h.id == c.host_cell)
            .ok_or(format!("host cell {} does not exist", c.host_cell))?;
        if !used_cells.insert(c.host_cell) {
            return Err(format!("two guest cells on host cell {}", c.host_cell));
        }
        if c.memory_mb != g.memory_mb {
            return Err(format!(
                "guest cell {} memory {} != {}",
                g.id, c.memory_mb, g.memory_mb
            ));
        }
        let free = h.free_cpus();
        if topo.dedicated {
            if c.vcpu_pins.len() != g.vcpus.len() {
                return Err(format!(
                    "guest cell {}: {} pins for {} vCPUs",
                    g.id,
                    c.vcpu_pins.len(),
                    g.vcpus.len()
                ));
            }
            for v in &g.vcpus {
                if !c.vcpu_pins.contains_key(&v.to_string()) {
                    return Err(format!("vCPU {v} is not pinned"));
                }
            }
            if (g.memory_mb as i64) > h.avail_memory() {
                return Err(format!(
                    "cell {}: {} MiB free memory, needs {}",
                    h.id,
                    h.avail_memory(),
                    g.memory_mb
                ));
            }
        }
        for cpu in c.vcpu_pins.values().chain(c.cpuset_reserved.iter()) {
            if !h.cpuset.contains(*cpu) {
                return Err(format!("pCPU {cpu} is not a usable pCPU of cell {}", h.id));
            }
            if !free.contains(*cpu) {
                return Err(format!("pCPU {cpu} is already pinned"));
            }
            if all.contains(*cpu) {
                return Err(format!("pCPU {cpu} is used twice"));
            }
            all.insert(*cpu);
        }
        if topo.thread_policy == Some(ThreadPolicy::Isolate) {
            let tpc = h.threads_per_core();
            for cpu in c.vcpu_pins.values() {
                let core = h
                    .siblings
                    .iter()
                    .find(|s| s.contains(*cpu))
                    .ok_or(format!("pCPU {cpu} has no core"))?;
                if core.len() != tpc || !core.is_subset(&free) {
                    return Err(format!("isolate: core of pCPU {cpu} is not fully free"));
                }
                if c.vcpu_pins.values().filter(|p| core.contains(**p)).count() > 1 {
                    return Err(format!("isolate: two vCPUs share the core of pCPU {cpu}"));
                }
            }
        }
        if let Some(size) = c.pagesize_kb {
            let pool = h
                .mempages
                .iter()
                .find(|m| m.size_kb == size)
                .ok_or(format!("no {size} KiB pages on cell {}", h.id))?;
            let kb = c.memory_mb.saturating_mul(1024);
            if kb.checked_rem(size) != Some(0) || kb > pool.free().saturating_mul(size) {
                return Err(format!(
                    "cell {}: {} MiB does not fit in free {size} KiB pages",
                    h.id, c.memory_mb
                ));
            }
        }
    }
    let res_total: usize = p.cells.iter().map(|c| c.cpuset_reserved.len()).sum();
    if topo.emulator_isolate && res_total != 1 {
        return Err(format!(
            "emulator isolate needs exactly one reserved pCPU, got {res_total}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cell(id: u32, cpus: &[u32], sib: &[&[u32]], pinned: &[u32], mem: u64) -> HostCell {
        HostCell {
            id,
            cpuset: cpus.iter().copied().collect(),
            siblings: sib.iter().map(|s| s.iter().copied().collect()).collect(),
            pinned_cpus: pinned.iter().copied().collect(),
            memory: mem,
            memory_usage: 0,
            mempages: vec![MemPages {
                size_kb: 4,
                total: mem * 256,
                used: 0,
                reserved: 0,
            }],
            cpu_usage: None,
        }
    }
    fn nosmt(id: u32, cpus: &[u32], pinned: &[u32], mem: u64) -> HostCell {
        let sib: Vec<Vec<u32>> = cpus.iter().map(|c| vec![*c]).collect();
        let sib_ref: Vec<&[u32]> = sib.iter().map(|v| v.as_slice()).collect();
        cell(id, cpus, &sib_ref, pinned, mem)
    }
    fn req(vcpus: u32, mem: u64, specs: serde_json::Value) -> Request {
        let extra_specs = specs
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Request {
            vcpus,
            memory_mb: mem,
            extra_specs,
            image_properties: BTreeMap::new(),
        }
    }
    fn fits(host: &HostState, r: &Request) -> Placement {
        match fit_request(host, r, &FitOptions::default()).unwrap() {
            Decision::Fits(p) => {
                validate(host, &constraints(r).unwrap().unwrap(), &p).unwrap();
                p
            }
            other => panic!("expected a fit, got {other:?}"),
        }
    }
    fn refused(host: &HostState, r: &Request) -> Refusal {
        match fit_request(host, r, &FitOptions::default()).unwrap() {
            Decision::NoFit(f) => f,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn taken_pcpus_are_avoided() {
        // Field case 1: the destination already pins 0-1 for another guest.
        let host = HostState {
            name: "dst".into(),
            cells: vec![nosmt(0, &[0, 1, 2, 3], &[0, 1], 4096)],
        };
        let p = fits(&host, &req(2, 1024, json!({"hw:cpu_policy": "dedicated"})));
        let pins: Vec<u32> = p.cells[0].vcpu_pins.values().copied().collect();
        assert_eq!(pins, vec![2, 3]);
        assert_eq!(p.emulator_pins, vec![2, 3]);
    }

    #[test]
    fn pcpus_outside_the_dedicated_set_are_never_chosen() {
        // Field case 2: vcpu_pin_set = 2-3 on a 4-CPU cell: cpuset is already trimmed.
        let host = HostState {
            name: "dst".into(),
            cells: vec![nosmt(0, &[2, 3], &[], 4096)],
        };
        let p = fits(&host, &req(2, 512, json!({"hw:cpu_policy": "dedicated"})));
        assert_eq!(p.cells[0].vcpu_pins["0"], 2);
        assert_eq!(p.cells[0].vcpu_pins["1"], 3);
    }

    #[test]
    fn no_single_cell_fits() {
        // Field case 3: 4 free pCPUs in total, but 2 + 2 across cells; the guest wants 3 in one.
        let host = HostState {
            name: "dst".into(),
            cells: vec![
                nosmt(0, &[0, 1, 2, 3], &[0, 1], 4096),
                nosmt(1, &[4, 5, 6, 7], &[4, 5], 4096),
            ],
        };
        let r = refused(&host, &req(3, 2048, json!({"hw:cpu_policy": "dedicated"})));
        assert_eq!(r.msg, "No numa available with 3 vcpu and 2048 memory");
        assert_eq!(
            r.reasons,
            vec![
                "cell 0: 2 free pCPUs, needs 3",
                "cell 1: 2 free pCPUs, needs 3"
            ]
        );
    }

    #[test]
    fn best_fit_cell_and_partial_cores_first() {
        let sib: &[&[u32]] = &[&[0, 4], &[1, 5], &[2, 6], &[3, 7]];
        let mut c0 = cell(0, &[0, 1, 2, 3, 4, 5, 6, 7], sib, &[0], 8192);
        c0.memory_usage = 0;
        let c1 = cell(
            1,
            &[8, 9, 10, 11, 12, 13, 14, 15],
            &[&[8, 12], &[9, 13], &[10, 14], &[11, 15]],
            &[],
            8192,
        );
        let host = HostState {
            name: "h".into(),
            cells: vec![c0, c1],
        };
        let p = fits(&host, &req(2, 1024, json!({"hw:cpu_policy": "dedicated"})));
        // cell 0 has fewer free pCPUs; its partly used core (0,4) gives 4 first, then a whole core.
        assert_eq!(p.cells[0].host_cell, 0);
        let pins: Vec<u32> = p.cells[0].vcpu_pins.values().copied().collect();
        assert_eq!(pins, vec![4, 1]);
    }

    #[test]
    fn thread_policies_on_smt_and_non_smt() {
        let sib: &[&[u32]] = &[&[0, 4], &[1, 5], &[2, 6], &[3, 7]];
        let host = HostState {
            name: "h".into(),
            cells: vec![cell(0, &[0, 1, 2, 3, 4, 5, 6, 7], sib, &[0, 1], 8192)],
        };
        // isolate: whole cores 2 and 3 are the only fully free ones
        let p = fits(
            &host,
            &req(
                2,
                512,
                json!({"hw:cpu_policy": "dedicated", "hw:cpu_thread_policy": "isolate"}),
            ),
        );
        let pins: Vec<u32> = p.cells[0].vcpu_pins.values().copied().collect();
        assert_eq!(pins, vec![2, 3]);
        let r = refused(
            &host,
            &req(
                3,
                512,
                json!({"hw:cpu_policy": "dedicated", "hw:cpu_thread_policy": "isolate"}),
            ),
        );
        assert!(
            r.reasons[0].contains("needs 3 fully free cores, 2 free"),
            "{:?}",
            r.reasons
        );
        // require: sibling pairs
        let p = fits(
            &host,
            &req(
                4,
                512,
                json!({"hw:cpu_policy": "dedicated", "hw:cpu_thread_policy": "require"}),
            ),
        );
        let pins: Vec<u32> = p.cells[0].vcpu_pins.values().copied().collect();
        assert_eq!(pins, vec![2, 6, 3, 7]);
        let flat = HostState {
            name: "f".into(),
            cells: vec![nosmt(0, &[0, 1, 2, 3], &[], 4096)],
        };
        let r = refused(
            &flat,
            &req(
                2,
                512,
                json!({"hw:cpu_policy": "dedicated", "hw:cpu_thread_policy": "require"}),
            ),
        );
        assert!(r.reasons[0].contains("needs SMT"));
        // isolate on a non-SMT host: every CPU is a whole core
        fits(
            &flat,
            &req(
                4,
                512,
                json!({"hw:cpu_policy": "dedicated", "hw:cpu_thread_policy": "isolate"}),
            ),
        );
    }

    #[test]
    fn emulator_isolate_takes_one_more() {
        let host = HostState {
            name: "h".into(),
            cells: vec![nosmt(0, &[0, 1, 2], &[], 4096)],
        };
        let p = fits(
            &host,
            &req(
                2,
                512,
                json!({"hw:cpu_policy": "dedicated", "hw:emulator_threads_policy": "isolate"}),
            ),
        );
        assert_eq!(p.cells[0].cpuset_reserved.len(), 1);
        assert_eq!(p.emulator_pins, p.cells[0].cpuset_reserved);
        let r = refused(
            &host,
            &req(
                3,
                512,
                json!({"hw:cpu_policy": "dedicated", "hw:emulator_threads_policy": "isolate"}),
            ),
        );
        assert!(r.reasons[0].contains("needs 4"));
    }

    #[test]
    fn numa_nodes_and_manual_cells() {
        let host = HostState {
            name: "h".into(),
            cells: vec![
                nosmt(0, &[0, 1, 2, 3], &[], 4096),
                nosmt(1, &[4, 5, 6, 7], &[], 4096),
            ],
        };
        let p = fits(
            &host,
            &req(
                4,
                2048,
                json!({"hw:cpu_policy": "dedicated", "hw:numa_nodes": "2"}),
            ),
        );
        assert_eq!(p.cells.len(), 2);
        assert_ne!(p.cells[0].host_cell, p.cells[1].host_cell);
        let r = req(
            3,
            3072,
            json!({"hw:numa_nodes": 2, "hw:numa_cpus.0": "0", "hw:numa_cpus.1": "1-2", "hw:numa_mem.0": "1024", "hw:numa_mem.1": "2048"}),
        );
        let t = constraints(&r).unwrap().unwrap();
        assert!(!t.dedicated);
        assert_eq!(t.cells[1].vcpus, vec![1, 2]);
        assert_eq!(t.cells[1].memory_mb, 2048);
        assert!(constraints(&req(3, 2048, json!({"hw:numa_nodes": "2"})))
            .unwrap_err()
            .starts_with("ImageNUMATopologyAsymmetric"));
        assert!(constraints(&req(2, 2048, json!({"hw:numa_nodes": "0"})))
            .unwrap_err()
            .starts_with("InvalidNUMANodesNumber"));
        assert!(constraints(&req(
            2,
            2048,
            json!({"hw:numa_nodes": "2", "hw:numa_cpus.0": "0"})
        ))
        .unwrap_err()
        .starts_with("ImageNUMATopologyIncomplete"));
    }

    #[test]
    fn page_sizes() {
        let mut c = nosmt(0, &[0, 1], &[], 4096);
        c.mempages.push(MemPages {
            size_kb: 2048,
            total: 512,
            used: 256,
            reserved: 0,
        });
        let host = HostState {
            name: "h".into(),
            cells: vec![c],
        };
        let p = fits(&host, &req(1, 512, json!({"hw:mem_page_size": "large"})));
        assert_eq!(p.cells[0].pagesize_kb, Some(2048));
        assert!(!p.dedicated);
        let r = refused(&host, &req(1, 1024, json!({"hw:mem_page_size": "2MB"})));
        assert!(
            r.reasons[0].contains("256 free 2048 KiB pages"),
            "{:?}",
            r.reasons
        );
        let r = refused(&host, &req(1, 1024, json!({"hw:mem_page_size": "1GB"})));
        assert!(
            r.reasons[0].contains("no 1048576 KiB pages"),
            "{:?}",
            r.reasons
        );
        assert_eq!(
            fits(&host, &req(1, 512, json!({"hw:mem_page_size": "small"}))).cells[0].pagesize_kb,
            Some(4)
        );
        assert!(
            constraints(&req(1, 512, json!({"hw:mem_page_size": "huge"})))
                .unwrap_err()
                .starts_with("MemoryPageSizeInvalid")
        );
        let mut r = req(1, 512, json!({}));
        r.image_properties
            .insert("hw_mem_page_size".into(), json!("large"));
        assert!(constraints(&r)
            .unwrap_err()
            .starts_with("MemoryPageSizeForbidden"));
    }

    #[test]
    fn request_sizes_are_bounded_before_anything_is_allocated() {
        let e =
            constraints(&req(u32::MAX, 512, json!({"hw:cpu_policy": "dedicated"}))).unwrap_err();
        assert!(
            e.starts_with("InvalidRequest: vcpus: 4294967295 vCPUs"),
            "{e}"
        );
        assert!(constraints(&req(4096, 4096, json!({"hw:cpu_policy": "dedicated"}))).is_ok());
        let e = constraints(&req(2, u64::MAX, json!({}))).unwrap_err();
        assert!(e.contains("memory_mb"), "{e}");
        let e = constraints(&req(
            u32::MAX,
            u32::MAX as u64,
            json!({"hw:numa_nodes": "4294967295"}),
        ))
        .unwrap_err();
        assert!(e.contains("vcpus"), "{e}");
        let e = constraints(&req(4, 4096, json!({"hw:numa_nodes": "4294967295"}))).unwrap_err();
        assert!(e.contains("hw:numa_nodes: 4294967295 NUMA nodes"), "{e}");
        let mut r = req(4, 4096, json!({}));
        r.image_properties
            .insert("hw_numa_nodes".into(), json!(i64::MAX));
        assert!(constraints(&r).unwrap_err().contains("hw_numa_nodes"));
        let e = constraints(&req(
            2,
            4096,
            json!({"hw:numa_nodes": "2", "hw:numa_cpus.0": "0", "hw:numa_cpus.1": "1",
                   "hw:numa_mem.0": "4294967296", "hw:numa_mem.1": "0"}),
        ))
        .unwrap_err();
        assert!(e.contains("hw:numa_mem"), "{e}");
    }

    #[test]
    fn hand_built_hosts_with_empty_page_sizes_do_not_divide_by_zero() {
        let mut c = nosmt(0, &[0, 1, 2, 3], &[], 4096);
        c.mempages = vec![MemPages {
            size_kb: 0,
            total: 10,
            used: 0,
            reserved: 0,
        }];
        let host = HostState {
            name: "h".into(),
            cells: vec![c],
        };
        let r = req(2, 512, json!({"hw:cpu_policy": "dedicated"}));
        assert!(matches!(
            fit_request(&host, &r, &FitOptions::default()),
            Ok(Decision::NoFit(_))
        ));
        let r = req(2, 512, json!({"hw:mem_page_size": "any"}));
        assert!(fit_request(&host, &r, &FitOptions::default()).is_ok());
    }

    #[test]
    fn policy_precedence_and_errors() {
        let mut r = req(2, 512, json!({"hw:cpu_policy": "shared"}));
        r.image_properties
            .insert("hw_cpu_policy".into(), json!("dedicated"));
        assert!(constraints(&r)
            .unwrap_err()
            .starts_with("ImageCPUPinningForbidden"));
        let mut r = req(2, 512, json!({}));
        r.image_properties
            .insert("hw_cpu_policy".into(), json!("dedicated"));
        r.image_properties
            .insert("hw_cpu_thread_policy".into(), json!("isolate"));
        let t = constraints(&r).unwrap().unwrap();
        assert!(t.dedicated);
        assert_eq!(t.thread_policy, Some(ThreadPolicy::Isolate));
        let mut r = req(
            2,
            512,
            json!({"hw:cpu_policy": "dedicated", "hw:cpu_thread_policy": "require"}),
        );
        r.image_properties
            .insert("hw_cpu_thread_policy".into(), json!("isolate"));
        assert!(constraints(&r)
            .unwrap_err()
            .starts_with("ImageCPUThreadPolicyForbidden"));
        assert!(
            constraints(&req(2, 512, json!({"hw:cpu_thread_policy": "isolate"})))
                .unwrap_err()
                .starts_with("CPUThreadPolicyConfigurationInvalid")
        );
        assert!(constraints(&req(
            2,
            512,
            json!({"hw:emulator_threads_policy": "isolate"})
        ))
        .unwrap_err()
        .starts_with("BadRequirementEmulatorThreadsPolicy"));
        assert!(
            constraints(&req(2, 512, json!({"hw:cpu_policy": "pinned"})))
                .unwrap_err()
                .starts_with("InvalidCPUAllocationPolicy")
        );
        assert_eq!(constraints(&req(2, 512, json!({}))).unwrap(), None);
    }

    #[test]
    fn memory_is_checked_per_cell() {
        let mut c = nosmt(0, &[0, 1, 2, 3], &[], 4096);
        c.memory_usage = 3584;
        let host = HostState {
            name: "h".into(),
            cells: vec![c],
        };
        let r = refused(&host, &req(1, 1024, json!({"hw:cpu_policy": "dedicated"})));
        assert_eq!(r.reasons, vec!["cell 0: 512 MiB free memory, needs 1024"]);
        fits(&host, &req(1, 512, json!({"hw:cpu_policy": "dedicated"})));
    }
}
