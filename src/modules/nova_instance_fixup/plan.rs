//! The fixup of one instance, planned from reads alone: where it should be ([`Target`]), its
//! row, its nodes' usage, Placement's allocations, Neutron's bindings ([`Plan`]); the result.

use super::tx::sql_err;
use crate::ansible::{Context, Failure, Outcome};
use crate::facts::NumaFacts;
use crate::fit::{CellPlacement, Placement};
use crate::nova::db::DbCreds;
use crate::nova::numa_json::{self, CellPins};
use anyhow::Result;
use mysql::prelude::Queryable;
use serde_json::{json, Value};

/// Where the instance should be, as the DB should record it.
#[derive(Debug, Clone)]
pub struct Target {
    pub uuid: String,
    pub host: String,
    pub node: String,
    pub cells: Vec<CellPlacement>,
}

#[derive(Debug, Clone)]
pub struct Dbs {
    pub placement: Option<String>,
    pub neutron: Option<String>,
}

/// The placement the guest's live pins describe (`from_libvirt`, audit): one cell per guest NUMA
/// cell, on the host cell its pCPUs belong to.
pub fn placement_of_guest(
    f: &NumaFacts,
    name_or_uuid: &str,
) -> Result<(Placement, String), Failure> {
    let g = f
        .guests
        .iter()
        .find(|g| g.name == name_or_uuid || g.uuid == name_or_uuid)
        .ok_or_else(|| Failure::new(format!("no guest '{name_or_uuid}' on {}", f.host)))?;
    if !g.is_dedicated() {
        return Err(Failure::new(format!(
            "guest {} is not pinned (every vCPU to one pCPU); nothing to record",
            g.name
        )));
    }
    let cell_of = |cpu: u32| {
        f.cells
            .iter()
            .find(|c| c.cpus.iter().any(|p| p.id == cpu))
            .map(|c| c.id)
    };
    let only = (f.cells.len() == 1).then(|| f.cells[0].id);
    let reserved: Vec<u32> = g.reserved_cpus().map(|r| r.to_vec()).unwrap_or_default();
    let guest_cells: Vec<(u32, Vec<u32>, u64)> = if g.numa_cells.is_empty() {
        vec![(0, (0..g.vcpus).collect(), g.memory_mb)]
    } else {
        g.numa_cells
            .iter()
            .map(|c| (c.id, c.vcpus.clone(), c.memory_mb))
            .collect()
    };
    let mut cells = Vec::new();
    for (i, (gid, vcpus, mem)) in guest_cells.into_iter().enumerate() {
        let pins: std::collections::BTreeMap<String, u32> = vcpus
            .iter()
            .filter_map(|v| {
                g.vcpu_pins
                    .get(&v.to_string())
                    .map(|p| (v.to_string(), p[0]))
            })
            .collect();
        let host_cell = g.host_cell(gid, only, cell_of).ok_or_else(|| {
            Failure::new(format!(
                "guest {} cell {gid} is bound to no host cell of {}: its memory has no binding and its pCPUs are not all in one host cell",
                g.name, f.host
            ))
        })?;
        if let Some(cpu) = pins.values().find(|p| cell_of(**p).is_none()) {
            return Err(Failure::new(format!(
                "guest {} is pinned to pCPU {cpu}, which {} does not have",
                g.name, f.host
            )));
        }
        cells.push(CellPlacement {
            guest_cell: gid,
            host_cell,
            vcpus,
            vcpu_pins: pins,
            memory_mb: mem,
            pagesize_kb: g.hugepage_kb,
            cpuset_reserved: if i == 0 { reserved.clone() } else { vec![] },
            thread_policy: None,
        });
    }
    let emulator_pins = g.emulator_pins.clone();
    Ok((
        Placement {
            cells,
            emulator_pins,
            dedicated: true,
        },
        g.uuid.clone(),
    ))
}

pub(super) fn same_pins(a: &[CellPins], b: &[CellPins]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.host_cell == y.host_cell && x.pins == y.pins && x.reserved == y.reserved
        })
}

/// What a fixup writes, computed from reads alone (check mode stops here, so it writes
/// nothing, not even an AUTO_INCREMENT step of a rolled-back INSERT).
#[derive(Debug, Default)]
pub struct Plan {
    pub changed: bool,
    pub before: Value,
    pub after: Value,
    pub steps: Vec<String>,
    /// What Nova's accounting would refuse on a node, that this fixup did not cause.
    pub warnings: Vec<String>,
    pub(super) writes: Vec<(String, mysql::Params)>,
}

/// Read what the fixup of `t` needs and plan its writes. `lock`: read FOR UPDATE (the writes
/// follow in this transaction).
pub fn plan(
    tx: &mut mysql::Transaction,
    creds: &DbCreds,
    dbs: &Dbs,
    t: &Target,
    lock: bool,
) -> Result<Plan> {
    let for_update = if lock { " FOR UPDATE" } else { "" };
    let row: Option<(String, String, Option<String>)> = tx
        .exec_first(
            format!("SELECT i.host, i.node, e.numa_topology FROM instances i JOIN instance_extra e ON e.instance_uuid = i.uuid WHERE i.uuid = ? AND i.deleted = 0{for_update}"),
            (&t.uuid,),
        )
        .map_err(|e| sql_err(e, "reading the instance", creds))?;
    let (old_host, old_node, numa) = row.ok_or_else(|| {
        Failure::new(format!(
            "no instance {} in Nova's database {}; check the uuid (openstack server show)",
            t.uuid, creds.database
        ))
    })?;
    let numa = numa.ok_or_else(|| {
        Failure::new(format!(
            "instance {} has no numa_topology in instance_extra: it is not a NUMA/pinned instance",
            t.uuid
        ))
    })?;
    let (doc, old_cells) = numa_json::instance_cells(&numa).map_err(|e| {
        Failure::new(format!(
            "instance {}: {e}; the row was left as it is",
            t.uuid
        ))
    })?;
    let mut new_doc = doc.clone();
    numa_json::set_instance_cells(&mut new_doc, &t.cells)
        .map_err(|e| Failure::new(format!("instance {}: {e}", t.uuid)))?;
    // Read back what was written: the new cells as Nova will load them (cpuset, thread policy).
    let new_cells = numa_json::instance_cells(&numa_json::to_nova_json(&new_doc))
        .map(|(_, c)| c)
        .map_err(|e| Failure::new(format!("instance {}: {e}", t.uuid)))?;
    let moved = old_host != t.host || old_node != t.node;
    let repinned = !same_pins(&old_cells, &new_cells);
    let mut p = Plan {
        before: json!({"host": old_host, "node": old_node, "numa_topology": doc}),
        after: json!({"host": t.host, "node": t.node, "numa_topology": new_doc}),
        ..Plan::default()
    };

    if moved || repinned {
        p.writes.push((
            "UPDATE instances SET host = ?, node = ?, updated_at = UTC_TIMESTAMP() WHERE uuid = ?"
                .into(),
            (&t.host, &t.node, &t.uuid).into(),
        ));
        p.writes.push((
            "UPDATE instance_extra SET numa_topology = ?, updated_at = UTC_TIMESTAMP() WHERE instance_uuid = ?".into(),
            (numa_json::to_nova_json(&new_doc), &t.uuid).into(),
        ));
        p.steps.push(format!(
            "instance {} now on {}/{} with its new pins",
            t.uuid, t.host, t.node
        ));
        nodes_usage(tx, creds, t, &old_node, &new_cells, for_update, &mut p)?;
    }
    if moved {
        p.writes.push((
            "INSERT INTO migrations (created_at, updated_at, source_compute, dest_compute, dest_host, status, instance_uuid, source_node, dest_node, deleted, migration_type, hidden, uuid) VALUES (UTC_TIMESTAMP(), UTC_TIMESTAMP(), ?, ?, ?, 'completed', ?, ?, ?, 0, 'live-migration', 0, UUID())".into(),
            (&old_host, &t.host, &t.host, &t.uuid, &old_node, &t.node).into(),
        ));
        p.steps
            .push("recorded a completed live-migration in migrations".into());
    }
    if let Some(pdb) = &dbs.placement {
        placement_allocations(tx, creds, pdb, t, for_update, &mut p)?;
    }
    if let Some(ndb) = &dbs.neutron {
        neutron_bindings(tx, creds, ndb, t, for_update, &mut p)?;
    }
    p.changed = !p.writes.is_empty();
    Ok(p)
}

/// The usage of the instance's old node (and its new one), recomputed from every instance on
/// them after the change, the way Nova's resource tracker computes it.
pub(super) fn nodes_usage(
    tx: &mut mysql::Transaction,
    creds: &DbCreds,
    t: &Target,
    old_node: &str,
    new_cells: &[CellPins],
    for_update: &str,
    p: &mut Plan,
) -> Result<()> {
    let mut nodes = vec![(old_node.to_string(), "source")];
    if t.node != old_node {
        nodes.push((t.node.clone(), "dest"));
    }
    for (node, role) in nodes {
        let (id, before_doc) = node_doc(tx, creds, &node, for_update)?;
        let mut others = node_instances(tx, creds, &node, &t.uuid, for_update)?;
        if node == t.node {
            others.push((t.uuid.clone(), new_cells.to_vec()));
        }
        let mut doc = before_doc.clone();
        let problems = numa_json::usage_from_instances(&mut doc, &others)
            .map_err(|e| Failure::new(format!("compute node {node}: {e}")))?;
        let (ours, theirs): (Vec<String>, Vec<String>) = problems
            .into_iter()
            .partition(|m| node == t.node && m.contains(&t.uuid));
        if !ours.is_empty() {
            return Err(Failure::new(format!(
                "recording instance {} on {node} would leave a compute node Nova refuses: {}; nothing was changed",
                t.uuid,
                ours.join("; ")
            ))
            .into());
        }
        p.warnings
            .extend(theirs.into_iter().map(|m| format!("{node}: {m}")));
        p.before[format!("{role}_node_numa_topology")] = before_doc.clone();
        p.after[format!("{role}_node_numa_topology")] = doc.clone();
        if doc != before_doc {
            p.writes.push((
                "UPDATE compute_nodes SET numa_topology = ?, updated_at = UTC_TIMESTAMP() WHERE id = ?".into(),
                (numa_json::to_nova_json(&doc), id).into(),
            ));
            p.steps.push(format!(
                "recomputed the usage of {node} from its {} instances",
                others.len()
            ));
        }
    }
    Ok(())
}

/// Placement: the consumer's allocations move to the destination provider.
pub(super) fn placement_allocations(
    tx: &mut mysql::Transaction,
    creds: &DbCreds,
    pdb: &str,
    t: &Target,
    for_update: &str,
    p: &mut Plan,
) -> Result<()> {
    let dst_rp: Option<u64> = tx
        .exec_first(
            format!("SELECT id FROM {pdb}.resource_providers WHERE name = ?"),
            (&t.node,),
        )
        .map_err(|e| sql_err(e, "reading Placement's providers", creds))?;
    let on_other: Vec<(u64, u64, u64)> = tx
        .exec(format!("SELECT resource_provider_id, resource_class_id, used FROM {pdb}.allocations WHERE consumer_id = ? ORDER BY resource_class_id{for_update}"), (&t.uuid,))
        .map_err(|e| sql_err(e, "reading Placement's allocations", creds))?;
    p.before["allocations"] = json!(on_other);
    if let Some(dst) = dst_rp {
        let stray = on_other.iter().filter(|a| a.0 != dst).count();
        if stray > 0 {
            p.writes.push((
                format!("UPDATE {pdb}.allocations SET resource_provider_id = ?, updated_at = UTC_TIMESTAMP() WHERE consumer_id = ? AND resource_provider_id <> ?"),
                (dst, &t.uuid, dst).into(),
            ));
            p.steps.push(format!(
                "moved {stray} Placement allocations to provider {}",
                t.node
            ));
        }
        p.after["allocations"] =
            json!(on_other.iter().map(|a| (dst, a.1, a.2)).collect::<Vec<_>>());
    } else {
        p.warnings.push(format!(
            "no Placement provider named {}: allocations left as they are",
            t.node
        ));
    }
    Ok(())
}

/// Neutron (the `neutron_database` fallback): the ports' binding host follows the guest, or it
/// loses its network.
pub(super) fn neutron_bindings(
    tx: &mut mysql::Transaction,
    creds: &DbCreds,
    ndb: &str,
    t: &Target,
    for_update: &str,
    p: &mut Plan,
) -> Result<()> {
    let bindings: Vec<(String, String)> = tx
        .exec(format!("SELECT b.port_id, b.host FROM {ndb}.ml2_port_bindings b JOIN {ndb}.ports p ON p.id = b.port_id WHERE p.device_id = ? ORDER BY b.port_id{for_update}"), (&t.uuid,))
        .map_err(|e| sql_err(e, "reading Neutron port bindings", creds))?;
    p.before["port_bindings"] = json!(bindings);
    let stale: Vec<&(String, String)> = bindings.iter().filter(|b| b.1 != t.host).collect();
    for (port, _) in &stale {
        p.writes.push((
            format!("UPDATE {ndb}.ml2_port_bindings SET host = ? WHERE port_id = ? AND host <> ?"),
            (&t.host, port, &t.host).into(),
        ));
    }
    if !stale.is_empty() {
        p.steps.push(format!(
            "moved {} Neutron port bindings to {} in Neutron's database (fallback: no L2 agent was told)",
            stale.len(),
            t.host
        ));
        p.warnings.push(format!(
            "Neutron port bindings written into Neutron's database directly (neutron_database): neutron-server \
             told no L2 agent, so the port stays unwired on {} until its agent resyncs; move ports through \
             Neutron's API (neutron_port_binding) instead",
            t.host
        ));
    }
    p.after["port_bindings"] = json!(bindings
        .iter()
        .map(|b| (b.0.clone(), t.host.clone()))
        .collect::<Vec<_>>());
    Ok(())
}

/// A compute node's id and stored topology.
pub(super) fn node_doc(
    tx: &mut mysql::Transaction,
    creds: &DbCreds,
    node: &str,
    for_update: &str,
) -> Result<(u64, Value)> {
    let r: Option<(u64, Option<String>)> = tx
        .exec_first(format!("SELECT id, numa_topology FROM compute_nodes WHERE hypervisor_hostname = ? AND deleted = 0{for_update}"), (node,))
        .map_err(|e| sql_err(e, "reading the compute node", creds))?;
    let (id, text) =
        r.ok_or_else(|| Failure::new(format!("no compute node '{node}' in Nova's database")))?;
    let v: Value = serde_json::from_str(text.as_deref().unwrap_or("null")).map_err(|e| {
        Failure::new(format!(
            "compute node {node}: numa_topology is not JSON ({e})"
        ))
    })?;
    Ok((id, v))
}

/// Every other instance Nova's resource tracker counts on a node (not deleted, not shelved
/// offloaded), with its cells. One it cannot read stops the fixup: the node's usage would be
/// wrong, and Nova's own periodic fails on it as well.
pub(super) fn node_instances(
    tx: &mut mysql::Transaction,
    creds: &DbCreds,
    node: &str,
    except: &str,
    for_update: &str,
) -> Result<Vec<(String, Vec<CellPins>)>> {
    let rows: Vec<(String, Option<String>)> = tx
        .exec(
            format!("SELECT i.uuid, e.numa_topology FROM instances i JOIN instance_extra e ON e.instance_uuid = i.uuid WHERE i.node = ? AND i.deleted = 0 AND i.uuid <> ? AND COALESCE(i.vm_state, '') NOT IN ('deleted', 'shelved_offloaded') ORDER BY i.uuid{for_update}"),
            (node, except),
        )
        .map_err(|e| sql_err(e, "reading the node's instances", creds))?;
    let mut out = Vec::new();
    for (uuid, numa) in rows {
        let Some(text) = numa else { continue };
        let (_, cells) = numa_json::instance_cells(&text).map_err(|e| {
            Failure::new(format!("instance {uuid} on {node}: {e}; its node's usage cannot be recomputed, nothing was changed (repair that row first: audit with fix)"))
        })?;
        out.push((uuid, cells));
    }
    Ok(out)
}

/// Outcome for one instance.
pub fn outcome(ctx: &Context, uuid: &str, p: Plan, backup_file: Option<String>) -> Outcome {
    let msg = if !p.changed {
        format!("instance {uuid}: Nova's database already matches")
    } else if ctx.check_mode {
        format!(
            "instance {uuid} (check mode, nothing written): would have {}",
            p.steps.join("; ")
        )
    } else {
        format!("instance {uuid}: {}", p.steps.join("; "))
    };
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    let mut o = Outcome::new(p.changed, msg)
        .with("instance_uuid", uuid)
        .with("steps", &p.steps)
        .with("before", &p.before)
        .with("after", &p.after);
    if let Some(b) = backup_file {
        o.set("backup_file", b);
    }
    if p.changed {
        o.diff = Some(
            json!({"before": pretty(&p.before), "after": pretty(&p.after), "before_header": format!("{uuid} in Nova's DB"), "after_header": format!("{uuid} in Nova's DB (fixed)")}),
        );
    }
    o.warnings = p.warnings;
    o
}
