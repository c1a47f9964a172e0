//! Ansible module `numa_facts`: a host's NUMA topology, nova.conf CPU sets and every guest's
//! pinning with overlaps and pins on missing pCPUs, as `ansible_facts.numa`. Never changes anything.
use crate::ansible::{Context, ModuleArgs, Outcome};
use crate::facts;
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::PathBuf;

/// Gather NUMA facts live from libvirt (`uri`) or offline from saved `virsh capabilities` and
/// `virsh dumpxml` files (`capabilities_file`, `domain_files`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// libvirt URI of the host (ignored when `capabilities_file` is given).
    #[serde(default = "default_uri")]
    uri: String,
    /// nova-compute's nova.conf. Default: /etc/kolla/nova-compute/nova.conf, then /etc/nova/nova.conf; absent is fine.
    nova_conf: Option<PathBuf>,
    /// Name to report as `host` (default: libvirt's hostname, or the capabilities file's stem).
    host: Option<String>,
    /// Saved `virsh capabilities` output: read offline instead of connecting.
    capabilities_file: Option<PathBuf>,
    /// Saved `virsh dumpxml` outputs, one guest per file (offline mode).
    #[serde(default)]
    domain_files: Vec<PathBuf>,
}
fn default_uri() -> String {
    "qemu:///system".into()
}
impl ModuleArgs for Args {}

/// The module's flow (`ansible::run` calls it with the parsed arguments).
pub fn run(a: Args, _ctx: &Context) -> anyhow::Result<Outcome> {
    let f = match &a.capabilities_file {
        Some(caps) => facts::gather_saved(
            caps,
            &a.domain_files,
            a.nova_conf.as_deref(),
            a.host.as_deref(),
        )?,
        None => {
            if !a.domain_files.is_empty() {
                anyhow::bail!("domain_files needs capabilities_file (offline mode); to read a live host give only uri");
            }
            facts::gather_live(&a.uri, a.nova_conf.as_deref(), a.host.as_deref())?
        }
    };
    let msg = format!(
        "{}: {} cells, {} guests, {} overlapping pCPUs, {} pins on missing or forbidden pCPUs",
        f.host,
        f.cells.len(),
        f.guests.len(),
        f.overlaps.len(),
        f.missing_cpus.len()
    );
    let mut o = Outcome::new(false, msg)
        .with("overlaps", &f.overlaps)
        .with("missing_cpus", &f.missing_cpus);
    o.set("claims", &f.claims);
    for c in &f.claims {
        o.warnings.push(match &c.error {
            None => format!(
                "numa-repin claim {} held by host {} pid {} for guest {} from {}, for {} s; stale if no numa-repin migration to this host runs (remove it: virsh undefine numa-repin-claim)",
                c.uuid, c.host, c.pid.unwrap_or(0), c.guest, c.source, c.age_s.unwrap_or(0)
            ),
            Some(e) => format!("numa-repin claim {} with an unreadable owner ({e})", c.uuid),
        });
    }
    if !f.unreadable_guests.is_empty() {
        o.warnings.push(format!(
            "guests whose XML could not be read: {}",
            f.unreadable_guests.join("; ")
        ));
    }
    o.facts = Some(serde_json::json!({ "numa": f }));
    Ok(o)
}
