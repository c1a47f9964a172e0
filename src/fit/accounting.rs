//! Usage accounting and validation of placements (shared by drain planning and
//! post-migration checks).

use super::{
    CellPlacement, GuestCellReq, GuestTopology, HostCell, HostState, Placement, ThreadPolicy,
};
use crate::model::cpuset::CpuSet;

/// Account a placement on a host: pins (whole cores for `isolate`), memory, pages.
pub fn claim(host: &mut HostState, p: &Placement) {
    for c in &p.cells {
        let Some(h) = host.cells.iter_mut().find(|h| h.id == c.host_cell) else {
            continue;
        };
        let mut pins: CpuSet = c
            .vcpu_pins
            .values()
            .copied()
            .chain(c.cpuset_reserved.iter().copied())
            .collect();
        if c.thread_policy == Some(ThreadPolicy::Isolate) {
            let cores: Vec<CpuSet> = h
                .siblings
                .iter()
                .filter(|s| c.vcpu_pins.values().any(|p| s.contains(*p)))
                .cloned()
                .collect();
            for s in cores {
                pins = pins.union(&s);
            }
        }
        h.pinned_cpus = h.pinned_cpus.union(&pins);
        h.memory_usage = h.memory_usage.saturating_add(c.memory_mb);
        if let Some(size) = c.pagesize_kb {
            if let Some(pool) = h.mempages.iter_mut().find(|m| m.size_kb == size) {
                let pages = c.memory_mb.saturating_mul(1024).checked_div(size);
                pool.used = pool.used.saturating_add(pages.unwrap_or(0));
            }
        }
    }
}

/// Check a placement against a host state and its topology: distinct, free, allowed pCPUs on
/// distinct host cells, memory and pages available, thread policy respected. Used to verify
/// plans (ours and Nova's) and a guest's live pins after a migration.
pub fn validate(host: &HostState, topo: &GuestTopology, p: &Placement) -> Result<(), String> {
    if p.cells.len() != topo.cells.len() {
        return Err(format!(
            "placement has {} cells, the guest {}",
            p.cells.len(),
            topo.cells.len()
        ));
    }
    let mut used_cells = std::collections::BTreeSet::new();
    let mut all = CpuSet::new();
    for (c, g) in p.cells.iter().zip(&topo.cells) {
        let h = host
            .cells
            .iter()
            .find(|h| h.id == c.host_cell)
            .ok_or(format!("host cell {} does not exist", c.host_cell))?;
        if !used_cells.insert(c.host_cell) {
            return Err(format!("two guest cells on host cell {}", c.host_cell));
        }
        validate_cell(h, c, g, topo, &mut all)?;
    }
    let res_total: usize = p.cells.iter().map(|c| c.cpuset_reserved.len()).sum();
    if topo.emulator_isolate && res_total != 1 {
        return Err(format!(
            "emulator isolate needs exactly one reserved pCPU, got {res_total}"
        ));
    }
    Ok(())
}

/// One guest cell of a placement on its host cell (`validate`); `all` collects the pCPUs of
/// the cells checked so far.
fn validate_cell(
    h: &HostCell,
    c: &CellPlacement,
    g: &GuestCellReq,
    topo: &GuestTopology,
    all: &mut CpuSet,
) -> Result<(), String> {
    if c.memory_mb != g.memory_mb {
        return Err(format!(
            "guest cell {} memory {} != {}",
            g.id, c.memory_mb, g.memory_mb
        ));
    }
    let free = h.free_cpus();
    if topo.dedicated {
        if c.vcpu_pins.len() != g.vcpus.len() {
            return Err(format!(
                "guest cell {}: {} pins for {} vCPUs",
                g.id,
                c.vcpu_pins.len(),
                g.vcpus.len()
            ));
        }
        for v in &g.vcpus {
            if !c.vcpu_pins.contains_key(&v.to_string()) {
                return Err(format!("vCPU {v} is not pinned"));
            }
        }
        if (g.memory_mb as i64) > h.avail_memory() {
            return Err(format!(
                "cell {}: {} MiB free memory, needs {}",
                h.id,
                h.avail_memory(),
                g.memory_mb
            ));
        }
    }
    for cpu in c.vcpu_pins.values().chain(c.cpuset_reserved.iter()) {
        if !h.cpuset.contains(*cpu) {
            return Err(format!("pCPU {cpu} is not a usable pCPU of cell {}", h.id));
        }
        if !free.contains(*cpu) {
            return Err(format!("pCPU {cpu} is already pinned"));
        }
        if all.contains(*cpu) {
            return Err(format!("pCPU {cpu} is used twice"));
        }
        all.insert(*cpu);
    }
    if topo.thread_policy == Some(ThreadPolicy::Isolate) {
        check_isolated_cores(h, c, &free)?;
    }
    if let Some(size) = c.pagesize_kb {
        let pool = h
            .mempages
            .iter()
            .find(|m| m.size_kb == size)
            .ok_or(format!("no {size} KiB pages on cell {}", h.id))?;
        let kb = c.memory_mb.saturating_mul(1024);
        if kb.checked_rem(size) != Some(0) || kb > pool.free().saturating_mul(size) {
            return Err(format!(
                "cell {}: {} MiB does not fit in free {size} KiB pages",
                h.id, c.memory_mb
            ));
        }
    }
    Ok(())
}

/// `isolate`: each vCPU alone on a whole core that was free.
fn check_isolated_cores(h: &HostCell, c: &CellPlacement, free: &CpuSet) -> Result<(), String> {
    let tpc = h.threads_per_core();
    for cpu in c.vcpu_pins.values() {
        let core = h
            .siblings
            .iter()
            .find(|s| s.contains(*cpu))
            .ok_or(format!("pCPU {cpu} has no core"))?;
        if core.len() != tpc || !core.is_subset(free) {
            return Err(format!("isolate: core of pCPU {cpu} is not fully free"));
        }
        if c.vcpu_pins.values().filter(|p| core.contains(**p)).count() > 1 {
            return Err(format!("isolate: two vCPUs share the core of pCPU {cpu}"));
        }
    }
    Ok(())
}
