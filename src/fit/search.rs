//! Guest cells onto distinct host cells: the decision (`place`, Nova's
//! `numa_fit_instance_to_host`), the refusal's reasons (`fit_topology`), and a whole request
//! from flavor and image (`fit_request`).

use super::cell::{check_cell, place_cell, Why};
use super::request::{constraints, RequestError};
use super::{
    no_numa_msg, CellPlacement, Decision, FitOptions, GuestTopology, HostCell, HostState,
    Placement, Refusal, Request,
};
use crate::model::cpuset::CpuSet;

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

/// From a request (flavor + image): Nova's constraints, then the fit. `Err` is a bad request.
pub fn fit_request(
    host: &HostState,
    req: &Request,
    opts: &FitOptions,
) -> Result<Decision, RequestError> {
    match constraints(req)? {
        None => Ok(Decision::NotNuma),
        Some(topo) => Ok(match fit_topology(host, &topo, opts) {
            Ok(p) => Decision::Fits(p),
            Err(r) => Decision::NoFit(r),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::testkit::*;
    use crate::fit::*;
    use serde_json::json;

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
            .to_string()
            .starts_with("ImageNUMATopologyAsymmetric"));
        assert!(constraints(&req(2, 2048, json!({"hw:numa_nodes": "0"})))
            .unwrap_err()
            .to_string()
            .starts_with("InvalidNUMANodesNumber"));
        assert!(constraints(&req(
            2,
            2048,
            json!({"hw:numa_nodes": "2", "hw:numa_cpus.0": "0"})
        ))
        .unwrap_err()
        .to_string()
        .starts_with("ImageNUMATopologyIncomplete"));
    }
}
