use crate::fit::Placement;
use crate::io::libvirt::{self, Domain};
use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Real affinity from /proc (libvirt pins threads by affinity when there are no cgroups).

#[derive(Debug, Serialize)]
pub struct Affinity {
    pub pid: u32,
    pub vcpus: BTreeMap<String, Vec<u32>>,
    pub emulator: Vec<u32>,
}

pub(super) fn qemu_pids(uuid: &str) -> Vec<(u32, bool)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if !args
            .first()
            .is_some_and(|a| String::from_utf8_lossy(a).contains("qemu"))
        {
            continue;
        }
        let has_uuid = args
            .windows(2)
            .any(|w| w[0] == b"-uuid" && w[1] == uuid.as_bytes());
        if has_uuid {
            let incoming = args.iter().any(|a| *a == b"-incoming");
            out.push((pid, incoming));
        }
    }
    out
}

pub(super) fn read_affinity(pid: u32) -> Option<Affinity> {
    let mut vcpus = BTreeMap::new();
    let mut emulator = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm"))
            .ok()?
            .trim()
            .to_string();
        let status = std::fs::read_to_string(t.path().join("status")).ok()?;
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|s| s.trim().to_string())?;
        let set = crate::model::cpuset::parse_spec(&allowed).ok()?.to_vec();
        if let Some(rest) = comm.strip_prefix("CPU ") {
            if let Some(n) = rest.split('/').next().and_then(|n| n.parse::<u32>().ok()) {
                vcpus.insert(n.to_string(), set);
                continue;
            }
        }
        if t.file_name().to_string_lossy() == pid.to_string() {
            emulator = set;
        }
    }
    Some(Affinity {
        pid,
        vcpus,
        emulator,
    })
}

/// The guest's QEMU on this machine after a migration: wait for the source QEMU to go.
pub(super) fn local_affinity(uuid: &str) -> Option<Affinity> {
    let t0 = Instant::now();
    loop {
        let pids = qemu_pids(uuid);
        if pids.len() == 1 {
            return read_affinity(pids[0].0);
        }
        if pids.is_empty() || t0.elapsed() > Duration::from_secs(5) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn affinity_matches(a: &Affinity, p: &Placement) -> Result<(), String> {
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
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
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
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

/// Read the live pins through libvirt and record the comparison in `v`; a mismatch goes to `bad`.
pub(super) fn check_libvirt_pins(
    d: &Domain,
    p: &Placement,
    v: &mut serde_json::Map<String, Value>,
    bad: &mut Vec<String>,
) {
    match d.live_pins() {
        Ok(lp) => {
            let r = libvirt_pins_match(&lp, p);
            v.insert("libvirt_pins_match".into(), json!(r.is_ok()));
            v.insert(
                "libvirt_pins".into(),
                serde_json::to_value(&lp).unwrap_or(Value::Null),
            );
            if let Err(e) = r {
                bad.push(format!("live pins read through libvirt: {e}"));
            }
        }
        Err(e) => {
            v.insert("libvirt_pins_match".into(), json!(false));
            bad.push(format!("cannot read the live pins through libvirt: {e}"));
        }
    }
}
