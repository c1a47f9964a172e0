//! The plan of a move: the guest's topology fitted on the destination's live state (read under
//! the claim), the rewritten XML, the diff, the disks; and the placement a guest has now.

use super::args::{Args, Storage};
use super::prepare::{local_disks, Disk};
use super::report::diff_value;
use super::source::{Hosts, SourceGuest};
use crate::ansible::Failure;
use crate::facts::{self, NumaFacts};
use crate::fit::FitOptions;
use crate::fit::{self, CellPlacement, GuestTopology, Placement, ThreadPolicy};
use crate::model::domain::Guest;
use crate::model::rewrite;
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
            // The cell's pins are not consulted: this is the placement the definition states,
            // which validation then compares with those pins.
            let host_cell = g.memory_cell(c.id, None).unwrap_or(0);
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

/// Everything decided before anything moves.
pub(super) struct MovePlan {
    pub placement: Placement,
    /// The rewritten live XML (DEST_XML) and persistent XML (PERSIST_XML).
    pub dest_xml: String,
    pub persist_xml: String,
    pub diff: Value,
    /// Local disks to copy (block migration), prepared on the destination later.
    pub disks: Vec<Disk>,
    /// Memory plus disks in GiB: Nova scales its downtime steps and timeouts by it.
    pub data_gib: f64,
}

/// Fit the guest on the destination as it is now, or refuse before anything moves
/// (`No numa available ...`, with the reasons).
pub(super) fn plan_move(
    a: &Args,
    h: &Hosts,
    sg: &SourceGuest,
    topo: &GuestTopology,
    claim_rep: &Option<Value>,
) -> Result<MovePlan> {
    let g = &sg.guest;
    let dfacts = facts::gather_live(&h.dest_uri, a.dest_nova_conf.as_deref(), Some(&h.dest_host))?;
    let state = dfacts.host_state(Some(&g.uuid));
    let placement = fit::fit_topology(&state, topo, &FitOptions::default()).map_err(|r| {
        Failure::exact(r.msg.clone())
            .with("reasons", &r.reasons)
            .with("instance_uuid", &g.uuid)
            .with("guest", &g.name)
            .with("dest_host", &h.dest_host)
            .with("guest_on_source", true)
            .with("claim", claim_rep)
            .with("hint", format!("nothing was changed: {} keeps running on {} with its pins; choose another destination or free pCPUs/memory on {}", g.name, h.source_host, h.dest_host))
    })?;
    let dest_xml = rewrite::rewrite(&sg.live_xml, &placement).map_err(|e| {
        Failure::new(format!(
            "cannot rewrite the guest XML: {e}; nothing was changed"
        ))
    })?;
    let persist_xml = rewrite::rewrite(&sg.inactive_xml, &placement).map_err(|e| {
        Failure::new(format!(
            "cannot rewrite the persistent XML: {e}; nothing was changed"
        ))
    })?;
    let diff = diff_value(
        &sg.live_xml,
        &dest_xml,
        &format!("{} on {} -> {}", g.name, h.source_host, h.dest_host),
    );
    let disks = match a.storage {
        Storage::Block => local_disks(&sg.dom, &sg.live_xml)?,
        Storage::Shared => Vec::new(),
    };
    let disk_gib: f64 = disks
        .iter()
        .map(|d| d.capacity_bytes as f64 / (1u64 << 30) as f64)
        .sum();
    let data_gib = (g.memory_mb as f64 / 1024.0).max(2.0) + disk_gib;
    Ok(MovePlan {
        placement,
        dest_xml,
        persist_xml,
        diff,
        disks,
        data_gib,
    })
}
