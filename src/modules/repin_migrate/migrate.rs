//! Mode `migrate`, top-down: the hosts and the guest are read; a guest already moved is
//! verified where it is (a rerun); otherwise the destination is claimed, the move planned on
//! its live state, the destination prepared, the guest migrated under the monitor, and the
//! result verified. Every exit releases the claim (explicitly, or by its Drop).

use super::args::{Args, Storage};
use super::claim::{release_claim, take_claim};
use super::lv;
use super::monitor::{downtime_steps, monitor, JobFigures, MonitorCfg};
use super::plan::{current_valid, old_pins, plan_move, MovePlan};
use super::prepare::{cleanup_disks, cpu_check, prepare_disks, ssh_connect};
use super::report::{base_fields, migration_failed, placement_msg};
use super::source::{read_source, Hosts, SourceGuest};
use super::verify;
use crate::ansible::{Context, Failure, Outcome};
use crate::facts;
use crate::fit::GuestTopology;
use crate::io::libvirt::{self, consts, MigrateParameters};
use crate::io::presence::{self, Presence, Stale};
use crate::io::ssh::Ssh;
use crate::model::domain::Guest;
use crate::model::rewrite;
use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(super) fn migrate(a: &Args, ctx: &Context) -> Result<Outcome> {
    let h = Hosts::connect(a)?;
    let source = read_source(&h.src, &a.guest)?;
    let sg = match source {
        Some(sg) if running_here(&h, &sg) => sg,
        other => return already_moved(a, ctx, &h, other.as_ref()),
    };
    let g = &sg.guest;
    refuse_if_on_destination(a, &h, &sg)?;
    let topo = GuestTopology::from_guest(g, a.thread_policy);
    let cpu = cpu_check(&h.src, &h.dst, &sg.live_xml)?;

    // The claim: exclusive per destination, in its libvirtd, held to the end of this function
    // (released explicitly at the end, by Drop on every early return). None in check mode.
    let claim = match ctx.check_mode {
        true => None,
        false => Some(take_claim(&h.dst, a, &g.name, "migrate")?),
    };
    let claim_rep = claim.as_ref().map(|c| c.report());
    let mut plan = plan_move(a, &h, &sg, &topo, &claim_rep)?;

    let mut o = planned(a, &h, &sg, &plan, &cpu);
    if ctx.check_mode {
        o.msg = format!(
            "would migrate {} from {} to {}: {}",
            g.name,
            h.source_host,
            h.dest_host,
            placement_msg(&plan.placement)
        );
        o.set("dest_xml", &plan.dest_xml);
        o.set("xml_diff", rewrite::line_diff(&sg.live_xml, &plan.dest_xml));
        o.set("disks", &plan.disks);
        return Ok(o);
    }
    o.set("claim", &claim_rep);

    let ssh = prepare_destination(a, &sg, &mut plan, &mut o)?;
    let run = execute(a, &h, &sg, &plan);
    if let Err(e) = run.result {
        let f = migration_failed(
            a,
            &h,
            &sg,
            &e,
            &run.figures,
            run.total_ms,
            ssh.as_ref(),
            &plan.disks,
        );
        return Err(f.with("claim", &claim_rep).into());
    }
    o.set("migration", arrived(&h, &sg, &run)?);

    verified(a, &h, g, &plan, run.total_ms, &mut o);
    release_claim(&mut o, claim);
    Ok(o)
}

/// The result's fields once the move is planned (check mode stops there).
fn planned(a: &Args, h: &Hosts, sg: &SourceGuest, plan: &MovePlan, cpu: &Value) -> Outcome {
    let g = &sg.guest;
    let mut o = Outcome::new(true, String::new());
    base_fields(
        &mut o,
        &g.uuid,
        &h.source_host,
        &h.dest_host,
        &h.dest_node,
        &plan.placement,
    );
    o.set("guest", &g.name);
    o.set("old_pins", old_pins(g));
    o.set("cpu_check", cpu);
    o.set("storage", a.storage);
    o.diff = Some(plan.diff.clone());
    o
}

/// The check after the move ([`verify::after_migration`]) and the result's message.
fn verified(a: &Args, h: &Hosts, g: &Guest, plan: &MovePlan, total_ms: u64, o: &mut Outcome) {
    let (record, checked) = verify::after_migration(
        a,
        &h.src,
        &h.dst,
        &h.dest_uri,
        &h.dest_host,
        g,
        &plan.placement,
    )
    .finish();
    o.set("verify", record);
    match checked {
        Ok(()) => {
            o.msg = format!(
                "migrated {} from {} to {} in {total_ms} ms: {}",
                g.name,
                h.source_host,
                h.dest_host,
                placement_msg(&plan.placement)
            )
        }
        Err(why) => {
            o.failed = true;
            o.msg = format!("{} migrated to {} but the check after failed: {why}; the guest runs on {}: fix its pins with mode: repin there", g.name, h.dest_host, h.dest_host);
        }
    }
}

/// Is the source's copy the one that runs? Not when it is shut off, nor when it is still
/// paused inside a migration while the destination runs the guest: then the handover completed
/// but its Confirm step never ran (the source's libvirtd died), and the guest is the
/// destination's.
fn running_here(h: &Hosts, sg: &SourceGuest) -> bool {
    if !sg.dom.is_active().unwrap_or(false) {
        return false;
    }
    let handed_over =
        matches!(
            Presence::of(&h.src, &h.source_uri, &sg.guest.uuid),
            Presence::Defined {
                migrating: true,
                ..
            }
        ) && Presence::settled(&h.dst, &h.dest_uri, &sg.guest.uuid, Duration::from_secs(15))
            .running()
            == Some(true);
    !handed_over
}

/// A rerun: the guest does not run on the source. If it runs on the destination, check its
/// placement there and remove a copy the source kept (one host per guest); else fail.
fn already_moved(a: &Args, ctx: &Context, h: &Hosts, sg: Option<&SourceGuest>) -> Result<Outcome> {
    // By uuid when the source still has a definition: the name may differ.
    let key = sg.map(|s| s.guest.uuid.clone()).unwrap_or(a.guest.clone());
    let ddom = h.dst.find(&key).map_err(|e| {
        Failure::new(format!("{} is not running on {}, and the destination's libvirtd cannot be asked whether it runs there: {}; nothing was changed", a.guest, a.source_uri, lv(e)))
    })?;
    let Some(ddom) = ddom.filter(|d| d.is_active().unwrap_or(false)) else {
        return Err(match sg {
            Some(_) => Failure::new(format!("{} is not running on {}; live migration needs a running guest (start it, or move a stopped guest offline)", a.guest, a.source_uri)),
            None => Failure::new(format!("no guest named or with uuid '{}' on {} nor running on {}", a.guest, a.source_uri, h.dest_uri)),
        }
        .into());
    };
    let f = facts::gather_live(&h.dest_uri, a.dest_nova_conf.as_deref(), Some(&h.dest_host))?;
    let g = libvirt::guest_of(&ddom)?;
    let (_, p, valid) = current_valid(&f, &g, a.thread_policy);
    let stale = presence::remove_stale_copy(&h.src, &a.source_uri, &g.uuid, ctx.check_mode);
    let note = stale
        .note(&g.name, &h.source_host)
        .map(|n| format!("; {n}"))
        .unwrap_or_default();
    let mut o = Outcome::new(
        matches!(stale, Stale::Removed(_) | Stale::WouldRemove(_)),
        format!(
            "{} already runs on {} with a valid placement: {}{note}",
            g.name,
            h.dest_host,
            placement_msg(&p)
        ),
    );
    base_fields(
        &mut o,
        &g.uuid,
        &h.source_host,
        &h.dest_host,
        &h.dest_node,
        &p,
    );
    o.set("guest", &g.name);
    o.set("stale_source_copy", stale.to_json());
    if let Err(why) = valid {
        o.failed = true;
        o.msg = format!("{} already runs on {} but its placement is not valid there ({why}); fix it with mode: repin on {}{note}", g.name, h.dest_host, h.dest_uri);
    } else if !stale.ok() {
        o.failed = true;
    }
    Ok(o)
}

/// The guest must not already run on the destination, and the destination must answer.
fn refuse_if_on_destination(a: &Args, h: &Hosts, sg: &SourceGuest) -> Result<()> {
    let g = &sg.guest;
    match Presence::of(&h.dst, &h.dest_uri, &g.uuid) {
        Presence::Defined { active: true, .. } => Err(Failure::new(format!(
            "{} runs on both {} and {}; resolve that by hand first (destroy the stale copy)",
            g.name, a.source_uri, h.dest_uri
        ))
        .into()),
        Presence::Unknown(why) => Err(Failure::new(format!(
            "cannot ask the destination's libvirtd whether {} is there: {why}; nothing was changed",
            g.name
        ))
        .into()),
        _ => Ok(()),
    }
}

/// Block migration: the destination's instance directory and empty disks, over SSH (Nova's
/// `pre_live_migration`); what this run created is removed again if it fails.
fn prepare_destination(
    a: &Args,
    sg: &SourceGuest,
    plan: &mut MovePlan,
    o: &mut Outcome,
) -> Result<Option<Ssh>> {
    let ssh = if a.storage == Storage::Block && !plan.disks.is_empty() {
        let s = ssh_connect(a)?;
        prepare_disks(
            &s,
            &mut plan.disks,
            a.instance_dir.as_deref(),
            &sg.guest.uuid,
        )
        .map_err(|e| {
            let removed = cleanup_disks(&s, &plan.disks);
            match e.downcast::<Failure>() {
                Ok(f) => anyhow::Error::new(f.with("removed_on_destination", &removed)),
                Err(e) => anyhow::Error::new(
                    Failure::new(format!(
                        "preparing the destination over SSH failed: {e:#}; nothing was migrated"
                    ))
                    .with("removed_on_destination", &removed),
                ),
            }
        })?;
        o.set("ssh_host_key_sha256", &s.host_key_sha256);
        Some(s)
    } else {
        None
    };
    o.set("disks", &plan.disks);
    Ok(ssh)
}

/// One migration call and what the monitor saw of it.
struct Run {
    result: Result<(), String>,
    figures: JobFigures,
    total_ms: u64,
    started_unix_ms: u64,
    flags: u32,
}

/// `virDomainMigrateToURI3`, peer to peer, with the rewritten XML, while the monitor thread
/// applies Nova's downtime steps and the stall and completion timeouts.
fn execute(a: &Args, h: &Hosts, sg: &SourceGuest, plan: &MovePlan) -> Run {
    let block = a.storage == Storage::Block && !plan.disks.is_empty();
    let flags = migrate_flags(a, block, sg.persistent);
    let params = MigrateParameters {
        dest_xml: Some(plan.dest_xml.clone()),
        persist_xml: sg.persistent.then(|| plan.persist_xml.clone()),
        uri: a.migrate_uri.clone(),
        bandwidth: (a.bandwidth_mibps > 0).then_some(a.bandwidth_mibps),
        migrate_disks: match block {
            true => plan.disks.iter().map(|d| d.target.clone()).collect(),
            false => Vec::new(),
        },
    };
    let cfg = MonitorCfg {
        progress_file: a.progress_file.clone(),
        steps: downtime_steps(
            a.max_downtime_ms,
            a.downtime_steps,
            a.downtime_delay_s,
            plan.data_gib,
        ),
        completion_timeout_s: a
            .completion_timeout_s
            .unwrap_or((800.0 * plan.data_gib) as u64),
        progress_timeout_s: a.progress_timeout_s,
        action: a.timeout_action,
        post_copy: a.post_copy,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let figs = Arc::new(Mutex::new(JobFigures::default()));
    let mon = {
        let (u, id, s, f) = (
            a.source_uri.clone(),
            sg.guest.uuid.clone(),
            stop.clone(),
            figs.clone(),
        );
        std::thread::spawn(move || monitor(u, id, cfg, s, f))
    };
    let t0 = Instant::now();
    let started_unix_ms = unix_ms();
    let result = sg
        .dom
        .migrate_to_uri3(Some(&h.dest_uri), params, flags)
        .map_err(lv);
    let total_ms = t0.elapsed().as_millis() as u64;
    stop.store(true, Ordering::SeqCst);
    mon.thread().unpark();
    let _ = mon.join();
    let figures = figs.lock().map(|f| f.clone()).unwrap_or_default();
    Run {
        result,
        figures,
        total_ms,
        started_unix_ms,
        flags,
    }
}

fn migrate_flags(a: &Args, block: bool, persistent: bool) -> u32 {
    let mut flags = consts::VIR_MIGRATE_LIVE
        | consts::VIR_MIGRATE_PEER2PEER
        | consts::VIR_MIGRATE_PERSIST_DEST
        | consts::VIR_MIGRATE_ABORT_ON_ERROR;
    if persistent {
        flags |= consts::VIR_MIGRATE_UNDEFINE_SOURCE;
    }
    if a.auto_converge {
        flags |= consts::VIR_MIGRATE_AUTO_CONVERGE;
    }
    if a.post_copy {
        flags |= consts::VIR_MIGRATE_POSTCOPY;
    }
    if block {
        flags |= consts::VIR_MIGRATE_NON_SHARED_DISK;
    }
    flags
}

/// After a successful call: the guest must be defined on the destination (resumed if
/// force_complete paused it); the result's `migration` figures, from the completed job's
/// statistics the destination keeps, else from the monitor.
fn arrived(h: &Hosts, sg: &SourceGuest, run: &Run) -> Result<Value> {
    let g = &sg.guest;
    let ddom = match Presence::of(&h.dst, &h.dest_uri, &g.uuid) {
        Presence::Defined { dom, .. } => dom,
        Presence::Absent => return Err(anyhow!(
            "the migration returned success but {} has no {}; CHECK BY HAND where it runs (virsh list --all on both hosts)",
            h.dest_uri, g.name
        )),
        Presence::Unknown(why) => return Err(anyhow!(
            "the migration returned success but the destination's libvirtd cannot be asked about {} ({why}); CHECK BY HAND where it runs (virsh list --all on both hosts), then rerun: a rerun verifies and removes a stale copy",
            g.name
        )),
    };
    let figs = &run.figures;
    if figs.paused_source {
        // force_complete paused the guest: it must run on the destination.
        if let Ok((libvirt::DomainState::Paused, _)) = ddom.state() {
            let _ = ddom.resume();
        }
    }
    let done = ddom.job_stats(consts::VIR_DOMAIN_JOB_STATS_COMPLETED).ok();
    let done = done.as_ref();
    Ok(json!({
        "total_time_ms": run.total_ms,
        // Wall-clock start, so that migrations run at the same time (a drain's wave) can be told apart.
        "started_unix_ms": run.started_unix_ms,
        "job_time_ms": done.and_then(|d| d.time_elapsed).unwrap_or(figs.elapsed_ms),
        "downtime_ms": done.and_then(|d| d.downtime),
        "data_total_bytes": done.and_then(|d| d.data_total).unwrap_or(figs.data_total_bytes),
        "data_processed_bytes": done.and_then(|d| d.data_processed).unwrap_or(figs.data_processed_bytes),
        "memory_iterations": done.and_then(|d| d.mem_iteration).unwrap_or(figs.memory_iterations).max(figs.memory_iterations),
        "disk_processed_bytes": done.and_then(|d| d.disk_processed),
        "monitor": figs,
        "flags": run.flags,
    }))
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
