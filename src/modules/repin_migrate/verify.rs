use super::affinity::{affinity_matches, check_libvirt_pins, local_affinity};
use super::args::Args;
use super::lv;
use crate::facts::{self};
use crate::fit::Placement;
use crate::io::libvirt::{self, consts, Host};
use crate::io::presence::{self, Presence, Stale};
use crate::model::cpuset::{format_spec, CpuSet};
use crate::model::domain::Guest;
use anyhow::Result;
use serde_json::{json, Value};

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
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

pub(super) fn verify_after(
    a: &Args,
    src: &Host,
    dst: &Host,
    dest_uri: &str,
    dest_host: &str,
    g: &Guest,
    p: &Placement,
) -> (Value, Result<(), String>) {
    let mut v = serde_json::Map::new();
    let mut bad = Vec::new();
    // One host per guest: a copy the source kept (its daemon died at the end of the migration)
    // is removed once the guest is confirmed running here.
    let dest_running = Presence::of(dst, dest_uri, &g.uuid).running() == Some(true);
    if dest_running {
        let stale = presence::remove_stale_copy(src, &a.source_uri, &g.uuid, false);
        v.insert(
            "source_defined".into(),
            json!(!matches!(stale, Stale::None | Stale::Removed(_))),
        );
        v.insert("stale_source_copy".into(), stale.to_json());
        if !stale.ok() {
            bad.extend(stale.note(&g.name, "the source"));
        }
    } else {
        // Not running here: whatever the source has is not a stale copy, and stays.
        let src_now = Presence::of(src, &a.source_uri, &g.uuid);
        v.insert("source_defined".into(), json!(src_now.defined()));
        v.insert("source".into(), src_now.to_json());
        if src_now.defined() != Some(false) {
            bad.push(format!(
                "{} does not run on the destination, and on the source it is {}",
                g.name,
                src_now.label()
            ));
        }
    }
    match dst.find(&g.uuid) {
        Ok(None) => bad.push(format!("{} is not on {dest_uri}", g.name)),
        Err(e) => bad.push(format!(
            "the destination's libvirtd cannot be asked about {}: {}",
            g.name,
            lv(e)
        )),
        Ok(Some(d)) => {
            let live = libvirt::guest_of(&d);
            match &live {
                Ok(live) => {
                    v.insert("dest_state".into(), json!(live.state));
                    if live.state != "running" {
                        bad.push(format!("state on the destination is {}", live.state));
                    }
                    let r = pins_match(live, p);
                    v.insert("live_pins_match".into(), json!(r.is_ok()));
                    if let Err(e) = r {
                        bad.push(format!("live definition: {e}"));
                    }
                }
                Err(e) => bad.push(format!("cannot read the live definition: {e:#}")),
            }
            check_libvirt_pins(&d, p, &mut v, &mut bad);
            match d
                .xml_desc(consts::VIR_DOMAIN_XML_INACTIVE)
                .map_err(lv)
                .and_then(|x| crate::model::domain::parse_guest(&x))
            {
                Ok(inactive) => {
                    let r = pins_match(&inactive, p);
                    v.insert("persistent_pins_match".into(), json!(r.is_ok()));
                    if let Err(e) = r {
                        bad.push(format!(
                            "persistent definition (used at the next start): {e}"
                        ));
                    }
                }
                Err(e) => bad.push(format!("cannot read the persistent definition: {e}")),
            }
            v.insert(
                "persistent".into(),
                json!(d.is_persistent().unwrap_or(false)),
            );
        }
    }
    if a.verify_affinity {
        match local_affinity(&g.uuid) {
            Some(aff) => {
                let r = affinity_matches(&aff, p);
                v.insert("affinity_match".into(), json!(r.is_ok()));
                if let Err(e) = r {
                    bad.push(format!("real thread affinity: {e}"));
                }
                v.insert(
                    "affinity".into(),
                    serde_json::to_value(&aff).unwrap_or(Value::Null),
                );
            }
            None => {
                v.insert(
                    "affinity".into(),
                    json!("not checked: the guest's QEMU process is not visible on this machine"),
                );
            }
        }
    }
    match facts::gather_live(dest_uri, a.dest_nova_conf.as_deref(), Some(dest_host)) {
        Ok(f) => {
            let mine: Vec<_> = f
                .overlaps
                .iter()
                .filter(|o| o.guests.contains(&g.name))
                .collect();
            v.insert("overlaps".into(), json!(mine));
            if !mine.is_empty() {
                bad.push(format!(
                    "pCPUs shared with other guests: {}",
                    mine.iter()
                        .map(|o| format!("{} ({})", o.cpu, o.guests.join(", ")))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
        }
        Err(e) => bad.push(format!("cannot read the destination's facts: {e:#}")),
    }
    (
        Value::Object(v),
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        },
    )
}
