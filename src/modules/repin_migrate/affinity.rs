//! The real affinity of a guest's QEMU threads, read from /proc on this machine: libvirt pins
//! threads by affinity when there are no cgroups, so this is what the kernel enforces.
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct Affinity {
    pub pid: u32,
    pub vcpus: BTreeMap<String, Vec<u32>>,
    pub emulator: Vec<u32>,
}

fn qemu_pids(uuid: &str) -> Vec<(u32, bool)> {
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

fn read_affinity(pid: u32) -> Option<Affinity> {
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
