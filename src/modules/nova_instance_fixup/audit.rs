//! Audit mode: the DB against libvirt on the given hosts (drift, a uuid on two hosts), the DB's
//! own overlaps and stale compute nodes; with `fix`, every drifted instance repaired in one
//! transaction.

use super::plan::{self, Dbs, Plan, Target};
use super::plan::{placement_of_guest, same_pins};
use super::repair::plan_row_repair;
use super::tx;
use super::tx::{check_uuid, sql_err};
use super::Args;
use crate::ansible::{Context, Outcome};
use crate::facts::NumaFacts;
use crate::nova::db::DbCreds;
use crate::nova::numa_json::{self, CellPins};
use anyhow::Result;
use mysql::prelude::Queryable;
use mysql::Conn;
use serde_json::{json, Value};

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
    let mut drift = defined_twice(hosts);
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

/// One uuid defined on two hosts: a stale copy left by an interrupted migration. `virsh start`
/// on it would run the guest twice.
fn defined_twice(hosts: &[NumaFacts]) -> Vec<Value> {
    let mut drift = Vec::new();
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
    drift
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

/// The audit (and, with `fix`, its repairs) as the module's result.
pub(super) fn run(
    a: &Args,
    ctx: &Context,
    conn: &mut Conn,
    creds: &DbCreds,
    dbs: &Dbs,
) -> Result<Outcome> {
    let drift = audit(conn, creds, &a.hosts)?;
    let overlaps = db_overlaps(conn, creds)?;
    let stale_nodes = stale_compute_nodes(conn, creds)?;
    let fix = match a.fix {
        true => fix_all(a, ctx, conn, creds, dbs, &drift)?,
        false => Repairs::default(),
    };
    let fixed_msg = match (a.fix, fix.not_repaired.len()) {
        (false, _) => String::new(),
        (true, 0) => format!(", {} fixed", fix.fixed.len()),
        (true, n) => format!(
            ", {} fixed, {n} rows Nova cannot load left as they are",
            fix.fixed.len()
        ),
    };
    let msg = format!(
        "audit: {} drifted instances, {} pCPUs claimed twice in the DB, {} stale compute node rows{fixed_msg}",
        drift.len(),
        overlaps.len(),
        stale_nodes.len(),
    );
    let mut o = Outcome::new(!fix.fixed.is_empty(), msg)
        .with("drift", &drift)
        .with("db_overlaps", &overlaps)
        .with("stale_compute_nodes", &stale_nodes)
        .with("fixed", &fix.fixed)
        .with("rows_not_repaired", &fix.not_repaired);
    o.warnings = fix.warnings;
    if !fix.diffs.is_empty() {
        o.diff = Some(Value::Array(fix.diffs));
    }
    Ok(o)
}

/// What `fix` did (or would do, in check mode).
#[derive(Default)]
struct Repairs {
    fixed: Vec<Value>,
    not_repaired: Vec<Value>,
    warnings: Vec<String>,
    diffs: Vec<Value>,
    /// The before values, written to `backup_dir` before the commit.
    backups: Vec<(String, Value)>,
}

impl Repairs {
    fn record(&mut self, key: &str, plan: Plan) {
        self.warnings.extend(plan.warnings);
        self.diffs
            .push(json!({"before": plan.before, "after": plan.after}));
        self.fixed
            .push(json!({"instance_uuid": key, "steps": plan.steps}));
        self.backups.push((key.to_string(), plan.before));
    }
}

/// Every drifted instance in one transaction: all repaired, or none. Check mode plans in a
/// READ ONLY transaction and writes nothing.
fn fix_all(
    a: &Args,
    ctx: &Context,
    conn: &mut Conn,
    creds: &DbCreds,
    dbs: &Dbs,
    drift: &[Value],
) -> Result<Repairs> {
    let write = !ctx.check_mode;
    let mut tx = tx::begin(conn, creds, ctx.check_mode)?;
    let mut r = Repairs::default();
    // Rows Nova cannot load first: the drift fixes below then write a loadable row.
    for row in &a.repair_rows {
        match plan_row_repair(&mut tx, creds, row, write)? {
            Ok(plan) => {
                if write {
                    tx::apply(&mut tx, creds, &plan)?;
                }
                r.record(&row.key, plan);
            }
            Err(why) => r
                .not_repaired
                .push(json!({"table": row.table, "key": row.key, "reason": why})),
        }
    }
    for (uuid, f) in repairable(&a.hosts, drift) {
        let (p, _) = plan::placement_of_guest(f, uuid)?;
        let t = Target {
            uuid: uuid.into(),
            host: f.host.clone(),
            node: f.host.clone(),
            cells: p.cells,
        };
        let plan = plan::plan(&mut tx, creds, dbs, &t, write)?;
        if write {
            tx::apply(&mut tx, creds, &plan)?;
        }
        match plan.changed {
            true => r.record(uuid, plan),
            false => r.warnings.extend(plan.warnings),
        }
    }
    if let (Some(dir), true) = (&a.backup_dir, write) {
        for (uuid, before) in &r.backups {
            tx::backup(dir, uuid, before)?;
        }
    }
    tx::finish(tx, creds, write && !r.fixed.is_empty())?;
    Ok(r)
}

/// The drifted instances `fix` repairs, with the host each runs on. Not one defined on two
/// hosts (which copy is the guest is the operator's call; the fix would otherwise record
/// whichever host came first), nor one Nova does not know.
fn repairable<'a>(hosts: &'a [NumaFacts], drift: &'a [Value]) -> Vec<(&'a str, &'a NumaFacts)> {
    let kind = |d: &Value| d["kind"].as_str().unwrap_or_default().to_string();
    let twice: Vec<&str> = drift
        .iter()
        .filter(|d| kind(d).starts_with("defined on two hosts"))
        .filter_map(|d| d["instance_uuid"].as_str())
        .collect();
    drift
        .iter()
        .filter(|d| kind(d) != "not in Nova's database")
        .filter_map(|d| d["instance_uuid"].as_str())
        .filter(|uuid| !twice.contains(uuid))
        .filter_map(|uuid| {
            let f = hosts
                .iter()
                .find(|f| f.guests.iter().any(|g| g.uuid == uuid))?;
            Some((uuid, f))
        })
        .collect()
}
