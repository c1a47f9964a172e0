//! Mode `repin`: move a guest's pins to free pCPUs of the host cells that hold its memory, on
//! its own host, live (and in its persistent definition), under the same claim as a migration.

use super::args::Args;
use super::claim::{release_claim, take_claim};
use super::lv;
use super::plan::{current_valid, old_pins};
use super::report::{base_fields, diff_value, placement_msg};
use super::source::conf_host;
use super::verify;
use crate::ansible::{Context, Failure, Outcome};
use crate::facts::{self, NumaFacts};
use crate::fit::{self, FitOptions, GuestTopology, Placement};
use crate::io::claim::Claim;
use crate::io::libvirt::{self, consts, Domain};
use crate::model::cpuset::CpuSet;
use crate::model::domain::Guest;
use crate::model::rewrite;
use anyhow::{anyhow, Result};

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
    let claim = match ctx.check_mode {
        true => None,
        false => Some(take_claim(&h, a, &a.guest, "repin")?),
    };
    let f = facts::gather_live(&a.source_uri, a.dest_nova_conf.as_deref(), Some(&host_name))?;
    let g = libvirt::guest_of(&dom)?;
    let (topo, current, valid) = current_valid(&f, &g, a.thread_policy);
    let why_invalid = match valid {
        Ok(()) => return Ok(already_valid(&g, &host_name, &node, &current, claim)),
        Err(why) => why,
    };
    let placement = plan_in_place(&f, &g, &topo, &current, &why_invalid)?;
    let live_xml = dom
        .xml_desc(0)
        .map_err(|e| anyhow!("{}: {}", g.name, lv(e)))?;
    let new_xml =
        rewrite::rewrite(&live_xml, &placement).map_err(|e| Failure::new(e.to_string()))?;
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
    pin_or_restore(&dom, active, &g, &placement, &current)?;
    let (record, checked) =
        verify::guest_on_host(a, &dom, &a.source_uri, &host_name, &g, &placement, active).finish();
    o.set("verify", record);
    match checked {
        Ok(()) => {
            o.msg = format!(
                "repinned {} on {host_name}: {}",
                g.name,
                placement_msg(&placement)
            )
        }
        Err(why) => {
            o.failed = true;
            o.msg = format!(
                "{} was repinned on {host_name} but the check after failed: {why}",
                g.name
            );
        }
    }
    release_claim(&mut o, claim);
    Ok(o)
}

/// Nothing to do: the guest's pins are valid where they are.
fn already_valid(
    g: &Guest,
    host_name: &str,
    node: &str,
    current: &Placement,
    claim: Option<Claim>,
) -> Outcome {
    let mut o = Outcome::new(
        false,
        format!(
            "{} on {host_name} already has a valid placement: {}",
            g.name,
            placement_msg(current)
        ),
    );
    base_fields(&mut o, &g.uuid, host_name, host_name, node, current);
    o.set("guest", &g.name);
    release_claim(&mut o, claim);
    o
}

/// The new placement: memory stays where it is, so only the host cells the guest's memory is on
/// are candidates, and each guest cell keeps its host cell.
fn plan_in_place(
    f: &NumaFacts,
    g: &Guest,
    topo: &GuestTopology,
    current: &Placement,
    why_invalid: &str,
) -> Result<Placement> {
    let mut state = f.host_state(Some(&g.uuid));
    let cells_now: Vec<u32> = current.cells.iter().map(|c| c.host_cell).collect();
    state.cells.retain(|c| cells_now.contains(&c.id));
    let placement = fit::fit_topology(&state, topo, &FitOptions::default()).map_err(|r| {
        // Nova's refusal first, exactly: callers match `No numa available`.
        Failure::exact(format!(
            "{}: no free pCPUs for {} in the host cell(s) {:?} that hold its memory (repin never moves memory between cells; migrate it instead); nothing was changed",
            r.msg, g.name, cells_now
        ))
        .with("reasons", &r.reasons)
        .with("invalid_because", why_invalid)
    })?;
    for (c, old) in placement.cells.iter().zip(&current.cells) {
        if c.host_cell != old.host_cell || c.guest_cell != old.guest_cell {
            return Err(Failure::new(format!("repinning {} would move guest cell {} from host cell {} to {}: memory would have to change cell; migrate it instead. Nothing was changed", g.name, c.guest_cell, old.host_cell, c.host_cell)).into());
        }
    }
    Ok(placement)
}

/// Pin the vCPUs and the emulator as `new` says (live and in the persistent definition, as the
/// domain has them); on any error put `old` back and fail, saying whether that worked.
fn pin_or_restore(
    dom: &Domain,
    active: bool,
    g: &Guest,
    new: &Placement,
    old: &Placement,
) -> Result<()> {
    let flags = match (dom.is_persistent().unwrap_or(false), active) {
        (false, _) => consts::VIR_DOMAIN_AFFECT_LIVE,
        (true, true) => consts::VIR_DOMAIN_AFFECT_LIVE | consts::VIR_DOMAIN_AFFECT_CONFIG,
        (true, false) => consts::VIR_DOMAIN_AFFECT_CONFIG,
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
    let Err(e) = apply(new) else { return Ok(()) };
    let restored = apply(old).is_ok();
    Err(Failure::new(format!(
        "repinning {} failed: {e}; {}",
        g.name,
        if restored {
            "its old pins were put back (checked)"
        } else {
            "CHECK BY HAND: its old pins could not all be put back"
        }
    ))
    .with("old_pins", old_pins(g))
    .into())
}

/// libvirt's cpumap: one bit per pCPU, lowest first.
pub(super) fn cpumap(set: &CpuSet) -> Vec<u8> {
    let max = set.iter().max().unwrap_or(0);
    let mut m = vec![0u8; (max / 8 + 1) as usize];
    for c in set.iter() {
        m[(c / 8) as usize] |= 1 << (c % 8);
    }
    m
}
