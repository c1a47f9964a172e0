//! The check after a move, shared by both modes: the guest's definitions, the live pins libvirt
//! reports, the threads' real affinity and the host's other guests, each against the plan.
//! A migration adds where the guest is (one host only, a stale source copy removed).

use super::affinity::{local_affinity, Affinity};
use super::args::Args;
use super::lv;
use crate::facts;
use crate::fit::Placement;
use crate::io::libvirt::{self, consts, Domain, Host};
use crate::io::presence::{self, Presence, Stale};
use crate::model::cpuset::{format_spec, CpuSet};
use crate::model::domain::Guest;
use serde_json::{Map, Value};

/// What the checks found: `record` is the result's `verify`; `bad`, what does not match.
#[derive(Default)]
pub(super) struct Verdict {
    pub record: Map<String, Value>,
    pub bad: Vec<String>,
}

impl Verdict {
    fn note(&mut self, key: &str, value: impl serde::Serialize) {
        self.record.insert(
            key.into(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }
    /// Record `key: ok` and keep the mismatch, prefixed with what was compared.
    fn compare(&mut self, key: &str, what: &str, r: Result<(), String>) {
        self.note(key, r.is_ok());
        if let Err(e) = r {
            self.bad.push(format!("{what}: {e}"));
        }
    }
    /// The result's `verify` and, when something did not match, why.
    pub fn finish(self) -> (Value, Result<(), String>) {
        let why = if self.bad.is_empty() {
            Ok(())
        } else {
            Err(self.bad.join("; "))
        };
        (Value::Object(self.record), why)
    }
}

/// The guest `d` (named `g`) on the host at `uri` against the plan `p`; `must_run`: a guest that
/// is not running fails the check (a repin of a stopped guest only checks its definitions).
pub(super) fn guest_on_host(
    a: &Args,
    d: &Domain,
    uri: &str,
    host_name: &str,
    g: &Guest,
    p: &Placement,
    must_run: bool,
) -> Verdict {
    let mut v = Verdict::default();
    let active = d.is_active().unwrap_or(false);
    match libvirt::guest_of(d) {
        Ok(live) => {
            v.note("state", &live.state);
            if must_run && live.state != "running" {
                v.bad.push(format!("state is {}", live.state));
            }
            v.compare("live_pins_match", "live definition", pins_match(&live, p));
        }
        Err(e) => v
            .bad
            .push(format!("cannot read the live definition: {e:#}")),
    }
    if active {
        match d.live_pins() {
            Ok(lp) => {
                v.note("libvirt_pins", &lp);
                v.compare(
                    "libvirt_pins_match",
                    "live pins read through libvirt",
                    libvirt_pins_match(&lp, p),
                );
            }
            Err(e) => {
                v.note("libvirt_pins_match", false);
                v.bad
                    .push(format!("cannot read the live pins through libvirt: {e}"));
            }
        }
    }
    let persistent = d.is_persistent().unwrap_or(false);
    v.note("persistent", persistent);
    if persistent {
        match d
            .xml_desc(consts::VIR_DOMAIN_XML_INACTIVE)
            .map_err(lv)
            .and_then(|x| crate::model::domain::parse_guest(&x))
        {
            Ok(inactive) => v.compare(
                "persistent_pins_match",
                "persistent definition (used at the next start)",
                pins_match(&inactive, p),
            ),
            Err(e) => v
                .bad
                .push(format!("cannot read the persistent definition: {e}")),
        }
    }
    threads_and_neighbours(a, uri, host_name, g, p, active, &mut v);
    v
}

/// The threads' real affinity on this machine, and no pCPU shared with another guest of the host.
fn threads_and_neighbours(
    a: &Args,
    uri: &str,
    host_name: &str,
    g: &Guest,
    p: &Placement,
    active: bool,
    v: &mut Verdict,
) {
    if active && a.verify_affinity {
        match local_affinity(&g.uuid) {
            Some(aff) => {
                v.compare(
                    "affinity_match",
                    "real thread affinity",
                    affinity_matches(&aff, p),
                );
                v.note("affinity", &aff);
            }
            None => v.note(
                "affinity",
                "not checked: the guest's QEMU process is not visible on this machine",
            ),
        }
    }
    match facts::gather_live(uri, a.dest_nova_conf.as_deref(), Some(host_name)) {
        Ok(f) => {
            let mine: Vec<_> = f
                .overlaps
                .iter()
                .filter(|o| o.guests.contains(&g.name))
                .collect();
            v.note("overlaps", &mine);
            if !mine.is_empty() {
                v.bad.push(format!(
                    "pCPUs shared with other guests: {}",
                    mine.iter()
                        .map(|o| format!("{} ({})", o.cpu, o.guests.join(", ")))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
        }
        Err(e) => v.bad.push(format!("cannot read the host's facts: {e:#}")),
    }
}

/// After a migration: the guest runs on the destination only (a copy the source kept, when its
/// daemon died at the end of the migration, is removed once the guest is confirmed running
/// there), and passes [`guest_on_host`] there.
pub(super) fn after_migration(
    a: &Args,
    src: &Host,
    dst: &Host,
    dest_uri: &str,
    dest_host: &str,
    g: &Guest,
    p: &Placement,
) -> Verdict {
    let mut v = Verdict::default();
    if Presence::of(dst, dest_uri, &g.uuid).running() == Some(true) {
        let stale = presence::remove_stale_copy(src, &a.source_uri, &g.uuid, false);
        v.note(
            "source_defined",
            !matches!(stale, Stale::None | Stale::Removed(_)),
        );
        v.note("stale_source_copy", stale.to_json());
        if !stale.ok() {
            v.bad.extend(stale.note(&g.name, "the source"));
        }
    } else {
        // Not running here: whatever the source has is not a stale copy, and stays.
        let src_now = Presence::of(src, &a.source_uri, &g.uuid);
        v.note("source_defined", src_now.defined());
        v.note("source", src_now.to_json());
        if src_now.defined() != Some(false) {
            v.bad.push(format!(
                "{} does not run on the destination, and on the source it is {}",
                g.name,
                src_now.label()
            ));
        }
    }
    match dst.find(&g.uuid) {
        Ok(None) => v.bad.push(format!("{} is not on {dest_uri}", g.name)),
        Err(e) => v.bad.push(format!(
            "the destination's libvirtd cannot be asked about {}: {}",
            g.name,
            lv(e)
        )),
        Ok(Some(d)) => {
            let on = guest_on_host(a, &d, dest_uri, dest_host, g, p, true);
            v.record.extend(on.record);
            v.bad.extend(on.bad);
        }
    }
    v
}

/// Does the guest's definition carry exactly the plan's pins?
pub(super) fn pins_match(g: &Guest, p: &Placement) -> Result<(), String> {
    let mut bad = Vec::new();
    for c in &p.cells {
        for (v, pc) in &c.vcpu_pins {
            match g.vcpu_pins.get(v) {
                Some(have) if have == &vec![*pc] => {}
                other => bad.push(format!(
                    "vCPU {v}: {} instead of {pc}",
                    other
                        .map(|o| format_spec(&o.iter().copied().collect()))
                        .unwrap_or_else(|| "unpinned".into())
                )),
            }
        }
    }
    if !p.emulator_pins.is_empty() {
        let want: CpuSet = p.emulator_pins.iter().copied().collect();
        let have: CpuSet = g.emulator_pins.iter().copied().collect();
        if want != have {
            bad.push(format!(
                "emulator: {} instead of {}",
                format_spec(&have),
                format_spec(&want)
            ));
        }
    }
    for c in &p.cells {
        let have = g
            .numa_cells
            .iter()
            .find(|n| n.id == c.guest_cell)
            .map(|n| n.host_nodes.clone())
            .unwrap_or_else(|| g.memory_nodes.clone());
        if !have.is_empty() && have != vec![c.host_cell] {
            bad.push(format!(
                "guest cell {} memory on host nodes {:?} instead of {}",
                c.guest_cell, have, c.host_cell
            ));
        }
    }
    all_match(bad)
}

fn affinity_matches(a: &Affinity, p: &Placement) -> Result<(), String> {
    let mut bad = Vec::new();
    for c in &p.cells {
        for (v, pc) in &c.vcpu_pins {
            match a.vcpus.get(v) {
                Some(have) if have == &vec![*pc] => {}
                Some(have) => bad.push(format!("vCPU {v} thread runs on {have:?}, plan {pc}")),
                None => bad.push(format!("vCPU {v}: no thread found")),
            }
        }
    }
    if !p.emulator_pins.is_empty() && a.emulator != p.emulator_pins {
        bad.push(format!(
            "emulator thread runs on {:?}, plan {:?}",
            a.emulator, p.emulator_pins
        ));
    }
    all_match(bad)
}

/// The plan against the live pins libvirt reports: each vCPU's pinning (vCPU pin info), the
/// affinity of its running thread (vCPU info cpumaps) and the emulator's pinning. Works wherever
/// the module runs; /proc is only an extra check on the guest's own host.
pub(super) fn libvirt_pins_match(lp: &libvirt::LivePins, p: &Placement) -> Result<(), String> {
    let mut bad = Vec::new();
    for c in &p.cells {
        for (v, pc) in &c.vcpu_pins {
            match lp.vcpu_pins.get(v) {
                Some(have) if have == &vec![*pc] => {}
                Some(have) => bad.push(format!("vCPU {v} is pinned to {have:?}, plan {pc}")),
                None => bad.push(format!("vCPU {v}: libvirt reports no pinning")),
            }
            match lp.vcpu_threads.get(v) {
                Some(have) if have == &vec![*pc] => {}
                Some(have) => bad.push(format!("vCPU {v} thread may run on {have:?}, plan {pc}")),
                None => bad.push(format!("vCPU {v}: libvirt reports no running thread")),
            }
        }
    }
    if !p.emulator_pins.is_empty() {
        let plan: std::collections::BTreeSet<u32> = p.emulator_pins.iter().copied().collect();
        let have: std::collections::BTreeSet<u32> = lp.emulator_pins.iter().copied().collect();
        if plan != have {
            bad.push(format!(
                "emulator is pinned to {:?}, plan {:?}",
                lp.emulator_pins, p.emulator_pins
            ));
        }
    }
    all_match(bad)
}

/// No mismatch, or all of them in one line.
fn all_match(bad: Vec<String>) -> Result<(), String> {
    match bad.is_empty() {
        true => Ok(()),
        false => Err(bad.join("; ")),
    }
}
