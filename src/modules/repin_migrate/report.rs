//! What a result says: the placement in words, the common fields, the diff, and the report of
//! a failed migration.

use super::args::{Args, TimeoutAction};
use super::monitor::JobFigures;
use super::plan::old_pins;
use super::prepare::{cleanup_disks, Disk};
use super::source::{Hosts, SourceGuest};
use crate::ansible::{Failure, Outcome};
use crate::fit::Placement;
use crate::io::libvirt;
use crate::io::presence::Presence;
use crate::io::ssh::Ssh;
use crate::model::domain::Guest;
use serde_json::{json, Value};
use std::time::Duration;

pub(super) fn diff_value(before: &str, after: &str, header: &str) -> Value {
    json!({"before": before, "after": after, "before_header": format!("{header} (before)"), "after_header": format!("{header} (after)")})
}

pub(super) fn placement_msg(p: &Placement) -> String {
    p.cells
        .iter()
        .map(|c| {
            let pins: Vec<String> = c
                .vcpu_pins
                .iter()
                .map(|(v, p)| format!("{v}->{p}"))
                .collect();
            format!(
                "guest cell {} -> host cell {} [{}]",
                c.guest_cell,
                c.host_cell,
                pins.join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn base_fields(
    o: &mut Outcome,
    uuid: &str,
    source_host: &str,
    dest_host: &str,
    dest_node: &str,
    p: &Placement,
) {
    o.set("instance_uuid", uuid);
    o.set("source_host", source_host);
    o.set("dest_host", dest_host);
    o.set("dest_node", dest_node);
    o.set("placement", p);
}

/// The failure of a migration call: where the guest is now (each host asked, over a new
/// connection if the old one broke; one that cannot be asked is said to be so, never
/// "absent"), whether the source kept its old pins, what this run created on the destination
/// removed again, and what to do.
#[allow(clippy::too_many_arguments)] // the run's parts, each reported
pub(super) fn migration_failed(
    a: &Args,
    h: &Hosts,
    sg: &SourceGuest,
    err: &str,
    figs: &JobFigures,
    total_ms: u64,
    ssh: Option<&Ssh>,
    disks: &[Disk],
) -> Failure {
    let g = &sg.guest;
    let mut notes = Vec::new();
    if figs.paused_source {
        if let Ok(d) = h.src.lookup(&g.uuid) {
            if d.resume().is_ok() {
                notes.push(
                    "resumed the guest on the source (force_complete had paused it)".to_string(),
                );
            }
        }
    }
    let settle = Duration::from_secs(15);
    let dst_now = Presence::settled(&h.dst, &h.dest_uri, &g.uuid, settle);
    let src_now = Presence::settled(&h.src, &h.source_uri, &g.uuid, settle);
    let pins_unchanged = match &src_now {
        Presence::Defined { dom, .. } => libvirt::guest_of(dom)
            .ok()
            .map(|now| now.vcpu_pins == g.vcpu_pins && now.emulator_pins == g.emulator_pins),
        _ => None,
    };
    let removed = ssh.map(|s| cleanup_disks(s, disks)).unwrap_or_default();
    let state_msg = where_it_is(h, g, &src_now, &dst_now, pins_unchanged);
    let timeout = figs
        .timeout
        .as_ref()
        .map(|t| {
            format!(
                " after {t} ({})",
                figs.action_taken.clone().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    let hint = failure_hint(a, err, figs);
    Failure::new(format!(
        "migration of {} to {} failed{timeout}: {err}; {state_msg}; {hint}",
        g.name, h.dest_host
    ))
    .with("instance_uuid", &g.uuid)
    .with("guest", &g.name)
    .with("source_host", &h.source_host)
    .with("dest_host", &h.dest_host)
    .with("guest_on_source", src_now.running())
    .with("source_state", src_now.label())
    .with("dest_state", dst_now.label())
    .with("source_pins_unchanged", pins_unchanged)
    .with("running_on_destination", dst_now.running())
    .with("old_pins", old_pins(g))
    .with(
        "migration",
        json!({"total_time_ms": total_ms, "monitor": figs}),
    )
    .with("removed_on_destination", removed)
    .with("notes", notes)
}

/// Where the guest is after a failed call, in words.
fn where_it_is(
    h: &Hosts,
    g: &Guest,
    src_now: &Presence,
    dst_now: &Presence,
    pins_unchanged: Option<bool>,
) -> String {
    let (src_label, dst_label) = (src_now.label(), dst_now.label());
    let (source_host, dest_host) = (&h.source_host, &h.dest_host);
    match (src_now.running(), dst_now.running()) {
        // Running (not paused inside the migration) on the source with its old pins: the
        // migration did not hand over, whatever the destination could say.
        (Some(true), on_dest @ (Some(false) | None)) if pins_unchanged == Some(true) => format!(
            "{} keeps running on {source_host} with its old pinning (checked){}",
            g.name,
            if on_dest.is_none() {
                format!("; on {dest_host}: {dst_label} (its libvirtd removes a half-arrived copy when it is back)")
            } else {
                String::new()
            }
        ),
        // The destination runs it although libvirt reported an error (a daemon died near the
        // end). Not settled yet: a daemon restarting may still resume or remove a copy, so the
        // source's definition is left alone here; the rerun removes it once both answer.
        (Some(false) | None, Some(true)) => format!(
            "{} runs on {dest_host} by its libvirtd now, and on {source_host} it is {src_label}; rerun once both libvirtds answer: the rerun verifies where it runs, removes a stale definition the source kept, and records it",
            g.name
        ),
        _ => format!(
            "CHECK BY HAND: {} on {source_host}: {src_label}, old pins kept: {}; on {dest_host}: {dst_label}",
            g.name,
            pins_unchanged.map(|b| b.to_string()).unwrap_or("unknown".into())
        ),
    }
}

/// What to change before a rerun, from how the migration failed.
fn failure_hint(a: &Args, err: &str, figs: &JobFigures) -> String {
    if figs.timeout.is_some() {
        let mut h = vec!["raise completion_timeout_s/progress_timeout_s or bandwidth_mibps"];
        if !a.auto_converge {
            h.push("set auto_converge");
        }
        if !(a.post_copy && a.timeout_action == TimeoutAction::ForceComplete) {
            h.push("use timeout_action force_complete (with post_copy for no pause)");
        }
        return format!("{}, or migrate when the guest is less busy", h.join(", "));
    }
    let unreachable = ["connect", "address", "refused", "route"]
        .iter()
        .any(|w| err.contains(w));
    if a.migrate_uri.is_some() && unreachable {
        "check migrate_uri: the destination must listen on that address (Nova's live_migration_inbound_addr) and the source must reach it".into()
    } else {
        "check that libvirtd runs on both hosts and that they reach each other, then rerun".into()
    }
}
