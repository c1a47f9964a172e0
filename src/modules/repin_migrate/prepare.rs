use super::args::Args;
use super::lv;
use crate::ansible::Failure;
use crate::io::libvirt::{consts, Domain, Host};
use crate::io::ssh::{quote, Ssh};
use crate::model::domain;
use crate::model::rewrite;
use anyhow::{anyhow, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// CPU model check.

pub(super) fn cpu_check(src: &Host, dst: &Host, xml: &str) -> Result<Value> {
    let cpu = domain::guest_cpu(xml).map_err(|e| anyhow!("{e}"))?;
    if cpu.tcg {
        return Ok(
            json!({"checked": false, "reason": "TCG guest (domain type qemu): QEMU emulates the CPU model, the destination's host CPU does not matter"}),
        );
    }
    let mode = cpu.mode.as_str();
    let cpu_xml = match mode {
        "custom" => cpu.element.ok_or_else(|| anyhow!("cannot extract <cpu>"))?,
        "host-model" | "host-passthrough" | "maximum" => {
            let caps = src.capabilities_xml()?;
            rewrite::host_cpu_element(&caps)
                .ok_or_else(|| anyhow!("source capabilities have no <host><cpu>"))?
        }
        _ => {
            return Ok(
                json!({"checked": false, "reason": "the guest names no CPU model (hypervisor default): nothing to compare"}),
            )
        }
    };
    match dst.compare_cpu(&cpu_xml, 0) {
        Ok(r) if r == consts::VIR_CPU_COMPARE_INCOMPATIBLE => Err(Failure::new(format!(
            "the guest's CPU (mode {mode}) is not compatible with the destination's CPU; nothing was changed. Give the guests a common model (nova.conf cpu_mode=custom, cpu_model=...) or choose another destination"
        ))
        .into()),
        Ok(r) => Ok(json!({"checked": true, "mode": mode, "result": if r == consts::VIR_CPU_COMPARE_IDENTICAL { "identical" } else { "superset" }})),
        Err(e) => Ok(json!({"checked": false, "mode": mode, "reason": format!("libvirt could not compare: {}", lv(e))})),
    }
}

// ---------------------------------------------------------------------------------------------
// Block migration: disks and destination preparation.

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub target: String,
    pub path: String,
    pub format: String,
    pub capacity_bytes: u64,
    /// Where it goes on the destination, as seen over SSH.
    pub dest_path: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
}

pub(super) fn local_disks(dom: &Domain, xml: &str) -> Result<Vec<Disk>> {
    let mut out = Vec::new();
    for d in domain::file_disks(xml).map_err(|e| anyhow!("{e}"))? {
        let (target, path) = (d.target, d.path);
        if d.backing {
            return Err(Failure::new(format!(
                "disk {target} ({path}) has a backing file; block migration of backing chains is not supported here (Nova copies the base image first): nothing was changed"
            ))
            .into());
        }
        let info = dom
            .block_info(&target, 0)
            .map_err(|e| anyhow!("cannot read the size of disk {target}: {}", lv(e)))?;
        out.push(Disk {
            target,
            path,
            format: d.format,
            capacity_bytes: info.capacity,
            dest_path: String::new(),
            created: false,
        });
    }
    Ok(out)
}

pub(super) fn ssh_connect(a: &Args) -> Result<Ssh> {
    let host = a.ssh_host.as_deref().ok_or_else(|| Failure::new("storage block needs ssh_host (the destination's sshd, Kolla nova_ssh) to prepare its disks".to_string()))?;
    let key = a.ssh_key.as_deref().ok_or_else(|| {
        Failure::new(
            "storage block needs ssh_key (private key accepted by the destination's sshd)"
                .to_string(),
        )
    })?;
    Ssh::connect(
        host,
        a.ssh_port,
        &a.ssh_user,
        key,
        a.ssh_known_hosts.as_deref(),
        Duration::from_secs(20),
    )
}

/// Nova's pre_live_migration for a block migration: instance dir and empty disks of the same
/// virtual size and format. Existing files of the right size are kept (rerun after a failure).
pub(super) fn prepare_disks(
    ssh: &Ssh,
    disks: &mut [Disk],
    instance_dir: Option<&str>,
    uuid: &str,
) -> Result<()> {
    for d in disks.iter_mut() {
        let file = Path::new(&d.path)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "disk".into());
        let dir = match instance_dir {
            Some(i) => i.replace("{uuid}", uuid),
            None => Path::new(&d.path)
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "/".into()),
        };
        d.dest_path = format!("{}/{}", dir.trim_end_matches('/'), file);
        let qd = quote(&d.dest_path);
        ssh.run(&format!("mkdir -p {}", quote(&dir)))?;
        let exists = ssh.exec(&format!("test -e {qd}"))?.status == 0;
        if exists {
            let info = ssh.run(&format!("qemu-img info --output=json -U {qd}"))?;
            let v: Value = serde_json::from_str(&info).unwrap_or(Value::Null);
            let size = v["virtual-size"].as_u64().unwrap_or(0);
            let fmt = v["format"].as_str().unwrap_or("");
            if size != d.capacity_bytes || fmt != d.format {
                return Err(Failure::new(format!(
                    "{} already exists on the destination as {fmt} of {size} bytes, the guest's disk {} is {} of {} bytes; remove it (or check it is not another guest's) and rerun: nothing was migrated",
                    d.dest_path, d.target, d.format, d.capacity_bytes
                ))
                .into());
            }
            continue;
        }
        ssh.run(&format!(
            "qemu-img create -q -f {} {qd} {}",
            quote(&d.format),
            d.capacity_bytes
        ))?;
        d.created = true;
    }
    Ok(())
}

pub(super) fn cleanup_disks(ssh: &Ssh, disks: &[Disk]) -> Vec<String> {
    let mut removed = Vec::new();
    for d in disks.iter().filter(|d| d.created) {
        if ssh
            .exec(&format!("rm -f {}", quote(&d.dest_path)))
            .map(|o| o.status == 0)
            .unwrap_or(false)
        {
            removed.push(d.dest_path.clone());
        }
    }
    removed
}
