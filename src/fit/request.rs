//! The request: a flavor's extra specs and an image's properties read the way Nova 19.3.2's
//! `numa_get_constraints` reads them (same keys, same precedence, same exception names).

use super::{GuestCellReq, GuestTopology, PageRequest, Request, ThreadPolicy};
use crate::limits;
use crate::model::units;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// An extra spec or image property as the string Nova sees (borrowed: decisions are hot).
fn spec_str(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "True" } else { "False" })),
        _ => None,
    }
}

/// A request Nova would refuse: Nova's exception name (so operators can search for it) and
/// its message, printed as `<Exception>: <message>`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{exception}: {msg}")]
pub struct RequestError {
    pub exception: &'static str,
    pub msg: String,
}

fn req_err(exception: &'static str, msg: impl std::fmt::Display) -> RequestError {
    RequestError {
        exception,
        msg: msg.to_string(),
    }
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

/// `hw:mem_page_size` as Nova reads it (`check_and_return_pages_size`).
fn parse_pagesize(v: &str) -> Result<PageRequest, RequestError> {
    let kb: f64 = match v {
        "small" => return Ok(PageRequest::Small),
        "large" => return Ok(PageRequest::Large),
        "any" => return Ok(PageRequest::Any),
        _ => match py_int(v) {
            Some(n) => n as f64,
            None => units::string_to_bytes(v).map(|b| b / 1024.0).unwrap_or(0.0),
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
#[derive(Default)]
struct ImageProps {
    numa_nodes: Option<i64>,
    cpu_policy: Option<String>,
    cpu_thread_policy: Option<String>,
    mem_page_size: Option<String>,
    numa_cpus: Option<Vec<Vec<u32>>>,
    numa_mem: Option<Vec<u64>>,
    realtime_mask: Option<String>,
}

/// An image property, `null` counting as absent.
fn prop<'a>(props: &'a BTreeMap<String, Value>, k: &str) -> Option<&'a Value> {
    props.get(k).filter(|v| !v.is_null())
}

/// The `ValueError` of a field `from_dict` cannot coerce.
fn value_error(v: &Value) -> RequestError {
    req_err(
        "ValueError",
        format!(
            "Field value {} is invalid",
            spec_str(v)
                .map(Cow::into_owned)
                .unwrap_or_else(|| v.to_string())
        ),
    )
}

/// An enum-typed image property: one of `allowed`, else `ValueError`.
fn image_enum(
    props: &BTreeMap<String, Value>,
    k: &str,
    allowed: &[&str],
) -> Result<Option<String>, RequestError> {
    match prop(props, k) {
        None => Ok(None),
        Some(v) => match spec_str(v) {
            Some(s) if allowed.contains(&s.as_ref()) => Ok(Some(s.into_owned())),
            _ => Err(value_error(v)),
        },
    }
}

/// `hw_numa_nodes` as an integer field.
fn image_numa_nodes(v: Option<&Value>) -> Result<Option<i64>, RequestError> {
    Ok(match v {
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
    })
}

/// `hw_numa_cpus.N`, consecutive from 0 (the plain list form is ignored by from_dict).
fn image_numa_cpus(props: &BTreeMap<String, Value>) -> Result<Option<Vec<Vec<u32>>>, RequestError> {
    let mut cpus = Vec::new();
    while let Some(v) = prop(props, &format!("hw_numa_cpus.{}", cpus.len())) {
        let s = spec_str(v).unwrap_or_default();
        cpus.push(
            crate::model::cpuset::parse_spec(&s)
                .map_err(|e| req_err("Invalid", e))?
                .to_vec(),
        );
    }
    Ok((!cpus.is_empty()).then_some(cpus))
}

/// `hw_numa_mem.N`, consecutive from 0 (the plain list form is ignored by from_dict).
fn image_numa_mem(props: &BTreeMap<String, Value>) -> Result<Option<Vec<u64>>, RequestError> {
    let mut mems = Vec::new();
    while let Some(v) = prop(props, &format!("hw_numa_mem.{}", mems.len())) {
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
    Ok((!mems.is_empty()).then_some(mems))
}

/// `ImageMetaProps.from_dict` for the fields the fit reads, in its order of coercion.
fn image_props(props: &BTreeMap<String, Value>) -> Result<ImageProps, RequestError> {
    if props.is_empty() {
        return Ok(ImageProps::default());
    }
    let numa_nodes = image_numa_nodes(prop(props, "hw_numa_nodes"))?;
    let numa_cpus = image_numa_cpus(props)?;
    let numa_mem = image_numa_mem(props)?;
    Ok(ImageProps {
        numa_nodes,
        cpu_policy: image_enum(props, "hw_cpu_policy", &["dedicated", "shared"])?,
        cpu_thread_policy: image_enum(
            props,
            "hw_cpu_thread_policy",
            &["prefer", "isolate", "require"],
        )?,
        mem_page_size: prop(props, "hw_mem_page_size")
            .and_then(spec_str)
            .map(Cow::into_owned),
        numa_cpus,
        numa_mem,
        realtime_mask: prop(props, "hw_cpu_realtime_mask")
            .and_then(spec_str)
            .filter(|s| !s.is_empty())
            .map(Cow::into_owned),
    })
}

/// A NUMA node count from the flavor or image, at most [`limits::MAX_NUMA_NODES`].
fn numa_nodes(field: &str, n: i64) -> Result<u32, RequestError> {
    limits::at_most(
        field,
        n.max(0) as u64,
        limits::MAX_NUMA_NODES as u64,
        "NUMA nodes",
    )
    .map(|n| n as u32)
    .map_err(|e| req_err("InvalidRequest", e))
}

/// Nova's `_get_flavor_image_meta`: the flavor's extra specs and the image's (typed)
/// properties, read side by side.
struct FlavorImage<'a> {
    specs: &'a BTreeMap<String, Value>,
    image: ImageProps,
}

impl<'a> FlavorImage<'a> {
    /// A present flavor key, empty values included (Nova tests presence for the .N maps and
    /// truthiness elsewhere).
    fn raw(&self, k: &str) -> Option<Cow<'a, str>> {
        self.specs.get(k).map(|v| spec_str(v).unwrap_or_default())
    }
    /// A flavor key with a non-empty value.
    fn flavor(&self, k: &str) -> Option<Cow<'a, str>> {
        self.raw(k).filter(|s| !s.is_empty())
    }
    /// A flavor's `key.0`, `key.1`, ... while present, each parsed.
    fn flavor_map<T>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, RequestError>,
    ) -> Result<Option<Vec<T>>, RequestError> {
        let mut out = Vec::new();
        while let Some(v) = self.raw(&format!("{key}.{}", out.len())) {
            out.push(parse(&v)?);
        }
        Ok((!out.is_empty()).then_some(out))
    }
}

/// Nova's `_get_numa_node_prop` (`hw:numa_nodes` / `hw_numa_nodes`).
fn numa_node_prop(fi: &FlavorImage) -> Result<Option<u32>, RequestError> {
    let fnodes = fi.flavor("hw:numa_nodes");
    if fnodes.is_some() && fi.image.numa_nodes.is_some_and(|n| n != 0) {
        return Err(req_err("ImageNUMATopologyForbidden", "Image property 'hw_numa_nodes' is not permitted to override NUMA configuration set against the flavor"));
    }
    Ok(match (&fnodes, fi.image.numa_nodes) {
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
    })
}

/// Nova's `_get_numa_pagesize_constraint` (`hw:mem_page_size`): the image may only choose
/// when the flavor says large or any.
fn numa_pagesize_constraint(fi: &FlavorImage) -> Result<Option<PageRequest>, RequestError> {
    Ok(
        match (
            fi.flavor("hw:mem_page_size"),
            fi.image.mem_page_size.clone().filter(|s| !s.is_empty()),
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
        },
    )
}

/// Nova's `_get_numa_cpu_constraint` (`hw:numa_cpus.N` / `hw_numa_cpus.N`).
fn numa_cpu_constraint(fi: &FlavorImage) -> Result<Option<Vec<Vec<u32>>>, RequestError> {
    let fcpus = fi.flavor_map("hw:numa_cpus", |v| {
        crate::model::cpuset::parse_spec(v)
            .map(|s| s.to_vec())
            .map_err(|e| req_err("Invalid", e))
    })?;
    match (fcpus, &fi.image.numa_cpus) {
        (None, img) => Ok(img.clone()),
        (Some(_), Some(_)) => Err(req_err("ImageNUMATopologyForbidden", "Image property 'hw_numa_cpus' is not permitted to override NUMA configuration set against the flavor")),
        (Some(f), None) => Ok(Some(f)),
    }
}

/// Nova's `_get_numa_mem_constraint` (`hw:numa_mem.N` / `hw_numa_mem.N`).
fn numa_mem_constraint(fi: &FlavorImage) -> Result<Option<Vec<u64>>, RequestError> {
    let fmem = fi.flavor_map("hw:numa_mem", |v| match py_int(v) {
        // Bounded first: the value is carried as u32 MiB (64 TiB fits).
        Some(m) => Ok(limits::memory_mib("hw:numa_mem", m.max(0) as u64)
            .map_err(|e| req_err("InvalidRequest", e))? as u32),
        None => Err(req_err(
            "ValueError",
            format!("invalid literal for int() with base 10: '{v}'"),
        )),
    })?;
    match (fmem, &fi.image.numa_mem) {
        (None, img) => Ok(img.clone()),
        (Some(_), Some(_)) => Err(req_err("ImageNUMATopologyForbidden", "Image property 'hw_numa_mem' is not permitted to override NUMA configuration set against the flavor")),
        (Some(f), None) => Ok(Some(f.into_iter().map(u64::from).collect())),
    }
}

/// The guest cells of a request that asks for NUMA placement: Nova's block under
/// `if nodes or pagesize`, manual when CPUs and memory are given per node, else automatic.
fn numa_cells(
    req: &Request,
    fi: &FlavorImage,
    nodes: u32,
    pagesize: Option<PageRequest>,
) -> Result<Vec<GuestCellReq>, RequestError> {
    let cpu_list = numa_cpu_constraint(fi)?;
    let mem_list = numa_mem_constraint(fi)?;
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
    match (cpu_list, mem_list) {
        (Some(cpus), Some(mems)) => numa_topology_manual(req, nodes, &cpus, &mems, pagesize),
        _ => numa_topology_auto(req, nodes, pagesize),
    }
}

/// Nova's `_get_numa_topology_manual`: each node's CPUs and memory as given, every vCPU on
/// exactly one node, the memory adding up to the flavor's.
fn numa_topology_manual(
    req: &Request,
    nodes: u32,
    cpus: &[Vec<u32>],
    mems: &[u64],
    pagesize: Option<PageRequest>,
) -> Result<Vec<GuestCellReq>, RequestError> {
    let mut out = Vec::new();
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
    Ok(out)
}

/// Nova's `_get_numa_topology_auto`: vCPUs and memory split evenly over the nodes.
fn numa_topology_auto(
    req: &Request,
    nodes: u32,
    pagesize: Option<PageRequest>,
) -> Result<Vec<GuestCellReq>, RequestError> {
    if !req.vcpus.is_multiple_of(nodes) || !req.memory_mb.is_multiple_of(nodes as u64) {
        return Err(req_err("ImageNUMATopologyAsymmetric", "Asymmetric NUMA topologies require explicit assignment of CPUs and memory to nodes in image or flavor"));
    }
    let (ncpus, mem) = (req.vcpus / nodes, req.memory_mb / nodes as u64);
    Ok((0..nodes)
        .map(|n| GuestCellReq {
            id: n,
            vcpus: (n * ncpus..(n + 1) * ncpus).collect(),
            memory_mb: mem,
            pagesize,
        })
        .collect())
}

/// Nova's `_get_cpu_policy_constraint` (`hw:cpu_policy` / `hw_cpu_policy`): dedicated or not.
fn cpu_policy_constraint(fi: &FlavorImage) -> Result<bool, RequestError> {
    let fpol = fi.flavor("hw:cpu_policy");
    if let Some(p) = &fpol {
        if p != "dedicated" && p != "shared" {
            return Err(req_err("InvalidCPUAllocationPolicy", format!("CPU policy '{p}' from flavor extra specs is invalid, must be one of ['dedicated', 'shared']")));
        }
    }
    match (fpol.as_deref(), fi.image.cpu_policy.as_deref()) {
        (Some("dedicated"), _) => Ok(true),
        (Some("shared"), Some("dedicated")) => Err(req_err("ImageCPUPinningForbidden", "Image property 'hw_cpu_policy' is not permitted to override CPU pinning policy set against the flavor")),
        (Some("shared"), _) => Ok(false),
        (None, Some("dedicated")) => Ok(true),
        _ => Ok(false),
    }
}

/// Nova's `_get_cpu_thread_policy_constraint` (`hw:cpu_thread_policy` /
/// `hw_cpu_thread_policy`): a present-but-empty flavor value is neither None nor prefer in Nova.
fn cpu_thread_policy_constraint(fi: &FlavorImage) -> Result<Option<String>, RequestError> {
    let ftp_raw = fi.raw("hw:cpu_thread_policy");
    if let Some(p) = ftp_raw.as_deref().filter(|p| !p.is_empty()) {
        if !["prefer", "isolate", "require"].contains(&p) {
            return Err(req_err("InvalidCPUThreadAllocationPolicy", format!("CPU thread policy '{p}' from flavor extra specs is invalid, must be one of ['prefer', 'isolate', 'require']")));
        }
    }
    let itp = fi.image.cpu_thread_policy.as_deref();
    match ftp_raw.as_deref() {
        None | Some("prefer") => Ok(ftp_raw.as_deref().or(itp).map(str::to_string)),
        Some(f) => {
            if itp.is_some_and(|i| i != f) {
                return Err(req_err("ImageCPUThreadPolicyForbidden", "Image property 'hw_cpu_thread_policy' is not permitted to override CPU thread pinning policy set against the flavor"));
            }
            Ok(Some(f.to_string()))
        }
    }
}

/// Nova's `get_emulator_thread_policy_constraint` (flavor only in Stein): isolate or not.
fn emulator_threads_policy_constraint(fi: &FlavorImage) -> Result<bool, RequestError> {
    let emu = fi.flavor("hw:emulator_threads_policy");
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
    Ok(emu.as_deref() == Some("isolate"))
}

/// Nova's `is_realtime_enabled` (`hw:cpu_realtime`, oslo's `bool_from_string`).
fn is_realtime_enabled(fi: &FlavorImage) -> bool {
    fi.flavor("hw:cpu_realtime").is_some_and(|v| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "1" | "t" | "true" | "on" | "y" | "yes"
        )
    })
}

/// Nova's `_get_realtime_mask`: the image's mask first, then the flavor's.
fn realtime_mask(fi: &FlavorImage) -> Option<String> {
    fi.image
        .realtime_mask
        .clone()
        .or_else(|| fi.flavor("hw:cpu_realtime_mask").map(Cow::into_owned))
}

/// The requests a shared (unpinned) guest may not make, in Nova's order.
fn check_shared(
    thread_policy: Option<&str>,
    emulator_isolate: bool,
    realtime: bool,
) -> Result<(), RequestError> {
    if thread_policy.is_some_and(|t| !t.is_empty()) {
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
    Ok(())
}

fn thread_policy_of(p: &str) -> ThreadPolicy {
    match p {
        "isolate" => ThreadPolicy::Isolate,
        "require" => ThreadPolicy::Require,
        _ => ThreadPolicy::Prefer,
    }
}

/// The CPU policies a flavor and an image ask for, as `numa_get_constraints` decides them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPolicies {
    /// `hw:cpu_policy` / `hw_cpu_policy` dedicated.
    pub dedicated: bool,
    /// Only for a dedicated guest; `None` is Nova's default (prefer).
    pub thread_policy: Option<ThreadPolicy>,
    /// `hw:emulator_threads_policy=isolate` (flavor only, as in Stein).
    pub emulator_isolate: bool,
}

/// The CPU policies of a flavor's extra specs and an image's properties, with Nova's precedence
/// and conflict rules (`_get_cpu_policy_constraint`, `_get_cpu_thread_policy_constraint`,
/// `get_emulator_thread_policy_constraint`) and its errors, sizes aside: what an existing
/// guest's stored flavor and image asked for.
pub fn cpu_policies(
    extra_specs: &BTreeMap<String, Value>,
    image_properties: &BTreeMap<String, Value>,
) -> Result<CpuPolicies, RequestError> {
    let fi = FlavorImage {
        specs: extra_specs,
        image: image_props(image_properties)?,
    };
    let dedicated = cpu_policy_constraint(&fi)?;
    let thread_policy = cpu_thread_policy_constraint(&fi)?;
    let emulator_isolate = emulator_threads_policy_constraint(&fi)?;
    if !dedicated {
        check_shared(
            thread_policy.as_deref(),
            emulator_isolate,
            is_realtime_enabled(&fi),
        )?;
        return Ok(CpuPolicies {
            dedicated,
            thread_policy: None,
            emulator_isolate,
        });
    }
    if thread_policy.as_deref() == Some("") {
        return Err(req_err("ValueError", "Field value  is invalid"));
    }
    Ok(CpuPolicies {
        dedicated,
        thread_policy: thread_policy.as_deref().map(thread_policy_of),
        emulator_isolate,
    })
}

/// Nova's `numa_get_constraints` (19.3.2): the guest topology a request asks for, `None` when
/// it asks for no NUMA placement at all (no pinning, no NUMA nodes, no page size), or Nova's
/// error. Checks run in Nova's order so the same request fails with the same exception; the
/// helpers above carry the names of Nova's, to be read side by side.
pub fn constraints(req: &Request) -> Result<Option<GuestTopology>, RequestError> {
    if req.vcpus == 0 {
        return Err(req_err("InvalidRequest", "vcpus must be at least 1"));
    }
    // Bounds before anything is sized from the request (the vCPU list, the cells).
    let bound = |r: Result<u64, limits::Error>| r.map_err(|e| req_err("InvalidRequest", e));
    bound(limits::vcpus("vcpus", req.vcpus).map(u64::from))?;
    bound(limits::memory_mib("memory_mb", req.memory_mb))?;
    let fi = FlavorImage {
        specs: &req.extra_specs,
        image: image_props(&req.image_properties)?,
    };
    let nodes = numa_node_prop(&fi)?;
    let pagesize = numa_pagesize_constraint(&fi)?;
    let cells = if nodes.is_some() || pagesize.is_some() {
        Some(numa_cells(req, &fi, nodes.unwrap_or(1), pagesize)?)
    } else {
        None
    };
    let dedicated = cpu_policy_constraint(&fi)?;
    let thread_policy = cpu_thread_policy_constraint(&fi)?;
    let emulator_isolate = emulator_threads_policy_constraint(&fi)?;
    let realtime = is_realtime_enabled(&fi);
    let rt_mask = realtime_mask(&fi);

    if !dedicated {
        check_shared(thread_policy.as_deref(), emulator_isolate, realtime)?;
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
    let thread_policy = thread_policy.as_deref().map(thread_policy_of);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::testkit::req;
    use serde_json::json;

    #[test]
    fn request_sizes_are_bounded_before_anything_is_allocated() {
        let e = constraints(&req(u32::MAX, 512, json!({"hw:cpu_policy": "dedicated"})))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("InvalidRequest: vcpus: 4294967295 vCPUs"),
            "{e}"
        );
        assert!(constraints(&req(4096, 4096, json!({"hw:cpu_policy": "dedicated"}))).is_ok());
        let e = constraints(&req(2, u64::MAX, json!({})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory_mb"), "{e}");
        let e = constraints(&req(
            u32::MAX,
            u32::MAX as u64,
            json!({"hw:numa_nodes": "4294967295"}),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("vcpus"), "{e}");
        let e = constraints(&req(4, 4096, json!({"hw:numa_nodes": "4294967295"})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hw:numa_nodes: 4294967295 NUMA nodes"), "{e}");
        let mut r = req(4, 4096, json!({}));
        r.image_properties
            .insert("hw_numa_nodes".into(), json!(i64::MAX));
        assert!(constraints(&r)
            .unwrap_err()
            .to_string()
            .contains("hw_numa_nodes"));
        let e = constraints(&req(
            2,
            4096,
            json!({"hw:numa_nodes": "2", "hw:numa_cpus.0": "0", "hw:numa_cpus.1": "1",
                   "hw:numa_mem.0": "4294967296", "hw:numa_mem.1": "0"}),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("hw:numa_mem"), "{e}");
    }

    #[test]
    fn page_size_units_are_read_as_oslo_reads_them() {
        let size = |v: &str| match constraints(&req(1, 512, json!({"hw:mem_page_size": v}))) {
            Ok(Some(t)) => Ok(t.cells[0].pagesize),
            Ok(None) => panic!("{v}: no NUMA topology"),
            Err(e) => Err(e),
        };
        assert_eq!(size("2MB"), Ok(Some(PageRequest::Kb(2048))));
        assert_eq!(size("1GiB"), Ok(Some(PageRequest::Kb(1048576))));
        assert_eq!(size("16Mbit"), Ok(Some(PageRequest::Kb(2048))));
        assert_eq!(size("2048"), Ok(Some(PageRequest::Kb(2048))));
        assert_eq!(size("1.5MB"), Ok(Some(PageRequest::Kb(1536))));
        assert_eq!(size("1.5KB"), Ok(Some(PageRequest::Kb(0))));
        // Case matters to oslo; a multi-byte letter before "iB" once panicked here.
        for bad in ["2mb", "2 MB", "2€iB"] {
            assert!(
                size(bad)
                    .unwrap_err()
                    .to_string()
                    .starts_with("MemoryPageSizeInvalid"),
                "{bad}"
            );
        }
    }

    #[test]
    fn policy_precedence_and_errors() {
        let mut r = req(2, 512, json!({"hw:cpu_policy": "shared"}));
        r.image_properties
            .insert("hw_cpu_policy".into(), json!("dedicated"));
        assert!(constraints(&r)
            .unwrap_err()
            .to_string()
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
            .to_string()
            .starts_with("ImageCPUThreadPolicyForbidden"));
        assert!(
            constraints(&req(2, 512, json!({"hw:cpu_thread_policy": "isolate"})))
                .unwrap_err()
                .to_string()
                .starts_with("CPUThreadPolicyConfigurationInvalid")
        );
        assert!(constraints(&req(
            2,
            512,
            json!({"hw:emulator_threads_policy": "isolate"})
        ))
        .unwrap_err()
        .to_string()
        .starts_with("BadRequirementEmulatorThreadsPolicy"));
        assert!(
            constraints(&req(2, 512, json!({"hw:cpu_policy": "pinned"})))
                .unwrap_err()
                .to_string()
                .starts_with("InvalidCPUAllocationPolicy")
        );
        assert_eq!(constraints(&req(2, 512, json!({}))).unwrap(), None);
    }

    #[test]
    fn cpu_policies_follow_novas_precedence() {
        let m = |v: Value| -> BTreeMap<String, Value> { serde_json::from_value(v).unwrap() };
        let ded = json!({"hw:cpu_policy": "dedicated"});
        let p = cpu_policies(
            &m(ded.clone()),
            &m(json!({"hw_cpu_thread_policy": "isolate"})),
        )
        .unwrap();
        assert_eq!(
            (p.dedicated, p.thread_policy),
            (true, Some(ThreadPolicy::Isolate))
        );
        // A flavor's prefer leaves the choice to the image, another value wins over it.
        let p = cpu_policies(
            &m(json!({"hw:cpu_policy": "dedicated", "hw:cpu_thread_policy": "prefer"})),
            &m(json!({"hw_cpu_thread_policy": "require"})),
        )
        .unwrap();
        assert_eq!(p.thread_policy, Some(ThreadPolicy::Prefer));
        let e = cpu_policies(
            &m(json!({"hw:cpu_policy": "dedicated", "hw:cpu_thread_policy": "isolate"})),
            &m(json!({"hw_cpu_thread_policy": "require"})),
        )
        .unwrap_err();
        assert_eq!(e.exception, "ImageCPUThreadPolicyForbidden");
        let p = cpu_policies(
            &m(json!({"hw:cpu_policy": "dedicated", "hw:emulator_threads_policy": "isolate"})),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!((p.thread_policy, p.emulator_isolate), (None, true));
        let p = cpu_policies(&BTreeMap::new(), &m(json!({"hw_cpu_policy": "dedicated"}))).unwrap();
        assert!(p.dedicated);
        let e = cpu_policies(
            &m(json!({"hw:cpu_thread_policy": "isolate"})),
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(e.exception, "CPUThreadPolicyConfigurationInvalid");
    }
}
