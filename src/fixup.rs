//! `nova_instance_fixup`: make Nova's database say where and how a guest runs now.
//!
//! One transaction, in the field-proven order: release the instance's pinned CPUs and memory
//! on the source compute node, update the instance (host, node, `instance_extra.numa_topology`),
//! account them on the destination compute node; then the trail (`migrations`), the Placement
//! allocations and the Neutron port bindings. Placement and Neutron are read through the same
//! connection (databases on the same server, as Kolla deploys them), so either everything is
//! committed or nothing is. Idempotent: what already matches is left alone.

use crate::ansible::{Context, Failure, Outcome};
use crate::facts::NumaFacts;
use crate::fit::{CellPlacement, Placement};
use crate::nova::db::{self, DbCreds};
use crate::nova::numa_json::{self, CellPins};
use anyhow::Result;
use mysql::prelude::Queryable;
use mysql::{Conn, TxOpts};
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

/// A uuid as Nova writes them: anything else is refused before it reaches SQL or a message.
pub fn check_uuid(u: &str) -> Result<(), Failure> {
    let ok = u.len() == 36
        && u.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    if ok {
        Ok(())
    } else {
        Err(Failure::new(
            "nova_instance_fixup: instance_uuid is not a uuid (8-4-4-4-12 hex digits)",
        ))
    }
}

/// Database names go into SQL as identifiers (they cannot be parameters): letters, digits, `_`.
pub fn check_ident(name: &str) -> Result<(), Failure> {
    if !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "nova_instance_fixup: '{name}' is not a valid database name"
        )))
    }
}

fn sql_err(e: mysql::Error, what: &str, creds: &DbCreds) -> anyhow::Error {
    Failure::new(format!("nova_instance_fixup: {what} failed: {}; nothing was changed (the transaction is rolled back)", db::scrub(&e.to_string(), &creds.password))).into()
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
        .ok_or_else(|| {
            Failure::new(format!(
                "nova_instance_fixup: no guest '{name_or_uuid}' on {}",
                f.host
            ))
        })?;
    if !g.is_dedicated() {
        return Err(Failure::new(format!("nova_instance_fixup: guest {} is not pinned (every vCPU to one pCPU); nothing to record", g.name)));
    }
    let cell_of = |cpu: u32| {
        f.cells
            .iter()
            .find(|c| c.cpus.iter().any(|p| p.id == cpu))
            .map(|c| c.id)
    };
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
        let first = pins.values().next().copied().unwrap_or(0);
        let host_cell = cell_of(first).ok_or_else(|| {
            Failure::new(format!(
                "nova_instance_fixup: guest {} is pinned to pCPU {first}, which {} does not have",
                g.name, f.host
            ))
        })?;
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

fn same_pins(a: &[CellPins], b: &[CellPins]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.host_cell == y.host_cell && x.pins == y.pins && x.reserved == y.reserved
        })
}

/// Bring one instance's rows in line with `t`, in its own transaction. Returns (changed,
/// before, after, steps).
pub fn fixup(
    conn: &mut Conn,
    creds: &DbCreds,
    dbs: &Dbs,
    t: &Target,
    check_mode: bool,
) -> Result<(bool, Value, Value, Vec<String>)> {
    let mut tx = conn
        .start_transaction(TxOpts::default())
        .map_err(|e| sql_err(e, "starting the transaction", creds))?;
    let r = fixup_in(&mut tx, creds, dbs, t)?;
    finish(tx, creds, r.0 && !check_mode)?;
    Ok(r)
}

/// Commit (or roll back) a transaction.
pub fn finish(tx: mysql::Transaction, creds: &DbCreds, commit: bool) -> Result<()> {
    if !commit {
        return tx.rollback().map_err(|e| sql_err(e, "rolling back", creds));
    }
    // Test hook: widen the window before COMMIT so a test can kill the database in it.
    if let Some(s) = std::env::var("NUMA_REPIN_TEST_PAUSE_BEFORE_COMMIT_S")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_secs(s));
    }
    tx.commit().map_err(|e| sql_err(e, "committing", creds))
}

/// The work of `fixup` inside a transaction the caller owns (the audit's fix puts every
/// drifted instance in one).
pub fn fixup_in(
    tx: &mut mysql::Transaction,
    creds: &DbCreds,
    dbs: &Dbs,
    t: &Target,
) -> Result<(bool, Value, Value, Vec<String>)> {
    let row: Option<(String, String, Option<String>)> = tx
        .exec_first(
            "SELECT i.host, i.node, e.numa_topology FROM instances i JOIN instance_extra e ON e.instance_uuid = i.uuid WHERE i.uuid = ? AND i.deleted = 0 FOR UPDATE",
            (&t.uuid,),
        )
        .map_err(|e| sql_err(e, "reading the instance", creds))?;
    let (old_host, old_node, numa) = row.ok_or_else(|| Failure::new(format!("nova_instance_fixup: no instance {} in Nova's database {}; check the uuid (openstack server show)", t.uuid, creds.database)))?;
    let numa = numa.ok_or_else(|| Failure::new(format!("nova_instance_fixup: instance {} has no numa_topology in instance_extra: it is not a NUMA/pinned instance", t.uuid)))?;
    let (doc, old_cells) = numa_json::instance_cells(&numa).map_err(|e| {
        Failure::new(format!(
            "nova_instance_fixup: instance {}: {e}; the row was left as it is",
            t.uuid
        ))
    })?;
    let mut new_doc = doc.clone();
    numa_json::set_instance_cells(&mut new_doc, &t.cells)
        .map_err(|e| Failure::new(format!("nova_instance_fixup: instance {}: {e}", t.uuid)))?;
    let new_cells = numa_json::cells_of_placement(&t.cells);
    let moved = old_host != t.host || old_node != t.node;
    let repinned = !same_pins(&old_cells, &new_cells);
    let mut steps = Vec::new();
    let mut before = json!({"host": old_host, "node": old_node, "numa_topology": doc});
    let mut after = json!({"host": t.host, "node": t.node, "numa_topology": new_doc});

    if moved || repinned {
        // 1. release on the source node
        let node_doc = |tx: &mut mysql::Transaction, node: &str| -> Result<(u64, Value)> {
            let r: Option<(u64, Option<String>)> = tx
                .exec_first("SELECT id, numa_topology FROM compute_nodes WHERE hypervisor_hostname = ? AND deleted = 0 FOR UPDATE", (node,))
                .map_err(|e| sql_err(e, "reading the compute node", creds))?;
            let (id, text) = r.ok_or_else(|| {
                Failure::new(format!(
                    "nova_instance_fixup: no compute node '{node}' in Nova's database"
                ))
            })?;
            let v: Value =
                serde_json::from_str(text.as_deref().unwrap_or("null")).map_err(|e| {
                    Failure::new(format!(
                        "nova_instance_fixup: compute node {node}: numa_topology is not JSON ({e})"
                    ))
                })?;
            Ok((id, v))
        };
        let (src_id, mut src_doc) = node_doc(tx, &old_node)?;
        before["source_node_numa_topology"] = src_doc.clone();
        numa_json::account_on_node(&mut src_doc, &old_cells, -1).map_err(|e| {
            Failure::new(format!("nova_instance_fixup: compute node {old_node}: {e}"))
        })?;
        tx.exec_drop(
            "UPDATE compute_nodes SET numa_topology = ?, updated_at = UTC_TIMESTAMP() WHERE id = ?",
            (numa_json::to_nova_json(&src_doc), src_id),
        )
        .map_err(|e| sql_err(e, "releasing on the source node", creds))?;
        steps.push(format!(
            "released {} pinned pCPUs on {old_node}",
            old_cells
                .iter()
                .map(|c| c.pins.len() + c.reserved.len())
                .sum::<usize>()
        ));
        // 2. the instance
        tx.exec_drop(
            "UPDATE instances SET host = ?, node = ?, updated_at = UTC_TIMESTAMP() WHERE uuid = ?",
            (&t.host, &t.node, &t.uuid),
        )
        .map_err(|e| sql_err(e, "updating the instance", creds))?;
        tx.exec_drop("UPDATE instance_extra SET numa_topology = ?, updated_at = UTC_TIMESTAMP() WHERE instance_uuid = ?", (numa_json::to_nova_json(&new_doc), &t.uuid)).map_err(|e| sql_err(e, "updating instance_extra", creds))?;
        steps.push(format!(
            "instance {} now on {}/{} with its new pins",
            t.uuid, t.host, t.node
        ));
        // 3. account on the destination node (re-read: it may be the source node itself)
        let (dst_id, mut dst_doc) = node_doc(tx, &t.node)?;
        before["dest_node_numa_topology"] = dst_doc.clone();
        numa_json::account_on_node(&mut dst_doc, &new_cells, 1).map_err(|e| {
            Failure::new(format!("nova_instance_fixup: compute node {}: {e}", t.node))
        })?;
        tx.exec_drop(
            "UPDATE compute_nodes SET numa_topology = ?, updated_at = UTC_TIMESTAMP() WHERE id = ?",
            (numa_json::to_nova_json(&dst_doc), dst_id),
        )
        .map_err(|e| sql_err(e, "accounting on the destination node", creds))?;
        steps.push(format!("accounted the pins on {}", t.node));
        after["dest_node_numa_topology"] = dst_doc;
    }
    if moved {
        tx.exec_drop(
            "INSERT INTO migrations (created_at, updated_at, source_compute, dest_compute, dest_host, status, instance_uuid, source_node, dest_node, deleted, migration_type, hidden, uuid) VALUES (UTC_TIMESTAMP(), UTC_TIMESTAMP(), ?, ?, ?, 'completed', ?, ?, ?, 0, 'live-migration', 0, UUID())",
            (&old_host, &t.host, &t.host, &t.uuid, &old_node, &t.node),
        )
        .map_err(|e| sql_err(e, "recording the migration", creds))?;
        steps.push("recorded a completed live-migration in migrations".into());
    }
    // Placement: the consumer's allocations move to the destination provider.
    if let Some(pdb) = &dbs.placement {
        let rp = |tx: &mut mysql::Transaction, name: &str| -> Result<Option<u64>> {
            tx.exec_first(
                format!("SELECT id FROM {pdb}.resource_providers WHERE name = ?"),
                (name,),
            )
            .map_err(|e| sql_err(e, "reading Placement's providers", creds))
        };
        let dst_rp = rp(tx, &t.node)?;
        let on_other: Vec<(u64, u64, u64)> = tx
            .exec(format!("SELECT resource_provider_id, resource_class_id, used FROM {pdb}.allocations WHERE consumer_id = ? ORDER BY resource_class_id"), (&t.uuid,))
            .map_err(|e| sql_err(e, "reading Placement's allocations", creds))?;
        before["allocations"] = json!(on_other);
        if let Some(dst) = dst_rp {
            let stray: Vec<&(u64, u64, u64)> = on_other.iter().filter(|a| a.0 != dst).collect();
            if !stray.is_empty() {
                tx.exec_drop(format!("UPDATE {pdb}.allocations SET resource_provider_id = ?, updated_at = UTC_TIMESTAMP() WHERE consumer_id = ? AND resource_provider_id <> ?"), (dst, &t.uuid, dst))
                    .map_err(|e| sql_err(e, "moving Placement allocations", creds))?;
                steps.push(format!(
                    "moved {} Placement allocations to provider {}",
                    stray.len(),
                    t.node
                ));
            }
            after["allocations"] =
                json!(on_other.iter().map(|a| (dst, a.1, a.2)).collect::<Vec<_>>());
        } else {
            steps.push(format!(
                "no Placement provider named {}: allocations left as they are",
                t.node
            ));
        }
    }
    // Neutron: the ports' binding host follows the guest, or it loses its network.
    if let Some(ndb) = &dbs.neutron {
        let bindings: Vec<(String, String)> = tx
            .exec(format!("SELECT b.port_id, b.host FROM {ndb}.ml2_port_bindings b JOIN {ndb}.ports p ON p.id = b.port_id WHERE p.device_id = ? ORDER BY b.port_id"), (&t.uuid,))
            .map_err(|e| sql_err(e, "reading Neutron port bindings", creds))?;
        before["port_bindings"] = json!(bindings);
        let stale: Vec<&(String, String)> = bindings.iter().filter(|b| b.1 != t.host).collect();
        if !stale.is_empty() {
            for (port, _) in &stale {
                tx.exec_drop(format!("UPDATE {ndb}.ml2_port_bindings SET host = ? WHERE port_id = ? AND host <> ?"), (&t.host, port, &t.host)).map_err(|e| sql_err(e, "moving Neutron port bindings", creds))?;
            }
            steps.push(format!(
                "moved {} Neutron port bindings to {}",
                stale.len(),
                t.host
            ));
        }
        after["port_bindings"] = json!(bindings
            .iter()
            .map(|b| (b.0.clone(), t.host.clone()))
            .collect::<Vec<_>>());
    }
    let changed = !steps.iter().all(|s| s.starts_with("no Placement provider"));
    Ok((changed, before, after, steps))
}

/// Audit: compare the DB's host and pins of every pinned guest on these hosts with libvirt.
pub fn audit(conn: &mut Conn, creds: &DbCreds, hosts: &[NumaFacts]) -> Result<Vec<Value>> {
    // One query per 500 guests rather than one per guest: fleets have thousands.
    let uuids: Vec<&str> = hosts
        .iter()
        .flat_map(|f| f.guests.iter())
        .filter(|g| g.is_dedicated() && check_uuid(&g.uuid).is_ok())
        .map(|g| g.uuid.as_str())
        .collect();
    let mut found: std::collections::HashMap<String, (String, String, Option<String>)> =
        Default::default();
    for chunk in uuids.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let q = format!("SELECT i.uuid, i.host, i.node, e.numa_topology FROM instances i JOIN instance_extra e ON e.instance_uuid = i.uuid WHERE i.deleted = 0 AND i.uuid IN ({marks})");
        let rows: Vec<(String, String, String, Option<String>)> = conn
            .exec(q, chunk.to_vec())
            .map_err(|e| sql_err(e, "reading instances", creds))?;
        found.extend(rows.into_iter().map(|(u, h, n, t)| (u, (h, n, t))));
    }
    let mut drift = Vec::new();
    for f in hosts {
        for g in f.guests.iter().filter(|g| g.is_dedicated()) {
            if check_uuid(&g.uuid).is_err() {
                continue;
            }
            let Some((host, node, numa)) = found.remove(&g.uuid) else {
                drift.push(json!({"instance_uuid": g.uuid, "name": g.name, "host": f.host, "kind": "not in Nova's database"}));
                continue;
            };
            let live = placement_of_guest(f, &g.uuid)
                .map(|(p, _)| numa_json::cells_of_placement(&p.cells));
            let db_cells = numa.as_deref().map(numa_json::instance_cells);
            let mut kinds = Vec::new();
            if host != f.host {
                kinds.push(format!(
                    "DB says host {host}, libvirt runs it on {}",
                    f.host
                ));
            }
            match (&live, &db_cells) {
                (Ok(l), Some(Ok((_, d)))) if !same_pins(l, d) => {
                    let show = |c: &[CellPins]| {
                        c.iter()
                            .map(|c| {
                                format!(
                                    "cell {}: {:?}",
                                    c.host_cell,
                                    c.pins.values().collect::<Vec<_>>()
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("; ")
                    };
                    kinds.push(format!("DB pins {} but live pins {}", show(d), show(l)));
                }
                (_, Some(Err(e))) => kinds.push(format!("numa_topology unreadable: {e}")),
                (_, None) => kinds.push("no numa_topology in the DB".into()),
                _ => {}
            }
            if !kinds.is_empty() {
                drift.push(json!({"instance_uuid": g.uuid, "name": g.name, "host": f.host, "db_host": host, "db_node": node, "kind": kinds.join("; ")}));
            }
        }
    }
    Ok(drift)
}

/// The DB's own view of overlaps: pCPUs that two instances on one host both claim.
pub fn db_overlaps(conn: &mut Conn, creds: &DbCreds) -> Result<Vec<Value>> {
    let rows: Vec<(String, String, Option<String>)> = conn
        .exec("SELECT i.uuid, i.host, e.numa_topology FROM instances i JOIN instance_extra e ON e.instance_uuid = i.uuid WHERE i.deleted = 0 AND e.numa_topology IS NOT NULL", ())
        .map_err(|e| sql_err(e, "reading instances", creds))?;
    let mut holders: std::collections::BTreeMap<(String, u32), Vec<String>> = Default::default();
    for (uuid, host, numa) in rows {
        if let Some(Ok((_, cells))) = numa.as_deref().map(numa_json::instance_cells) {
            for c in cells {
                for p in c.pins.values().chain(c.reserved.iter()) {
                    holders
                        .entry((host.clone(), *p))
                        .or_default()
                        .push(uuid.clone());
                }
            }
        }
    }
    Ok(holders
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|((h, cpu), v)| json!({"host": h, "cpu": cpu, "instances": v}))
        .collect())
}

/// Write the before values to `dir` before anything is committed.
pub fn backup(dir: &std::path::Path, uuid: &str, before: &Value) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Failure::new(format!(
            "nova_instance_fixup: cannot create backup_dir {}: {e}",
            dir.display()
        ))
    })?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let path = dir.join(format!("{uuid}-{stamp}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(before).unwrap_or_default()).map_err(|e| {
        Failure::new(format!(
            "nova_instance_fixup: cannot write backup {}: {e}",
            path.display()
        ))
    })?;
    Ok(path.display().to_string())
}

/// Outcome for one instance.
pub fn outcome(
    ctx: &Context,
    uuid: &str,
    changed: bool,
    before: Value,
    after: Value,
    steps: Vec<String>,
    backup_file: Option<String>,
) -> Outcome {
    let msg = if !changed {
        format!("instance {uuid}: Nova's database already matches")
    } else if ctx.check_mode {
        format!(
            "instance {uuid} (check mode, nothing written): would have {}",
            steps.join("; ")
        )
    } else {
        format!("instance {uuid}: {}", steps.join("; "))
    };
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    let mut o = Outcome::new(changed, msg)
        .with("instance_uuid", uuid)
        .with("steps", &steps)
        .with("before", &before)
        .with("after", &after);
    if let Some(b) = backup_file {
        o.set("backup_file", b);
    }
    if changed {
        o.diff = Some(
            json!({"before": pretty(&before), "after": pretty(&after), "before_header": format!("{uuid} in Nova's DB"), "after_header": format!("{uuid} in Nova's DB (fixed)")}),
        );
    }
    o
}
