use super::args::{Args, TimeoutAction};
use super::monitor::JobFigures;
use super::plan::old_pins;
use super::prepare::{cleanup_disks, Disk};
use super::source::SourceGuest;
use super::M;
use crate::ansible::{Failure, Outcome};
use crate::fit::Placement;
use crate::io::libvirt::{self, Host};
use crate::io::presence::Presence;
use crate::io::ssh::Ssh;
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

#[allow(clippy::too_many_arguments)]
pub(super) fn migration_failed(
    a: &Args,
    src: &Host,
    dst: &Host,
    sg: &SourceGuest,
    dest_host: &str,
    source_host: &str,
    err: &str,
    figs: &JobFigures,
    total_ms: u64,
    ssh: Option<&Ssh>,
    disks: &[Disk],
) -> Failure {
    let g = &sg.guest;
    // Where is the guest now, and with which pins?
    let mut notes = Vec::new();
    if figs.paused_source {
        if let Ok(d) = src.lookup(&g.uuid) {
            if d.resume().is_ok() {
                notes.push(
                    "resumed the guest on the source (force_complete had paused it)".to_string(),
                );
            }
        }
    }
    // Where is it now? Each host is asked (over a new connection if the old one broke); one that
    // cannot be asked is reported as such, never as "absent".
    let settle = Duration::from_secs(15);
    let dst_now = Presence::settled(
        dst,
        a.dest_uri.as_deref().unwrap_or_default(),
        &g.uuid,
        settle,
    );
    let src_now = Presence::settled(src, &a.source_uri, &g.uuid, settle);
    let pins_unchanged = match &src_now {
        Presence::Defined { dom, .. } => libvirt::guest_of(dom)
            .ok()
            .map(|now| now.vcpu_pins == g.vcpu_pins && now.emulator_pins == g.emulator_pins),
        _ => None,
    };
    let on_source = src_now.running();
    let on_dest = dst_now.running();
    let removed = ssh.map(|s| cleanup_disks(s, disks)).unwrap_or_default();
    let src_label = src_now.label();
    let dst_label = dst_now.label();
    let state_msg = match (on_source, on_dest) {
        // Running (not paused inside the migration) on the source with its old pins: the
        // migration did not hand over, whatever the destination could say.
        (Some(true), Some(false) | None) if pins_unchanged == Some(true) => format!(
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
    };
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
    let timeout_hint = {
        let mut h = vec!["raise completion_timeout_s/progress_timeout_s or bandwidth_mibps"];
        if !a.auto_converge {
            h.push("set auto_converge");
        }
        if !(a.post_copy && a.timeout_action == TimeoutAction::ForceComplete) {
            h.push("use timeout_action force_complete (with post_copy for no pause)");
        }
        format!("{}, or migrate when the guest is less busy", h.join(", "))
    };
    let hint = if figs.timeout.is_some() {
        timeout_hint.as_str()
    } else if a.migrate_uri.is_some()
        && (err.contains("connect")
            || err.contains("address")
            || err.contains("refused")
            || err.contains("route"))
    {
        "check migrate_uri: the destination must listen on that address (Nova's live_migration_inbound_addr) and the source must reach it"
    } else {
        "check that libvirtd runs on both hosts and that they reach each other, then rerun"
    };
    Failure::new(format!(
        "{M}: migration of {} to {dest_host} failed{timeout}: {err}; {state_msg}; {hint}",
        g.name
    ))
    .with("instance_uuid", &g.uuid)
    .with("guest", &g.name)
    .with("source_host", source_host)
    .with("dest_host", dest_host)
    .with("guest_on_source", on_source)
    .with("source_state", &src_label)
    .with("dest_state", &dst_label)
    .with("source_pins_unchanged", pins_unchanged)
    .with("running_on_destination", on_dest)
    .with("old_pins", old_pins(g))
    .with(
        "migration",
        json!({"total_time_ms": total_ms, "monitor": figs}),
    )
    .with("removed_on_destination", removed)
    .with("notes", notes)
}
