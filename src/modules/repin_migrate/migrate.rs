use super::args::{Args, Storage};
use super::claim::{release_claim, take_claim};
use super::monitor::{downtime_steps, monitor, JobFigures, MonitorCfg};
use super::plan::{current_valid, old_pins};
use super::prepare::{cleanup_disks, cpu_check, local_disks, prepare_disks, ssh_connect};
use super::report::{base_fields, diff_value, migration_failed, placement_msg};
use super::source::{conf_host, read_source};
use super::verify::verify_after;
use super::{lv, M};
use crate::ansible::{Context, Failure, Outcome};
use crate::facts::{self};
use crate::fit::{self, FitOptions, GuestTopology};
use crate::io::libvirt::{self, consts, MigrateParameters};
use crate::io::presence::{self, Presence, Stale};
use crate::model::rewrite;
use anyhow::{anyhow, Result};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(super) fn migrate(a: &Args, ctx: &Context) -> Result<Outcome> {
    let dest_uri = a.dest_uri.clone().unwrap_or_default();
    let src = libvirt::connect(&a.source_uri)?;
    let dst = libvirt::connect(&dest_uri)?;
    let source_host = a
        .source_host
        .clone()
        .or_else(|| conf_host(a.source_nova_conf.as_deref()))
        .unwrap_or_else(|| src.hostname());
    let dest_host = a
        .dest_host
        .clone()
        .or_else(|| conf_host(a.dest_nova_conf.as_deref()))
        .unwrap_or_else(|| dst.hostname());
    let dest_node = a.dest_node.clone().unwrap_or_else(|| dest_host.clone());

    let sg = read_source(&src, &a.guest)?;
    let on_source_active = sg
        .as_ref()
        .is_some_and(|s| s.dom.is_active().unwrap_or(false));
    // A source copy still paused inside a migration while the destination runs the guest: the
    // handover completed but its Confirm step never ran (the source's libvirtd died). The
    // guest is the destination's; the path below removes the source's copy.
    let handed_over = on_source_active
        && sg.as_ref().is_some_and(|s| {
            matches!(
                Presence::of(&src, &a.source_uri, &s.guest.uuid),
                Presence::Defined {
                    migrating: true,
                    ..
                }
            ) && Presence::settled(&dst, &dest_uri, &s.guest.uuid, Duration::from_secs(15))
                .running()
                == Some(true)
        });
    if !on_source_active || handed_over {
        // Idempotency: already on the destination with a valid placement? (By uuid when the
        // source still has a definition: the name may differ.)
        let key = sg
            .as_ref()
            .map(|s| s.guest.uuid.clone())
            .unwrap_or(a.guest.clone());
        let ddom = dst.find(&key).map_err(|e| {
            Failure::new(format!("{M}: {} is not running on {}, and the destination's libvirtd cannot be asked whether it runs there: {}; nothing was changed", a.guest, a.source_uri, lv(e)))
        })?;
        if let Some(ddom) = ddom.filter(|d| d.is_active().unwrap_or(false)) {
            let f = facts::gather_live(&dest_uri, a.dest_nova_conf.as_deref(), Some(&dest_host))?;
            let g = libvirt::guest_of(&ddom)?;
            let (_, p, valid) = current_valid(&f, &g, a.thread_policy);
            // One host per guest: a definition the source kept is a stale copy.
            let stale = presence::remove_stale_copy(&src, &a.source_uri, &g.uuid, ctx.check_mode);
            let note = stale.note(&g.name, &source_host);
            let mut o = Outcome::new(
                matches!(stale, Stale::Removed(_) | Stale::WouldRemove(_)),
                format!(
                    "{} already runs on {dest_host} with a valid placement: {}{}",
                    g.name,
                    placement_msg(&p),
                    note.as_ref().map(|n| format!("; {n}")).unwrap_or_default()
                ),
            );
            base_fields(&mut o, &g.uuid, &source_host, &dest_host, &dest_node, &p);
            o.set("guest", &g.name);
            o.set("stale_source_copy", stale.to_json());
            if let Err(why) = valid {
                o.failed = true;
                o.msg = format!("{} already runs on {dest_host} but its placement is not valid there ({why}); fix it with mode: repin on {dest_uri}{}", g.name, note.as_ref().map(|n| format!("; {n}")).unwrap_or_default());
            } else if !stale.ok() {
                o.failed = true;
            }
            return Ok(o);
        }
        return Err(match sg {
            Some(_) => Failure::new(format!("{M}: {} is not running on {}; live migration needs a running guest (start it, or move a stopped guest offline)", a.guest, a.source_uri)),
            None => Failure::new(format!("{M}: no guest named or with uuid '{}' on {} nor running on {dest_uri}", a.guest, a.source_uri)),
        }
        .into());
    }
    let sg = sg.expect("checked above");
    let g = &sg.guest;
    match Presence::of(&dst, &dest_uri, &g.uuid) {
        Presence::Defined { active: true, .. } => {
            return Err(Failure::new(format!("{M}: {} runs on both {} and {dest_uri}; resolve that by hand first (destroy the stale copy)", g.name, a.source_uri)).into());
        }
        Presence::Unknown(why) => {
            return Err(Failure::new(format!("{M}: cannot ask the destination's libvirtd whether {} is there: {why}; nothing was changed", g.name)).into());
        }
        _ => {}
    }
    let topo = GuestTopology::from_guest(g, a.thread_policy);
    let cpu = cpu_check(&src, &dst, &sg.live_xml)?;

    // The claim: exclusive per destination, in its libvirtd, held to the end of this function
    // (released explicitly at the end, by Drop on every early return). None in check mode.
    let claim = if ctx.check_mode {
        None
    } else {
        Some(take_claim(&dst, a, &g.name, "migrate")?)
    };
    let claim_rep = claim.as_ref().map(|c| c.report());
    // The destination's live state, read under the claim.
    let dfacts = facts::gather_live(&dest_uri, a.dest_nova_conf.as_deref(), Some(&dest_host))?;
    let state = dfacts.host_state(Some(&g.uuid));
    let placement = match fit::fit_topology(&state, &topo, &FitOptions::default()) {
        Ok(p) => p,
        Err(r) => {
            return Err(Failure::new(r.msg.clone())
                .with("reasons", &r.reasons)
                .with("instance_uuid", &g.uuid)
                .with("guest", &g.name)
                .with("dest_host", &dest_host)
                .with("guest_on_source", true)
                .with("claim", &claim_rep)
                .with("hint", format!("nothing was changed: {} keeps running on {source_host} with its pins; choose another destination or free pCPUs/memory on {dest_host}", g.name))
                .into());
        }
    };
    let dest_xml = rewrite::rewrite(&sg.live_xml, &placement).map_err(|e| {
        Failure::new(format!(
            "{M}: cannot rewrite the guest XML: {e}; nothing was changed"
        ))
    })?;
    let persist_xml = rewrite::rewrite(&sg.inactive_xml, &placement).map_err(|e| {
        Failure::new(format!(
            "{M}: cannot rewrite the persistent XML: {e}; nothing was changed"
        ))
    })?;
    let diff = diff_value(
        &sg.live_xml,
        &dest_xml,
        &format!("{} on {source_host} -> {dest_host}", g.name),
    );
    let data_gib = (g.memory_mb as f64 / 1024.0).max(2.0);

    let mut disks = match a.storage {
        Storage::Block => local_disks(&sg.dom, &sg.live_xml)?,
        Storage::Shared => Vec::new(),
    };
    let disk_gib: f64 = disks
        .iter()
        .map(|d| d.capacity_bytes as f64 / (1u64 << 30) as f64)
        .sum();
    let data_gib = data_gib + disk_gib;

    let mut o = Outcome::new(true, String::new());
    base_fields(
        &mut o,
        &g.uuid,
        &source_host,
        &dest_host,
        &dest_node,
        &placement,
    );
    o.set("guest", &g.name);
    o.set("old_pins", old_pins(g));
    o.set("cpu_check", &cpu);
    o.set("storage", a.storage);
    o.diff = Some(diff);
    if ctx.check_mode {
        o.msg = format!(
            "would migrate {} from {source_host} to {dest_host}: {}",
            g.name,
            placement_msg(&placement)
        );
        o.set("dest_xml", &dest_xml);
        o.set("xml_diff", rewrite::line_diff(&sg.live_xml, &dest_xml));
        o.set("disks", &disks);
        return Ok(o);
    }
    o.set("claim", &claim_rep);

    // Block migration: prepare the destination.
    let ssh = if a.storage == Storage::Block && !disks.is_empty() {
        let s = ssh_connect(a)?;
        prepare_disks(&s, &mut disks, a.instance_dir.as_deref(), &g.uuid).map_err(|e| {
            let removed = cleanup_disks(&s, &disks);
            match e.downcast::<Failure>() {
                Ok(f) => anyhow::Error::new(f.with("removed_on_destination", &removed)),
                Err(e) => anyhow::Error::new(Failure::new(format!("{M}: preparing the destination over SSH failed: {e:#}; nothing was migrated")).with("removed_on_destination", &removed)),
            }
        })?;
        o.set("ssh_host_key_sha256", &s.host_key_sha256);
        Some(s)
    } else {
        None
    };
    o.set("disks", &disks);

    // Migrate.
    let mut flags = consts::VIR_MIGRATE_LIVE
        | consts::VIR_MIGRATE_PEER2PEER
        | consts::VIR_MIGRATE_PERSIST_DEST
        | consts::VIR_MIGRATE_UNDEFINE_SOURCE
        | consts::VIR_MIGRATE_ABORT_ON_ERROR;
    if a.auto_converge {
        flags |= consts::VIR_MIGRATE_AUTO_CONVERGE;
    }
    if a.post_copy {
        flags |= consts::VIR_MIGRATE_POSTCOPY;
    }
    if a.storage == Storage::Block && !disks.is_empty() {
        flags |= consts::VIR_MIGRATE_NON_SHARED_DISK;
    }
    if !sg.persistent {
        flags &= !consts::VIR_MIGRATE_UNDEFINE_SOURCE;
    }
    let params = MigrateParameters {
        dest_xml: Some(dest_xml.clone()),
        persist_xml: sg.persistent.then(|| persist_xml.clone()),
        uri: a.migrate_uri.clone(),
        bandwidth: (a.bandwidth_mibps > 0).then_some(a.bandwidth_mibps),
        migrate_disks: if flags & consts::VIR_MIGRATE_NON_SHARED_DISK != 0 {
            disks.iter().map(|d| d.target.clone()).collect()
        } else {
            Vec::new()
        },
    };
    let completion = a.completion_timeout_s.unwrap_or((800.0 * data_gib) as u64);
    let cfg = MonitorCfg {
        progress_file: a.progress_file.clone(),
        steps: downtime_steps(
            a.max_downtime_ms,
            a.downtime_steps,
            a.downtime_delay_s,
            data_gib,
        ),
        completion_timeout_s: completion,
        progress_timeout_s: a.progress_timeout_s,
        action: a.timeout_action,
        post_copy: a.post_copy,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let figs = Arc::new(Mutex::new(JobFigures::default()));
    let mon = {
        let (u, id, s, f) = (
            a.source_uri.clone(),
            g.uuid.clone(),
            stop.clone(),
            figs.clone(),
        );
        std::thread::spawn(move || monitor(u, id, cfg, s, f))
    };
    let t0 = Instant::now();
    let started_unix_ms = unix_ms();
    let res = sg.dom.migrate_to_uri3(Some(&dest_uri), params, flags);
    let total_ms = t0.elapsed().as_millis() as u64;
    stop.store(true, Ordering::SeqCst);
    mon.thread().unpark();
    let _ = mon.join();
    let figs = figs.lock().map(|f| f.clone()).unwrap_or_default();

    if let Err(e) = res {
        return Err(migration_failed(
            a,
            &src,
            &dst,
            &sg,
            &dest_host,
            &source_host,
            &lv(e),
            &figs,
            total_ms,
            ssh.as_ref(),
            &disks,
        )
        .with("claim", &claim_rep)
        .into());
    }

    // Figures: the destination keeps the completed job's statistics.
    let ddom = match Presence::of(&dst, &dest_uri, &g.uuid) {
        Presence::Defined { dom, .. } => dom,
        Presence::Absent => {
            return Err(anyhow!(
                "{M}: the migration returned success but {dest_uri} has no {}; CHECK BY HAND where it runs (virsh list --all on both hosts)",
                g.name
            ))
        }
        Presence::Unknown(why) => {
            return Err(anyhow!(
                "{M}: the migration returned success but the destination's libvirtd cannot be asked about {} ({why}); CHECK BY HAND where it runs (virsh list --all on both hosts), then rerun: a rerun verifies and removes a stale copy",
                g.name
            ))
        }
    };
    let done = ddom.job_stats(consts::VIR_DOMAIN_JOB_STATS_COMPLETED).ok();
    let mig = json!({
        "total_time_ms": total_ms,
        // Wall-clock start, so that migrations run at the same time (a drain's wave) can be told apart.
        "started_unix_ms": started_unix_ms,
        "job_time_ms": done.as_ref().and_then(|d| d.time_elapsed).unwrap_or(figs.elapsed_ms),
        "downtime_ms": done.as_ref().and_then(|d| d.downtime),
        "data_total_bytes": done.as_ref().and_then(|d| d.data_total).unwrap_or(figs.data_total_bytes),
        "data_processed_bytes": done.as_ref().and_then(|d| d.data_processed).unwrap_or(figs.data_processed_bytes),
        "memory_iterations": done.as_ref().and_then(|d| d.mem_iteration).unwrap_or(figs.memory_iterations).max(figs.memory_iterations),
        "disk_processed_bytes": done.as_ref().and_then(|d| d.disk_processed),
        "monitor": figs,
        "flags": flags,
    });
    o.set("migration", &mig);
    if figs.paused_source {
        // force_complete paused the guest: it must run on the destination.
        if let Ok((libvirt::DomainState::Paused, _)) = ddom.state() {
            let _ = ddom.resume();
        }
    }

    // Verify.
    let verify = verify_after(a, &src, &dst, &dest_uri, &dest_host, g, &placement);
    o.set("verify", &verify.0);
    if let Err(why) = verify.1 {
        o.failed = true;
        o.msg = format!("{} migrated to {dest_host} but the check after failed: {why}; the guest runs on {dest_host}: fix its pins with mode: repin there", g.name);
        release_claim(&mut o, claim);
        return Ok(o);
    }
    o.msg = format!(
        "migrated {} from {source_host} to {dest_host} in {total_ms} ms: {}",
        g.name,
        placement_msg(&placement)
    );
    release_claim(&mut o, claim);
    Ok(o)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
