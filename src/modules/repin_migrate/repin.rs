use super::affinity::{affinity_matches, check_libvirt_pins, qemu_pids, read_affinity};
use super::args::Args;
use super::claim::{release_claim, take_claim};
use super::plan::{current_valid, old_pins};
use super::report::{base_fields, diff_value, placement_msg};
use super::source::conf_host;
use super::verify::pins_match;
use super::{lv, M};
use crate::ansible::{Context, Failure, Outcome};
use crate::facts::{self};
use crate::fit::{self, FitOptions, Placement};
use crate::io::libvirt::{self, consts};
use crate::model::cpuset::CpuSet;
use crate::model::rewrite;
use anyhow::{anyhow, Result};
use serde_json::{json, Value};

pub(super) fn cpumap(set: &CpuSet) -> Vec<u8> {
    let max = set.iter().max().unwrap_or(0);
    let mut m = vec![0u8; (max / 8 + 1) as usize];
    for c in set.iter() {
        m[(c / 8) as usize] |= 1 << (c % 8);
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Mode repin: same host.

pub(super) fn repin_in_place(a: &Args, ctx: &Context) -> Result<Outcome> {
    let h = libvirt::connect(&a.source_uri)?;
    let host_name = a
        .dest_host
        .clone()
        .or_else(|| a.source_host.clone())
        .or_else(|| conf_host(a.dest_nova_conf.as_deref()))
        .unwrap_or_else(|| h.hostname());
    let node = a.dest_node.clone().unwrap_or_else(|| host_name.clone());
    let dom = h.lookup(&a.guest)?;
    let active = dom.is_active().unwrap_or(false);
    // The same claim as a migration to this host (see module docs); none in check mode.
    let claim = if ctx.check_mode {
        None
    } else {
        Some(take_claim(&h, a, &a.guest, "repin")?)
    };
    let f = facts::gather_live(&a.source_uri, a.dest_nova_conf.as_deref(), Some(&host_name))?;
    let g = libvirt::guest_of(&dom)?;
    let (topo, current, valid) = current_valid(&f, &g, a.thread_policy);
    if valid.is_ok() {
        let mut o = Outcome::new(
            false,
            format!(
                "{} on {host_name} already has a valid placement: {}",
                g.name,
                placement_msg(&current)
            ),
        );
        base_fields(&mut o, &g.uuid, &host_name, &host_name, &node, &current);
        o.set("guest", &g.name);
        release_claim(&mut o, claim);
        return Ok(o);
    }
    let why_invalid = valid.err().unwrap_or_default();
    // Memory stays where it is: only the host cells the guest's memory is on are candidates.
    let mut state = f.host_state(Some(&g.uuid));
    let cells_now: Vec<u32> = current.cells.iter().map(|c| c.host_cell).collect();
    state.cells.retain(|c| cells_now.contains(&c.id));
    let placement = match fit::fit_topology(&state, &topo, &FitOptions::default()) {
        Ok(p) => p,
        Err(r) => {
            return Err(Failure::new(format!(
                "{}: no free pCPUs for {} in the host cell(s) {:?} that hold its memory (repin never moves memory between cells; migrate it instead); nothing was changed",
                r.msg, g.name, cells_now
            ))
            .with("reasons", &r.reasons)
            .with("invalid_because", &why_invalid)
            .into());
        }
    };
    for (c, old) in placement.cells.iter().zip(&current.cells) {
        if c.host_cell != old.host_cell || c.guest_cell != old.guest_cell {
            return Err(Failure::new(format!("{M}: repinning {} would move guest cell {} from host cell {} to {}: memory would have to change cell; migrate it instead. Nothing was changed", g.name, c.guest_cell, old.host_cell, c.host_cell)).into());
        }
    }
    let live_xml = dom
        .xml_desc(0)
        .map_err(|e| anyhow!("{}: {}", g.name, lv(e)))?;
    let new_xml =
        rewrite::rewrite(&live_xml, &placement).map_err(|e| Failure::new(format!("{M}: {e}")))?;
    let mut o = Outcome::new(true, String::new());
    base_fields(&mut o, &g.uuid, &host_name, &host_name, &node, &placement);
    o.set("guest", &g.name);
    o.set("old_pins", old_pins(&g));
    o.set("invalid_because", &why_invalid);
    o.diff = Some(diff_value(
        &live_xml,
        &new_xml,
        &format!("{} on {host_name}", g.name),
    ));
    if ctx.check_mode {
        o.msg = format!(
            "would repin {} on {host_name}: {}",
            g.name,
            placement_msg(&placement)
        );
        o.set("xml_diff", rewrite::line_diff(&live_xml, &new_xml));
        return Ok(o);
    }
    let flags = if active {
        consts::VIR_DOMAIN_AFFECT_LIVE | consts::VIR_DOMAIN_AFFECT_CONFIG
    } else {
        consts::VIR_DOMAIN_AFFECT_CONFIG
    };
    let persistent = dom.is_persistent().unwrap_or(false);
    let flags = if persistent {
        flags
    } else {
        consts::VIR_DOMAIN_AFFECT_LIVE
    };
    let apply = |p: &Placement| -> Result<(), String> {
        for c in &p.cells {
            for (v, pc) in &c.vcpu_pins {
                let v: u32 = v.parse().map_err(|_| format!("bad vCPU {v}"))?;
                dom.pin_vcpu_flags(v, &cpumap(&std::iter::once(*pc).collect()), flags)
                    .map_err(|e| format!("pin vCPU {v} to {pc}: {}", lv(e)))?;
            }
        }
        if !p.emulator_pins.is_empty() {
            dom.pin_emulator(&cpumap(&p.emulator_pins.iter().copied().collect()), flags)
                .map_err(|e| format!("pin emulator to {:?}: {}", p.emulator_pins, lv(e)))?;
        }
        Ok(())
    };
    if let Err(e) = apply(&placement) {
        let rolled = apply(&current).is_ok();
        return Err(Failure::new(format!(
            "{M}: repinning {} failed: {e}; {}",
            g.name,
            if rolled {
                "its old pins were put back (checked)"
            } else {
                "CHECK BY HAND: its old pins could not all be put back"
            }
        ))
        .with("old_pins", old_pins(&g))
        .into());
    }
    // Verify.
    let mut v = serde_json::Map::new();
    let mut bad = Vec::new();
    match libvirt::guest_of(&dom) {
        Ok(live) => {
            if let Err(e) = pins_match(&live, &placement) {
                bad.push(format!("live: {e}"));
            }
        }
        Err(e) => bad.push(format!("{e:#}")),
    }
    if active {
        check_libvirt_pins(&dom, &placement, &mut v, &mut bad);
    }
    if persistent {
        match dom
            .xml_desc(consts::VIR_DOMAIN_XML_INACTIVE)
            .map_err(lv)
            .and_then(|x| crate::model::domain::parse_guest(&x))
        {
            Ok(inactive) => {
                let r = pins_match(&inactive, &placement);
                v.insert("persistent_pins_match".into(), json!(r.is_ok()));
                if let Err(e) = r {
                    bad.push(format!("persistent: {e}"));
                }
            }
            Err(e) => bad.push(e),
        }
    }
    if active && a.verify_affinity {
        if let Some(aff) = qemu_pids(&g.uuid)
            .first()
            .and_then(|(pid, _)| read_affinity(*pid))
        {
            let r = affinity_matches(&aff, &placement);
            v.insert("affinity_match".into(), json!(r.is_ok()));
            if let Err(e) = r {
                bad.push(format!("real thread affinity: {e}"));
            }
            v.insert(
                "affinity".into(),
                serde_json::to_value(&aff).unwrap_or(Value::Null),
            );
        }
    }
    if let Ok(f2) = facts::gather_live(&a.source_uri, a.dest_nova_conf.as_deref(), Some(&host_name))
    {
        let mine: Vec<_> = f2
            .overlaps
            .iter()
            .filter(|o| o.guests.contains(&g.name))
            .collect();
        if !mine.is_empty() {
            bad.push(format!("still shares pCPUs: {mine:?}"));
        }
        v.insert("overlaps".into(), json!(mine));
    }
    o.set("verify", Value::Object(v));
    if !bad.is_empty() {
        o.failed = true;
        o.msg = format!(
            "{} was repinned on {host_name} but the check after failed: {}",
            g.name,
            bad.join("; ")
        );
        release_claim(&mut o, claim);
        return Ok(o);
    }
    o.msg = format!(
        "repinned {} on {host_name}: {}",
        g.name,
        placement_msg(&placement)
    );
    release_claim(&mut o, claim);
    Ok(o)
}
