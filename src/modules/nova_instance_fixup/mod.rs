//! Ansible module `nova_instance_fixup`: bring Nova's database in line with where and how a
//! guest runs now (after a repinned migration), in one transaction; or audit the drift.

//!
//! One transaction, planned from reads before anything is written (check mode stops there, in a
//! READ ONLY transaction): the instance (host, node, `instance_extra.numa_topology`), the usage
//! of its source and destination compute nodes recomputed from every instance on them the way
//! Nova's resource tracker does; then the trail (`migrations`), the Placement
//! allocations and the Neutron port bindings. Placement and Neutron are read through the same
//! connection (databases on the same server, as Kolla deploys them), so either everything is
//! committed or nothing is. Idempotent: what already matches is left alone.

mod audit;
mod plan;
mod repair;
mod tx;

use crate::ansible::{Context, Failure, ModuleArgs, Outcome};
use crate::facts::{self, NumaFacts};
use crate::fit::Placement;
use crate::nova::db;
use plan::{Dbs, Target};
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::PathBuf;

/// Bring Nova's DB in line with a guest's host and pinning, or audit DB against libvirt.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// The instance (Nova uuid = libvirt domain uuid).
    instance_uuid: Option<String>,
    /// The new placement, as repin_migrate returns it (cells with host_cell, vcpu_pins, cpuset_reserved, memory_mb).
    placement: Option<Placement>,
    /// Nova host the instance runs on now (compute service host).
    dest_host: Option<String>,
    /// Nova node (hypervisor_hostname) it runs on now. Default: dest_host.
    dest_node: Option<String>,
    /// Read the placement from the running guest on `libvirt_uri` instead of `placement`.
    #[serde(default)]
    from_libvirt: bool,
    /// libvirt URI of the host the guest runs on (from_libvirt).
    libvirt_uri: Option<String>,
    /// nova.conf of that host (its cells and dedicated set, for from_libvirt).
    host_nova_conf: Option<PathBuf>,
    /// SQLAlchemy URL of Nova's cell database (mysql+pymysql://user:pass@host/nova); a secret.
    #[serde(default)]
    #[schemars(schema_with = "crate::ansible::secret")]
    db_connection: Option<String>,
    /// nova-conductor's nova.conf, read for `[database] connection` when db_connection is not given.
    #[serde(default = "default_conductor_conf")]
    nova_conf: PathBuf,
    /// Kolla's passwords.yml; its nova_database_password is used when present.
    passwords_file: Option<PathBuf>,
    /// Database holding Placement's allocations: `placement` from Stein, `nova_api` for Queens/Rocky; empty to skip.
    #[serde(default = "default_placement_db")]
    placement_database: String,
    /// Neutron's database (`neutron`), to write the ports' binding host into it directly: a fallback, since no
    /// L2 agent hears of it and the port stays unwired on the destination until its agent resyncs. Default
    /// empty: ports are moved through Neutron's API (`neutron_port_binding`), as Nova does.
    #[serde(default)]
    neutron_database: String,
    /// Write the before values of every change to a file in this directory first.
    backup_dir: Option<PathBuf>,
    /// Audit mode: compare the DB with libvirt's live pinning on `hosts` and report drift.
    #[serde(default)]
    audit: bool,
    /// Audit mode: facts of the hosts to audit (numa_facts' ansible_facts.numa).
    #[serde(default)]
    hosts: Vec<NumaFacts>,
    /// Audit mode: repair every drifted instance from its live pinning.
    #[serde(default)]
    fix: bool,
    /// Audit mode with fix: rows the running Nova could not load (the audit's Nova rows check,
    /// `unloadable`). An instance row written for a newer release is rewritten in the version
    /// Nova names; any other row is listed as not repaired, with the reason.
    #[serde(default)]
    repair_rows: Vec<repair::UnloadableRow>,
}
fn default_conductor_conf() -> PathBuf {
    db::KOLLA_CONDUCTOR_CONF.into()
}
fn default_placement_db() -> String {
    "placement".into()
}
impl ModuleArgs for Args {
    fn secrets(&self) -> Vec<String> {
        db::url_secrets(self.db_connection.as_deref())
    }
}

/// The module's flow (`ansible::run` calls it with the parsed arguments).
pub fn run(a: Args, ctx: &Context) -> anyhow::Result<Outcome> {
    let creds = db::resolve(
        a.db_connection.as_deref(),
        &a.nova_conf,
        a.passwords_file.as_deref(),
    )
    .map_err(|e| match a.db_connection {
        Some(_) => Failure::new(format!("db_connection: {e}")),
        None => Failure::new(format!("{e}; give db_connection or nova_conf")),
    })?;
    let opt = |s: &str| -> Result<Option<String>, Failure> {
        if s.is_empty() {
            Ok(None)
        } else {
            tx::check_ident(s)?;
            Ok(Some(s.to_string()))
        }
    };
    let dbs = Dbs {
        placement: opt(&a.placement_database)?,
        neutron: opt(&a.neutron_database)?,
    };
    let mut conn = db::connect(&creds).map_err(Failure::new)?;
    if a.audit {
        return audit::run(&a, ctx, &mut conn, &creds, &dbs);
    }
    let uuid = a
        .instance_uuid
        .clone()
        .ok_or_else(|| Failure::new("instance_uuid is required (or audit: true)"))?;
    tx::check_uuid(&uuid)?;
    let (placement, host) = if a.from_libvirt {
        let uri = a
            .libvirt_uri
            .as_deref()
            .ok_or_else(|| Failure::new("from_libvirt needs libvirt_uri"))?;
        let f = facts::gather_live(uri, a.host_nova_conf.as_deref(), a.dest_host.as_deref())?;
        let (p, _) = plan::placement_of_guest(&f, &uuid)?;
        (p, a.dest_host.clone().unwrap_or(f.host.clone()))
    } else {
        let p = a.placement.clone().ok_or_else(|| {
            Failure::new("give placement (from repin_migrate) or from_libvirt: true")
        })?;
        (
            p,
            a.dest_host
                .clone()
                .ok_or_else(|| Failure::new("dest_host is required with placement"))?,
        )
    };
    let t = Target {
        uuid: uuid.clone(),
        node: a.dest_node.clone().unwrap_or(host.clone()),
        host,
        cells: placement.cells,
    };
    // The backup holds the values read under the transaction's locks, written before the
    // writes run.
    let mut tx = tx::begin(&mut conn, &creds, ctx.check_mode)?;
    let plan = plan::plan(&mut tx, &creds, &dbs, &t, !ctx.check_mode)?;
    let mut backup_file = None;
    if plan.changed && !ctx.check_mode {
        if let Some(dir) = &a.backup_dir {
            backup_file = Some(tx::backup(dir, &uuid, &plan.before)?);
        }
        tx::apply(&mut tx, &creds, &plan)?;
    }
    tx::finish(tx, &creds, plan.changed && !ctx.check_mode)?;
    Ok(plan::outcome(ctx, &uuid, plan, backup_file))
}
