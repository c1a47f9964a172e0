use crate::facts::NumaFacts;
use crate::fit::{self, CellPlacement, GuestTopology, Placement, ThreadPolicy};
use crate::model::domain::Guest;
use anyhow::Result;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The placement a guest's current definition expresses (to validate it where it is).
pub fn placement_of(g: &Guest, topo: &GuestTopology) -> Placement {
    let reserved = g.reserved_cpus().map(|r| r.to_vec()).unwrap_or_default();
    let cells = topo
        .cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let host_cell = g
                .numa_cells
                .iter()
                .find(|n| n.id == c.id)
                .and_then(|n| n.host_nodes.first().copied())
                .or_else(|| g.memory_nodes.first().copied())
                .unwrap_or(0);
            let vcpu_pins = if topo.dedicated {
                c.vcpus
                    .iter()
                    .filter_map(|v| {
                        g.vcpu_pins
                            .get(&v.to_string())
                            .and_then(|p| p.first())
                            .map(|p| (v.to_string(), *p))
                    })
                    .collect()
            } else {
                BTreeMap::new()
            };
            CellPlacement {
                guest_cell: c.id,
                host_cell,
                vcpus: c.vcpus.clone(),
                vcpu_pins,
                memory_mb: c.memory_mb,
                pagesize_kb: g.hugepage_kb,
                cpuset_reserved: if i == 0 { reserved.clone() } else { vec![] },
                thread_policy: topo.thread_policy,
            }
        })
        .collect();
    Placement {
        cells,
        emulator_pins: g.emulator_pins.clone(),
        dedicated: topo.dedicated,
    }
}

pub(super) fn old_pins(g: &Guest) -> Value {
    json!({"vcpu_pins": g.vcpu_pins, "emulator_pins": g.emulator_pins, "memory_nodes": g.numa_cells.iter().map(|c| (c.id.to_string(), c.host_nodes.clone())).collect::<BTreeMap<_,_>>()})
}

/// Validate a guest's current placement on a host (for idempotency and post checks).
pub(super) fn current_valid(
    facts: &NumaFacts,
    g: &Guest,
    tp: Option<ThreadPolicy>,
) -> (GuestTopology, Placement, Result<(), String>) {
    let topo = GuestTopology::from_guest(g, tp);
    let p = placement_of(g, &topo);
    let state = facts.host_state(Some(&g.uuid));
    let mut r = fit::validate(&state, &topo, &p);
    if r.is_ok() {
        if let Some(o) = facts.overlaps.iter().find(|o| o.guests.contains(&g.name)) {
            r = Err(format!(
                "pCPU {} is pinned by {}",
                o.cpu,
                o.guests.join(" and ")
            ));
        }
    }
    (topo, p, r)
}
