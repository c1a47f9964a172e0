//! One guest cell on one host cell: Nova 19.3.2's per-cell conditions
//! (`_numa_fit_instance_cell`, `_pack_instance_onto_cores`) as a yes/no with the reason
//! (`check_cell`), then our choice of pCPUs on the chosen cell (`place_cell`).

use super::{
    CellPlacement, FitOptions, GuestCellReq, GuestTopology, HostCell, PageRequest, ThreadPolicy,
};
use crate::model::cpuset::CpuSet;
use std::collections::BTreeMap;

/// Why a guest cell does not fit on a host cell. Kept as data while searching (a decision
/// formats nothing) and put into words only for a refusal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Why {
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
    pub(super) fn describe(&self, h: &HostCell, g: &GuestCellReq) -> String {
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
pub(super) fn check_cell(
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
    check_threads(h, n, reserved, free, topo.thread_policy)?;
    Ok(pagesize)
}

/// The pinned-guest conditions on the cell's cores (`_pack_instance_onto_cores`): enough free
/// threads on sibling groups for the thread policy, plus `reserved` for the emulator.
fn check_threads(
    h: &HostCell,
    n: usize,
    reserved: usize,
    free: usize,
    thread_policy: Option<ThreadPolicy>,
) -> Result<(), Why> {
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
    match thread_policy {
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
    Ok(())
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

/// The vCPUs' pCPUs and the emulator's (`reserved` of them) on a cell `check_cell` accepted.
fn pick_pcpus(
    h: &HostCell,
    n: usize,
    reserved: usize,
    thread_policy: Option<ThreadPolicy>,
) -> (Vec<u32>, Vec<u32>) {
    let cores = free_cores(h);
    let tpc = if h.siblings.is_empty() {
        1
    } else {
        h.threads_per_core()
    };
    match thread_policy {
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
            (pins, take_reserved(&cores, &used, true, reserved))
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
            (pins, take_reserved(&cores, &used, false, reserved))
        }
        None | Some(ThreadPolicy::Prefer) => {
            let pins: Vec<u32> = cores.iter().flatten().copied().take(n).collect();
            let used: CpuSet = pins.iter().copied().collect();
            (pins, take_reserved(&cores, &used, false, reserved))
        }
    }
}

/// The emulator's pCPUs: partly used cores first (`cores` is in that order); with isolate
/// (`skip_cores`) never on a core the vCPUs use.
fn take_reserved(cores: &[Vec<u32>], used: &CpuSet, skip_cores: bool, reserved: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for c in cores {
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
}

/// Pick the pCPUs of a cell `check_cell` accepted: our packing policy (module docs).
pub(super) fn place_cell(
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
    let (pins, res) = pick_pcpus(h, g.vcpus.len(), reserved, topo.thread_policy);
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

#[cfg(test)]
mod tests {
    use crate::fit::testkit::*;
    use crate::fit::*;
    use serde_json::json;

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
                .to_string()
                .starts_with("MemoryPageSizeInvalid")
        );
        let mut r = req(1, 512, json!({}));
        r.image_properties
            .insert("hw_mem_page_size".into(), json!("large"));
        assert!(constraints(&r)
            .unwrap_err()
            .to_string()
            .starts_with("MemoryPageSizeForbidden"));
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
