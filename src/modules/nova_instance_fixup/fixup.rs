//! `nova_instance_fixup`: make Nova's database say where and how a guest runs now.
//!
//! One transaction, planned from reads before anything is written (check mode stops there, in a
//! READ ONLY transaction): the instance (host, node, `instance_extra.numa_topology`), the usage
//! of its source and destination compute nodes recomputed from every instance on them the way
//! Nova's resource tracker does; then the trail (`migrations`), the Placement
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
            "instance_uuid is not a uuid (8-4-4-4-12 hex digits)",
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
            "'{name}' is not a valid database name"
        )))
    }
}

fn sql_err(e: mysql::Error, what: &str, creds: &DbCreds) -> anyhow::Error {
    Failure::new(format!(
        "{what} failed: {}; nothing was changed (the transaction is rolled back)",
        db::scrub(&e.to_string(), &creds.password)
    ))
    .into()
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

fn same_pins(a: &[CellPins], b: &[CellPins]) -> bool {
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
    writes: Vec<(String, mysql::Params)>,
}

/// A transaction; READ ONLY when nothing may be written (the server then refuses any write).
pub fn begin<'a>(
    conn: &'a mut Conn,
    creds: &DbCreds,
    read_only: bool,
) -> Result<mysql::Transaction<'a>> {
    let opts = if read_only {
        TxOpts::default().set_access_mode(Some(mysql::AccessMode::ReadOnly))
    } else {
        TxOpts::default()
    };
    conn.start_transaction(opts)
        .map_err(|e| sql_err(e, "starting the transaction", creds))
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

/// Run a plan's writes, in order, inside the caller's transaction.
pub fn apply(tx: &mut mysql::Transaction, creds: &DbCreds, p: &Plan) -> Result<()> {
    for (i, (sql, params)) in p.writes.iter().enumerate() {
        tx.exec_drop(sql, params.clone()).map_err(|e| {
            sql_err(
                e,
                &format!(
                    "write {} of {} ({})",
                    i + 1,
                    p.writes.len(),
                    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
                ),
                creds,
            )
        })?;
    }
    Ok(())
}

/// A DB row the running Nova could not load, as its own objects said (the audit's Nova rows
/// check): `table` and `key` (instance uuid, or compute node name) and Nova's error.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
pub struct UnloadableRow {
    pub table: String,
    pub key: String,
    #[serde(default)]
    pub error: String,
}

/// Plan the repair of a row the running Nova cannot load, or say why it is not repaired. Only
/// what can be repaired without guessing is: an instance's `numa_topology` whose InstanceNUMACell
/// is newer than the release supports ("Version 1.5 of InstanceNUMACell is not supported,
/// supported version is 1.4"), rewritten as Nova's own `obj_make_compatible` would. A compute
/// node row is rewritten by that host's nova-compute at its next periodic update.
pub fn plan_row_repair(
    tx: &mut mysql::Transaction,
    creds: &DbCreds,
    row: &UnloadableRow,
    lock: bool,
) -> Result<std::result::Result<Plan, String>> {
    if row.table != "instance_extra" {
        return Ok(Err(format!("{} rows are rewritten by the host's nova-compute at its next periodic update; not touched", row.table)));
    }
    let Some(target) = supported_cell_version(&row.error) else {
        return Ok(Err(format!(
            "not a version Nova can convert ({}); repair by hand",
            row.error
        )));
    };
    check_uuid(&row.key)?;
    let for_update = if lock { " FOR UPDATE" } else { "" };
    let text: Option<Option<String>> = tx
        .exec_first(
            format!("SELECT numa_topology FROM instance_extra WHERE instance_uuid = ? AND deleted = 0{for_update}"),
            (&row.key,),
        )
        .map_err(|e| sql_err(e, "reading instance_extra", creds))?;
    let Some(Some(text)) = text else {
        return Ok(Err("no numa_topology in instance_extra any more".into()));
    };
    let mut doc: Value = match serde_json::from_str(&text) {
        Ok(d) => d,
        Err(e) => return Ok(Err(format!("not JSON ({e}); repair by hand"))),
    };
    let before = doc.clone();
    match numa_json::downgrade_instance_cells(&mut doc, &target) {
        Ok(false) => {
            return Ok(Err(format!(
                "its cells are InstanceNUMACell {target} already"
            )))
        }
        Err(e) => return Ok(Err(e)),
        Ok(true) => {}
    }
    let mut p = Plan {
        changed: true,
        before: json!({"numa_topology": before}),
        after: json!({"numa_topology": doc}),
        steps: vec![format!("instance_extra.numa_topology of {} rewritten as InstanceNUMACell {target}, the version this Nova loads", row.key)],
        ..Plan::default()
    };
    p.writes.push((
        "UPDATE instance_extra SET numa_topology = ?, updated_at = UTC_TIMESTAMP() WHERE instance_uuid = ?".into(),
        (numa_json::to_nova_json(&doc), &row.key).into(),
    ));
    Ok(Ok(p))
}

/// The InstanceNUMACell version Nova says it supports, from its refusal of a newer one.
fn supported_cell_version(error: &str) -> Option<String> {
    if !error.contains("of InstanceNUMACell is not supported") {
        return None;
    }
    let v = error.rsplit("supported version is ").next()?;
    let v: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let v = v.trim_end_matches('.').to_string();
    (v.split('.').count() == 2 && v.split('.').all(|x| !x.is_empty())).then_some(v)
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
fn nodes_usage(
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
fn placement_allocations(
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
fn neutron_bindings(
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
fn node_doc(
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
fn node_instances(
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
    // One uuid defined on two hosts: a stale copy left by an interrupted migration. `virsh start`
    // on it would run the guest twice.
    let mut homes: std::collections::BTreeMap<&str, Vec<(String, String, String)>> =
        Default::default();
    for f in hosts {
        for g in &f.guests {
            homes.entry(g.uuid.as_str()).or_default().push((
                f.host.clone(),
                g.name.clone(),
                g.state.clone(),
            ));
        }
    }
    for (uuid, on) in homes.iter().filter(|(_, on)| on.len() > 1) {
        let hosts_states: Vec<String> = on.iter().map(|(h, _, st)| format!("{h} ({st})")).collect();
        drift.push(json!({"instance_uuid": uuid, "name": on[0].1, "host": on[0].0, "kind": format!("defined on two hosts: {}; keep the copy Nova records, undefine the other", hosts_states.join(", "))}));
    }
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

/// Compute node rows no nova-compute service stands behind (the host was removed, or renamed,
/// and its row left): the scheduler may still count them, and nothing updates them.
pub fn stale_compute_nodes(conn: &mut Conn, creds: &DbCreds) -> Result<Vec<Value>> {
    let rows: Vec<(String, String)> = conn
        .exec(
            "SELECT cn.hypervisor_hostname, cn.host FROM compute_nodes cn LEFT JOIN services s ON s.host = cn.host AND s.`binary` = 'nova-compute' AND s.deleted = 0 WHERE cn.deleted = 0 AND s.id IS NULL ORDER BY cn.hypervisor_hostname",
            (),
        )
        .map_err(|e| sql_err(e, "reading compute nodes", creds))?;
    Ok(rows
        .into_iter()
        .map(|(node, host)| json!({"node": node, "host": host, "kind": "compute node row with no live nova-compute service on its host (removed or renamed host?): check `openstack compute service list`, then delete the service and its node"}))
        .collect())
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
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::new(format!("cannot create backup_dir {}: {e}", dir.display())))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    // Two changes of one instance in one run (a row repaired, then its drift fixed) each keep
    // their own file.
    let mut path = dir.join(format!("{uuid}-{stamp}.json"));
    let mut n = 1;
    while path.exists() {
        path = dir.join(format!("{uuid}-{stamp}-{n}.json"));
        n += 1;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(before).unwrap_or_default())
        .map_err(|e| Failure::new(format!("cannot write backup {}: {e}", path.display())))?;
    Ok(path.display().to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_nova_supports_is_read_from_its_refusal() {
        let e = "IncompatibleObjectVersion: Version 1.5 of InstanceNUMACell is not supported, supported version is 1.4";
        assert_eq!(supported_cell_version(e).as_deref(), Some("1.4"));
        assert_eq!(
            supported_cell_version("ValueError: Expecting value: line 1"),
            None
        );
        assert_eq!(
            supported_cell_version(
                "Version 1.5 of InstanceNUMACell is not supported, supported version is 1."
            ),
            None
        );
    }
}
