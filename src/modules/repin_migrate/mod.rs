//! `repin_migrate`: live-migrate a pinned guest with its pinning recomputed for the destination
//! (mode `migrate`), or move a running guest's pins to free pCPUs on its own host (mode `repin`).
//!
//! Migration flow:
//! 1. read the guest on the source (live migratable XML, inactive XML, pins);
//! 2. claim the destination *in its libvirtd* (`crate::io::claim`): define the never-started domain
//!    `numa-repin-claim` with a fresh random uuid on the destination; libvirtd refuses a second
//!    definition of that name, so every runner that targets the host sees the claim, whatever
//!    machine it runs on (two controllers, runs on different source hosts). A held claim is
//!    waited for (polling, up to `lock_timeout_s`). The claim is a lease the holder renews every
//!    10 s from a thread of its own; a claim whose renewal counter stays unchanged for
//!    `claim_lease_s` of the waiter's own clock is stale (holder dead, or cut off from the host as
//!    long, e.g. its release could not reach a restarting libvirtd) and is taken over, and so is
//!    a claim of this machine whose process is gone; the result says so. A claim that is never
//!    renewed (defined by hand) is never broken: the timeout message names its holder and the
//!    command that removes it. The claim is held across fit + disk preparation + migration + verification and
//!    undefined (only if it still carries our uuid) on every exit path; the destination's live
//!    pinning is read *after* it is taken, i.e. just before migrating, and checked again after.
//!    Check mode takes no claim. Mode repin takes the same claim on its host. `lock_dir` is still
//!    accepted but no longer used: the flock it named protected only runs on one machine;
//!    no local flock is kept in front of the claim either: waiters of one machine poll libvirt
//!    like the others (a few cheap calls a second), and a second lock with its own wait and
//!    failure modes would add nothing to the exclusion;
//! 3. fit the guest's topology on the live destination state (`vcpu_pin_set` from the
//!    destination's nova.conf), or refuse before anything moves (`No numa available ...`);
//! 4. check the guest CPU model against the destination (skipped, and said, for TCG guests);
//! 5. block migration: prepare the destination over SSH like Nova's `pre_live_migration`;
//! 6. `virDomainMigrateToURI3` peer-to-peer (one perform call on the source, `libvirt::Domain::migrate_to_uri3`) with DEST_XML and PERSIST_XML = the rewritten XML
//!    (`rewrite::rewrite`), a monitor thread applying Nova's downtime steps, stall and completion
//!    timeouts (abort or force complete);
//! 7. verify: running only on the destination, live + persistent pins equal the plan, the live
//!    pins read through libvirt (vCPU pin info, emulator pin info, the vCPU threads' affinity from
//!    vCPU info) too, and /proc's affinity as an extra check when the QEMU process is visible
//!    here; no overlap with other guests.
//!
//! A failed migration is checked to have left the guest running on the source with its old
//! pins, and the failure says so.

use crate::ansible::{Context, Failure, ModuleArgs, Outcome};
use crate::facts::{self, NumaFacts};
use crate::fit::{self, CellPlacement, FitOptions, GuestTopology, Placement, ThreadPolicy};
use crate::io::libvirt::{self, consts, Domain, Host, MigrateParameters};
use crate::io::presence::{self, Presence, Stale};
use crate::io::ssh::{quote, Ssh};
use crate::limits;
use crate::model::cpuset::{format_spec, CpuSet};
use crate::model::domain::Guest;
use crate::model::rewrite;
use anyhow::{anyhow, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// Disks on shared storage (or no disks): only memory moves.
    Shared,
    /// Local disks copied by libvirt (NON_SHARED_DISK); the destination is prepared over SSH.
    Block,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutAction {
    Abort,
    ForceComplete,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Migrate,
    Repin,
}

/// Live-migrate a CPU-pinned guest with its pinning recomputed for the destination, or repin it on its host.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// The guest: libvirt name or uuid (Nova's instance uuid).
    pub guest: String,
    /// libvirt URI of the host the guest runs on.
    pub source_uri: String,
    /// libvirt URI of the destination (mode migrate). Mode repin: omit or equal to source_uri.
    pub dest_uri: Option<String>,
    /// Migration data address, e.g. tcp://10.0.0.3 (Nova's live_migration_inbound_addr). Default: libvirt's choice.
    pub migrate_uri: Option<String>,
    /// The destination's nova.conf (its vcpu_pin_set / cpu_dedicated_set). Mode repin: the host's.
    pub dest_nova_conf: Option<PathBuf>,
    /// The source's nova.conf, only to read its `[DEFAULT] host` name for the result.
    pub source_nova_conf: Option<PathBuf>,
    /// Nova host names for the result (default: `[DEFAULT] host` of the nova.conf, else libvirt's hostname).
    pub source_host: Option<String>,
    /// Nova host name of the destination for the result (default like source_host).
    pub dest_host: Option<String>,
    /// Nova node (compute_nodes.hypervisor_hostname) of the destination (default: dest_host).
    pub dest_node: Option<String>,
    /// migrate (to dest_uri) or repin (move the pins of the running guest on its own host).
    #[serde(default = "d_mode")]
    pub mode: Mode,
    /// shared (disks on shared storage, or diskless) or block (copy the disks; the destination is prepared over SSH).
    #[serde(default = "d_storage")]
    pub storage: Storage,
    /// Throttle a busy guest's vCPUs so pre-copy converges (VIR_MIGRATE_AUTO_CONVERGE).
    #[serde(default)]
    pub auto_converge: bool,
    /// Allow post-copy (VIR_MIGRATE_POSTCOPY); used by timeout_action force_complete.
    #[serde(default)]
    pub post_copy: bool,
    /// Bandwidth cap, MiB/s (0 = unlimited).
    #[serde(default)]
    pub bandwidth_mibps: u64,
    /// Final allowed downtime, ms (Nova's live_migration_downtime).
    #[serde(default = "d_downtime")]
    pub max_downtime_ms: u64,
    /// Nova's live_migration_downtime_steps.
    #[serde(default = "d_steps")]
    pub downtime_steps: u64,
    /// Nova's live_migration_downtime_delay: seconds per GiB of data between steps.
    #[serde(default = "d_delay")]
    pub downtime_delay_s: u64,
    /// Give up after this many seconds (default: Nova's 800 s per GiB of data; 0 = never).
    pub completion_timeout_s: Option<u64>,
    /// Give up when the remaining data has not shrunk for this many seconds (0 = never).
    #[serde(default = "d_progress")]
    pub progress_timeout_s: u64,
    /// While the migration runs, append one JSON line per second here (on the host the module
    /// runs on): data remaining, dirty rate, downtime step, elapsed and stalled seconds. The role
    /// shows it while it waits.
    pub progress_file: Option<PathBuf>,
    /// On timeout: abort (the guest stays on the source) or force_complete (post-copy when allowed, else pause and finish).
    #[serde(default = "d_action")]
    pub timeout_action: TimeoutAction,
    /// Thread policy of the guest (libvirt does not record it). Default: prefer.
    pub thread_policy: Option<ThreadPolicy>,
    /// Accepted for compatibility, no longer used: runs are serialised per destination by a claim
    /// in the destination's libvirtd (a never-started domain `numa-repin-claim`), which runs on
    /// every machine see, not by lock files on the machine that runs the module.
    #[serde(default = "d_lock_dir")]
    pub lock_dir: PathBuf,
    /// How long to wait, in seconds, for another run's claim on the destination
    /// (`numa-repin-claim` in its libvirtd) to be released. On timeout the failure names the holder
    /// and how to remove a stale claim (`virsh -c <dest_uri> undefine numa-repin-claim`).
    #[serde(default = "d_lock_timeout")]
    pub lock_timeout_s: u64,
    /// Seconds a claim's renewal counter must stay unchanged (as seen by this run) before the
    /// claim counts as stale and is taken over. Holders renew every 10 s.
    #[serde(default = "d_claim_lease")]
    pub claim_lease_s: u64,
    /// Block migration: the destination's sshd (Kolla nova_ssh).
    pub ssh_host: Option<String>,
    /// Block migration: SSH port (Kolla's nova_ssh listens on 8022).
    #[serde(default = "d_ssh_port")]
    pub ssh_port: u16,
    /// Block migration: SSH user.
    #[serde(default = "d_ssh_user")]
    pub ssh_user: String,
    /// Block migration: private key file for SSH.
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file to check the destination's host key against (default: accept, report fingerprint).
    pub ssh_known_hosts: Option<PathBuf>,
    /// Block migration: directory, as seen over SSH, where the guest's disk files go on the
    /// destination (Nova: /var/lib/nova/instances/<uuid>; `{uuid}` is replaced). Default: the
    /// directory of each disk on the source.
    pub instance_dir: Option<String>,
    /// Also check the threads' affinity in /proc when the guest's QEMU runs on this machine (the
    /// live pins and thread affinity libvirt reports are always checked).
    #[serde(default = "yes")]
    pub verify_affinity: bool,
}

fn d_mode() -> Mode {
    Mode::Migrate
}
fn d_storage() -> Storage {
    Storage::Shared
}
fn d_downtime() -> u64 {
    500
}
fn d_steps() -> u64 {
    10
}
fn d_delay() -> u64 {
    75
}
fn d_progress() -> u64 {
    0
}
fn d_action() -> TimeoutAction {
    TimeoutAction::Abort
}
fn d_lock_dir() -> PathBuf {
    PathBuf::from("/run/lock/numa-repin")
}
fn d_claim_lease() -> u64 {
    crate::io::claim::LEASE.as_secs()
}
fn d_lock_timeout() -> u64 {
    3600
}
fn d_ssh_port() -> u16 {
    8022
}
fn d_ssh_user() -> String {
    "root".into()
}
fn yes() -> bool {
    true
}
impl ModuleArgs for Args {
    fn validate(&self) -> std::result::Result<(), limits::Error> {
        limits::at_most(
            "downtime_steps",
            self.downtime_steps,
            limits::MAX_DOWNTIME_STEPS,
            "steps",
        )?;
        limits::at_most(
            "max_downtime_ms",
            self.max_downtime_ms,
            MAX_DOWNTIME_MS,
            "ms",
        )?;
        limits::at_most("downtime_delay_s", self.downtime_delay_s, MAX_DELAY_S, "s")?;
        limits::at_most("lock_timeout_s", self.lock_timeout_s, MAX_WAIT_S, "s")?;
        limits::at_most("claim_lease_s", self.claim_lease_s, MAX_WAIT_S, "s")?;
        limits::at_most(
            "progress_timeout_s",
            self.progress_timeout_s,
            MAX_WAIT_S,
            "s",
        )?;
        if let Some(t) = self.completion_timeout_s {
            limits::at_most("completion_timeout_s", t, MAX_COMPLETION_S, "s")?;
        }
        limits::at_most(
            "bandwidth_mibps",
            self.bandwidth_mibps,
            MAX_BANDWIDTH_MIBPS,
            "MiB/s",
        )?;
        limits::abs_dir("lock_dir", &self.lock_dir)?;
        if let Some(p) = &self.progress_file {
            limits::abs_dir("progress_file", p)?;
        }
        Ok(())
    }
}

/// Bounds of the migration's timing arguments (see [`crate::limits`]): an hour of downtime, a
/// day per GiB between downtime steps; far beyond Nova's defaults (500 ms, 75 s).
pub const MAX_DOWNTIME_MS: u64 = 3_600_000;
pub const MAX_DELAY_S: u64 = 86_400;
/// Waits (a claim, its lease, a stall) up to a day; a migration up to a week; bandwidth up to
/// 1 TiB/s. Beyond these a value is a typo, and some overflow libvirt's and QEMU's own types.
pub const MAX_WAIT_S: u64 = 86_400;
pub const MAX_COMPLETION_S: u64 = 604_800;
pub const MAX_BANDWIDTH_MIBPS: u64 = 1 << 20;

const M: &str = "repin_migrate";

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn lv(e: libvirt::Error) -> String {
    e.message()
}

/// `[DEFAULT] host` of a nova.conf.
fn conf_host(path: Option<&Path>) -> Option<String> {
    let text = limits::read_text("nova.conf", path?, limits::MAX_FILE_BYTES).ok()?;
    let mut in_default = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_default = l.eq_ignore_ascii_case("[DEFAULT]");
            continue;
        }
        if in_default {
            if let Some((k, v)) = l.split_once('=') {
                if k.trim() == "host" && !v.trim().is_empty() {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

/// Take the claim on `h` for this run (see module docs), or fail with the holder named.
fn take_claim(h: &Host, a: &Args, guest: &str, mode: &str) -> Result<crate::io::claim::Claim> {
    let me = crate::io::claim::Owner::me(guest, &a.source_uri, &h.uri, mode);
    crate::io::claim::acquire(
        h,
        &me,
        Duration::from_secs(a.lock_timeout_s),
        crate::io::claim::POLL,
        Duration::from_secs(a.claim_lease_s.max(1)),
    )
    .map_err(|r| match r {
        crate::io::claim::Refused::Timeout {
            uuid,
            holder,
            waited,
        } => {
            let now = crate::io::claim::now_unix();
            let mut f = Failure::new(crate::io::claim::timeout_msg(
                M, &h.uri, &uuid, &holder, waited, now,
            ))
            .with("guest_on_source", mode == "migrate")
            .with("claim_uuid", &uuid);
            if let Ok(o) = &*holder {
                f = f.with(
                    "claim_holder",
                    json!({"host": o.host, "pid": o.pid, "guest": o.guest, "source": o.source, "age_s": o.age_s(now)}),
                );
            }
            anyhow::Error::new(f)
        }
        crate::io::claim::Refused::Error(e) => anyhow!("{M}: cannot claim {}: {e:#}", h.uri),
    })
}

/// Release the claim now and put it (and any trouble releasing it) in the result.
fn release_claim(o: &mut Outcome, c: Option<crate::io::claim::Claim>) {
    let Some(mut c) = c else { return };
    let mut rep = c.report();
    match c.release() {
        Ok(true) => rep["released"] = json!(true),
        Ok(false) => {
            rep["released"] = json!(false);
            o.warnings.push(format!("the claim {} on {} was gone or no longer ours when releasing it (removed by hand?)", c.uuid, c.destination));
        }
        Err(e) => {
            rep["released"] = json!(false);
            o.warnings.push(format!(
                "could not release the claim on {}: {e:#}; remove it: virsh -c {} undefine {}",
                c.destination,
                c.destination,
                libvirt::CLAIM_NAME
            ));
        }
    }
    if let Some((u, h, why)) = &c.took_over {
        o.warnings.push(format!(
            "took over a stale claim ({u}) left on {} by host {} pid {} (guest {}): {why}",
            c.destination, h.host, h.pid, h.guest
        ));
    }
    o.set("claim", rep);
}

fn cpumap(set: &CpuSet) -> Vec<u8> {
    let max = set.iter().max().unwrap_or(0);
    let mut m = vec![0u8; (max / 8 + 1) as usize];
    for c in set.iter() {
        m[(c / 8) as usize] |= 1 << (c % 8);
    }
    m
}

/// The placement a guest's current definition expresses (to validate it where it is).
pub fn placement_of(g: &Guest, topo: &GuestTopology) -> Placement {
    let reserved = g.reserved_cpus().map(|r| r.to_vec()).unwrap_or_default();
    let cells = topo
        .cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let host_cell = g
                .numa_cells
                .iter()
                .find(|n| n.id == c.id)
                .and_then(|n| n.host_nodes.first().copied())
                .or_else(|| g.memory_nodes.first().copied())
                .unwrap_or(0);
            let vcpu_pins = if topo.dedicated {
                c.vcpus
                    .iter()
                    .filter_map(|v| {
                        g.vcpu_pins
                            .get(&v.to_string())
                            .and_then(|p| p.first())
                            .map(|p| (v.to_string(), *p))
                    })
                    .collect()
            } else {
                BTreeMap::new()
            };
            CellPlacement {
                guest_cell: c.id,
                host_cell,
                vcpus: c.vcpus.clone(),
                vcpu_pins,
                memory_mb: c.memory_mb,
                pagesize_kb: g.hugepage_kb,
                cpuset_reserved: if i == 0 { reserved.clone() } else { vec![] },
                thread_policy: topo.thread_policy,
            }
        })
        .collect();
    Placement {
        cells,
        emulator_pins: g.emulator_pins.clone(),
        dedicated: topo.dedicated,
    }
}

/// Does the guest's definition carry exactly the plan's pins?
fn pins_match(g: &Guest, p: &Placement) -> Result<(), String> {
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

fn old_pins(g: &Guest) -> Value {
    json!({"vcpu_pins": g.vcpu_pins, "emulator_pins": g.emulator_pins, "memory_nodes": g.numa_cells.iter().map(|c| (c.id.to_string(), c.host_nodes.clone())).collect::<BTreeMap<_,_>>()})
}

// ---------------------------------------------------------------------------------------------
// Real affinity from /proc (libvirt pins threads by affinity when there are no cgroups).

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
fn local_affinity(uuid: &str) -> Option<Affinity> {
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
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

/// The plan against the live pins libvirt reports: each vCPU's pinning (vCPU pin info), the
/// affinity of its running thread (vCPU info cpumaps) and the emulator's pinning. Works wherever
/// the module runs; /proc is only an extra check on the guest's own host.
fn libvirt_pins_match(lp: &libvirt::LivePins, p: &Placement) -> Result<(), String> {
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
fn check_libvirt_pins(
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

// ---------------------------------------------------------------------------------------------
// CPU model check.

fn cpu_check(src: &Host, dst: &Host, xml: &str) -> Result<Value> {
    let root = crate::model::xml::parse(xml).map_err(|e| anyhow!("{e}"))?;
    let dtype = root.attr("type").unwrap_or("");
    let cpu = root.child("cpu");
    let mode = cpu.and_then(|c| c.attr("mode")).unwrap_or(
        if cpu.and_then(|c| c.child("model")).is_some() {
            "custom"
        } else {
            ""
        },
    );
    if dtype == "qemu" {
        return Ok(
            json!({"checked": false, "reason": "TCG guest (domain type qemu): QEMU emulates the CPU model, the destination's host CPU does not matter"}),
        );
    }
    let cpu_xml = match mode {
        "custom" => {
            rewrite::child_element(xml, "cpu").ok_or_else(|| anyhow!("cannot extract <cpu>"))?
        }
        "host-model" | "host-passthrough" | "maximum" => {
            let caps = src.capabilities_xml()?;
            rewrite::host_cpu_element(&caps)
                .ok_or_else(|| anyhow!("source capabilities have no <host><cpu>"))?
        }
        _ => {
            return Ok(
                json!({"checked": false, "reason": "the guest names no CPU model (hypervisor default): nothing to compare"}),
            )
        }
    };
    match dst.compare_cpu(&cpu_xml, 0) {
        Ok(r) if r == consts::VIR_CPU_COMPARE_INCOMPATIBLE => Err(Failure::new(format!(
            "{M}: the guest's CPU (mode {mode}) is not compatible with the destination's CPU; nothing was changed. Give the guests a common model (nova.conf cpu_mode=custom, cpu_model=...) or choose another destination"
        ))
        .into()),
        Ok(r) => Ok(json!({"checked": true, "mode": mode, "result": if r == consts::VIR_CPU_COMPARE_IDENTICAL { "identical" } else { "superset" }})),
        Err(e) => Ok(json!({"checked": false, "mode": mode, "reason": format!("libvirt could not compare: {}", lv(e))})),
    }
}

// ---------------------------------------------------------------------------------------------
// Block migration: disks and destination preparation.

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub target: String,
    pub path: String,
    pub format: String,
    pub capacity_bytes: u64,
    /// Where it goes on the destination, as seen over SSH.
    pub dest_path: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
}

fn local_disks(dom: &Domain, xml: &str) -> Result<Vec<Disk>> {
    let root = crate::model::xml::parse(xml).map_err(|e| anyhow!("{e}"))?;
    let mut out = Vec::new();
    if let Some(devs) = root.child("devices") {
        for d in devs.children("disk") {
            if d.attr("type") != Some("file")
                || d.attr("device").unwrap_or("disk") != "disk"
                || d.child("readonly").is_some()
                || d.child("shareable").is_some()
            {
                continue;
            }
            let Some(path) = d.child("source").and_then(|s| s.attr("file")) else {
                continue;
            };
            let target = d
                .child("target")
                .and_then(|t| t.attr("dev"))
                .unwrap_or("")
                .to_string();
            let format = d
                .child("driver")
                .and_then(|t| t.attr("type"))
                .unwrap_or("raw")
                .to_string();
            if let Some(bs) = d.child("backingStore") {
                if bs.child("source").is_some() {
                    return Err(Failure::new(format!(
                        "{M}: disk {target} ({path}) has a backing file; block migration of backing chains is not supported here (Nova copies the base image first): nothing was changed"
                    ))
                    .into());
                }
            }
            let info = dom
                .block_info(&target, 0)
                .map_err(|e| anyhow!("{M}: cannot read the size of disk {target}: {}", lv(e)))?;
            out.push(Disk {
                target,
                path: path.to_string(),
                format,
                capacity_bytes: info.capacity,
                dest_path: String::new(),
                created: false,
            });
        }
    }
    Ok(out)
}

fn ssh_connect(a: &Args) -> Result<Ssh> {
    let host = a.ssh_host.as_deref().ok_or_else(|| Failure::new(format!("{M}: storage block needs ssh_host (the destination's sshd, Kolla nova_ssh) to prepare its disks")))?;
    let key = a.ssh_key.as_deref().ok_or_else(|| {
        Failure::new(format!(
            "{M}: storage block needs ssh_key (private key accepted by the destination's sshd)"
        ))
    })?;
    Ssh::connect(
        host,
        a.ssh_port,
        &a.ssh_user,
        key,
        a.ssh_known_hosts.as_deref(),
        Duration::from_secs(20),
    )
}

/// Nova's pre_live_migration for a block migration: instance dir and empty disks of the same
/// virtual size and format. Existing files of the right size are kept (rerun after a failure).
fn prepare_disks(
    ssh: &Ssh,
    disks: &mut [Disk],
    instance_dir: Option<&str>,
    uuid: &str,
) -> Result<()> {
    for d in disks.iter_mut() {
        let file = Path::new(&d.path)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "disk".into());
        let dir = match instance_dir {
            Some(i) => i.replace("{uuid}", uuid),
            None => Path::new(&d.path)
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "/".into()),
        };
        d.dest_path = format!("{}/{}", dir.trim_end_matches('/'), file);
        let qd = quote(&d.dest_path);
        ssh.run(&format!("mkdir -p {}", quote(&dir)))?;
        let exists = ssh.exec(&format!("test -e {qd}"))?.status == 0;
        if exists {
            let info = ssh.run(&format!("qemu-img info --output=json -U {qd}"))?;
            let v: Value = serde_json::from_str(&info).unwrap_or(Value::Null);
            let size = v["virtual-size"].as_u64().unwrap_or(0);
            let fmt = v["format"].as_str().unwrap_or("");
            if size != d.capacity_bytes || fmt != d.format {
                return Err(Failure::new(format!(
                    "{M}: {} already exists on the destination as {fmt} of {size} bytes, the guest's disk {} is {} of {} bytes; remove it (or check it is not another guest's) and rerun: nothing was migrated",
                    d.dest_path, d.target, d.format, d.capacity_bytes
                ))
                .into());
            }
            continue;
        }
        ssh.run(&format!(
            "qemu-img create -q -f {} {qd} {}",
            quote(&d.format),
            d.capacity_bytes
        ))?;
        d.created = true;
    }
    Ok(())
}

fn cleanup_disks(ssh: &Ssh, disks: &[Disk]) -> Vec<String> {
    let mut removed = Vec::new();
    for d in disks.iter().filter(|d| d.created) {
        if ssh
            .exec(&format!("rm -f {}", quote(&d.dest_path)))
            .map(|o| o.status == 0)
            .unwrap_or(false)
        {
            removed.push(d.dest_path.clone());
        }
    }
    removed
}

// ---------------------------------------------------------------------------------------------
// Job monitor.

#[derive(Debug, Clone, Default, Serialize)]
pub struct JobFigures {
    pub samples: u64,
    pub elapsed_ms: u64,
    pub data_total_bytes: u64,
    pub data_processed_bytes: u64,
    pub data_remaining_bytes: u64,
    pub memory_iterations: u64,
    pub downtime_set_ms: Vec<(u64, u64)>,
    pub timeout: Option<String>,
    pub action_taken: Option<String>,
    pub paused_source: bool,
    pub errors: Vec<String>,
    pub job_stats_errors: u64,
    pub last_job_stats_error: Option<String>,
    /// Bytes dirtied per second at the last sample.
    pub dirty_rate_bytes_s: u64,
    /// The longest time the remaining data did not shrink, in seconds.
    pub longest_stall_s: u64,
}

/// One line of the progress file.
#[derive(Debug, Serialize)]
struct ProgressLine<'a> {
    elapsed_s: u64,
    data_remaining_bytes: u64,
    data_processed_bytes: u64,
    data_total_bytes: u64,
    dirty_rate_bytes_s: u64,
    memory_iteration: u64,
    downtime_ms: Option<u64>,
    downtime_step: String,
    stalled_s: u64,
    /// Set while stalled: how long until progress_timeout_s acts, and what it will do.
    stall: Option<String>,
    phase: &'a str,
}

struct MonitorCfg {
    progress_file: Option<PathBuf>,
    steps: Vec<(u64, u64)>, // (delay s, downtime ms)
    completion_timeout_s: u64,
    progress_timeout_s: u64,
    action: TimeoutAction,
    post_copy: bool,
}

/// Nova's downtime steps (`nova.virt.libvirt.migration.downtime_steps`).
pub fn downtime_steps(
    max_ms: u64,
    steps: u64,
    delay_per_gib: u64,
    data_gib: f64,
) -> Vec<(u64, u64)> {
    // Bounded where it comes in (Args::validate); clamped here too, as the list is allocated.
    let steps = steps.clamp(1, limits::MAX_DOWNTIME_STEPS);
    let delay = (delay_per_gib as f64 * data_gib) as u64;
    let base = max_ms / steps;
    let offset = (max_ms - base) / steps;
    (0..=steps)
        .map(|i| {
            (
                delay.saturating_mul(i),
                base.saturating_add(offset.saturating_mul(i)),
            )
        })
        .collect()
}

/// Watch the migration job from a connection of its own (the migration call occupies the other).
fn monitor(
    uri: String,
    uuid: String,
    cfg: MonitorCfg,
    stop: Arc<AtomicBool>,
    figs: Arc<Mutex<JobFigures>>,
) {
    let t0 = Instant::now();
    let dom = match libvirt::connect(&uri).and_then(|h| h.lookup(&uuid).map(|d| (h, d))) {
        Ok((_h, d)) => d,
        Err(e) => {
            figs.lock()
                .unwrap_or_else(|p| p.into_inner())
                .errors
                .push(format!(
                    "monitor: {e:#}; the job is not watched (no timeouts)"
                ));
            return;
        }
    };
    let mut step = 0usize;
    let mut last_remaining = u64::MAX;
    let mut last_progress = Instant::now();
    let mut acted = false;
    let mut progress = cfg.progress_file.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| {
                figs.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .errors
                    .push(format!("progress_file {}: {e}", p.display()))
            })
            .ok()
    });
    let mut last_line = Instant::now() - Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        // Woken early when the migration returns (unpark): joining this thread then costs no poll
        // interval and no extra job_stats round trip (measured: ~100 ms of every migration).
        std::thread::park_timeout(Duration::from_millis(100));
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let st = match dom.job_stats(0) {
            Ok(s) => s,
            Err(e) => {
                let mut f = figs.lock().unwrap_or_else(|p| p.into_inner());
                f.job_stats_errors += 1;
                f.last_job_stats_error = Some(lv(e));
                continue;
            }
        };
        if st.r#type != consts::VIR_DOMAIN_JOB_BOUNDED
            && st.r#type != consts::VIR_DOMAIN_JOB_UNBOUNDED
        {
            continue;
        }
        let elapsed = t0.elapsed();
        let mut f = figs.lock().unwrap_or_else(|p| p.into_inner());
        f.samples += 1;
        f.elapsed_ms = st.time_elapsed.unwrap_or(elapsed.as_millis() as u64);
        f.data_total_bytes = st.data_total.unwrap_or(f.data_total_bytes);
        f.data_processed_bytes = st.data_processed.unwrap_or(f.data_processed_bytes);
        let remaining = st.data_remaining.unwrap_or(0);
        f.data_remaining_bytes = remaining;
        f.memory_iterations = f.memory_iterations.max(st.mem_iteration.unwrap_or(0));
        // Downtime steps: the next step when its delay has passed.
        while step < cfg.steps.len() && elapsed.as_secs() >= cfg.steps[step].0 {
            let ms = cfg.steps[step].1;
            match dom.migrate_set_max_downtime(ms, 0) {
                Ok(()) => f.downtime_set_ms.push((elapsed.as_millis() as u64, ms)),
                Err(e) => f
                    .errors
                    .push(format!("set max downtime {ms} ms: {}", lv(e))),
            }
            step += 1;
        }
        if remaining < last_remaining {
            last_remaining = remaining;
            last_progress = Instant::now();
        }
        let stalled_s = last_progress.elapsed().as_secs();
        f.longest_stall_s = f.longest_stall_s.max(stalled_s);
        f.dirty_rate_bytes_s = st
            .mem_dirty_rate
            .unwrap_or(0)
            .saturating_mul(st.mem_page_size.unwrap_or(4096));
        if let Some(out) = progress
            .as_mut()
            .filter(|_| last_line.elapsed() >= Duration::from_secs(1))
        {
            last_line = Instant::now();
            // A stall is shown before progress_timeout_s acts on it.
            let stall = (stalled_s >= 2).then(|| {
                if cfg.progress_timeout_s > 0 {
                    format!(
                        "no progress for {stalled_s} s: {} in {} s (progress_timeout_s {})",
                        match cfg.action {
                            TimeoutAction::Abort => "aborts",
                            TimeoutAction::ForceComplete => "forces completion",
                        },
                        cfg.progress_timeout_s.saturating_sub(stalled_s),
                        cfg.progress_timeout_s
                    )
                } else {
                    format!("no progress for {stalled_s} s (progress_timeout_s 0: never acts)")
                }
            });
            let line = ProgressLine {
                elapsed_s: elapsed.as_secs(),
                data_remaining_bytes: remaining,
                data_processed_bytes: f.data_processed_bytes,
                data_total_bytes: f.data_total_bytes,
                dirty_rate_bytes_s: f.dirty_rate_bytes_s,
                memory_iteration: f.memory_iterations,
                downtime_ms: f.downtime_set_ms.last().map(|d| d.1),
                downtime_step: format!("{step}/{}", cfg.steps.len()),
                stalled_s,
                stall,
                phase: if acted {
                    "acting on a timeout"
                } else {
                    "copying"
                },
            };
            if let Ok(text) = serde_json::to_string(&line) {
                use std::io::Write;
                let _ = writeln!(out, "{text}");
            }
        }
        if acted {
            continue;
        }
        let why = if cfg.completion_timeout_s > 0 && elapsed.as_secs() >= cfg.completion_timeout_s {
            Some(format!(
                "not complete after {} s (completion_timeout_s)",
                cfg.completion_timeout_s
            ))
        } else if cfg.progress_timeout_s > 0
            && last_progress.elapsed().as_secs() >= cfg.progress_timeout_s
        {
            Some(format!(
                "no progress for {} s (progress_timeout_s; {remaining} bytes remaining)",
                cfg.progress_timeout_s
            ))
        } else {
            None
        };
        if let Some(why) = why {
            acted = true;
            f.timeout = Some(why);
            let res = match cfg.action {
                TimeoutAction::Abort => {
                    f.action_taken = Some("abort".into());
                    dom.abort_job()
                }
                TimeoutAction::ForceComplete if cfg.post_copy => {
                    f.action_taken = Some("force_complete: switch to post-copy".into());
                    dom.migrate_start_post_copy(0)
                }
                TimeoutAction::ForceComplete => {
                    f.action_taken =
                        Some("force_complete: pause the guest so the migration completes".into());
                    let r = dom.suspend();
                    if r.is_ok() {
                        f.paused_source = true;
                    }
                    r
                }
            };
            if let Err(e) = res {
                let what = f.action_taken.clone().unwrap_or_default();
                f.errors.push(format!("{what}: {}", lv(e)));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The module.

struct SourceGuest {
    dom: Domain,
    guest: Guest,
    live_xml: String,
    inactive_xml: String,
    persistent: bool,
}

fn read_source(src: &Host, name: &str) -> Result<Option<SourceGuest>> {
    let dom = match src.find(name) {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(Failure::new(format!(
                "{M}: cannot ask the source's libvirtd about {name}: {}; nothing was changed",
                lv(e)
            ))
            .into())
        }
    };
    let guest = libvirt::guest_of(&dom)?;
    let live_xml = dom
        .xml_desc(consts::VIR_DOMAIN_XML_MIGRATABLE)
        .map_err(|e| anyhow!("guest {name}: cannot read its XML: {}", lv(e)))?;
    let persistent = dom.is_persistent().unwrap_or(false);
    let inactive_xml = if persistent {
        dom.xml_desc(consts::VIR_DOMAIN_XML_INACTIVE | consts::VIR_DOMAIN_XML_MIGRATABLE)
            .map_err(|e| anyhow!("guest {name}: cannot read its inactive XML: {}", lv(e)))?
    } else {
        live_xml.clone()
    };
    Ok(Some(SourceGuest {
        dom,
        guest,
        live_xml,
        inactive_xml,
        persistent,
    }))
}

fn diff_value(before: &str, after: &str, header: &str) -> Value {
    json!({"before": before, "after": after, "before_header": format!("{header} (before)"), "after_header": format!("{header} (after)")})
}

fn placement_msg(p: &Placement) -> String {
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

fn base_fields(
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

/// Validate a guest's current placement on a host (for idempotency and post checks).
fn current_valid(
    facts: &NumaFacts,
    g: &Guest,
    tp: Option<ThreadPolicy>,
) -> (GuestTopology, Placement, Result<(), String>) {
    let topo = GuestTopology::from_guest(g, tp);
    let p = placement_of(g, &topo);
    let state = facts.host_state(Some(&g.uuid));
    let mut r = fit::validate(&state, &topo, &p);
    if r.is_ok() {
        if let Some(o) = facts.overlaps.iter().find(|o| o.guests.contains(&g.name)) {
            r = Err(format!(
                "pCPU {} is pinned by {}",
                o.cpu,
                o.guests.join(" and ")
            ));
        }
    }
    (topo, p, r)
}

pub fn run(a: Args, ctx: &Context) -> Result<Outcome> {
    let same = a.dest_uri.as_deref().is_none_or(|d| d == a.source_uri);
    match a.mode {
        Mode::Repin => {
            if !same {
                return Err(Failure::new(format!("{M}: mode repin works on one host: give source_uri only (or dest_uri equal to it)")).into());
            }
            repin_in_place(&a, ctx)
        }
        Mode::Migrate => {
            if same {
                return Err(Failure::new(format!("{M}: dest_uri is missing or equals source_uri; to move pins on the same host use mode: repin")).into());
            }
            migrate(&a, ctx)
        }
    }
}

fn migrate(a: &Args, ctx: &Context) -> Result<Outcome> {
    let dest_uri = a.dest_uri.clone().unwrap_or_default();
    let src = libvirt::connect(&a.source_uri)?;
    let dst = libvirt::connect(&dest_uri)?;
    let source_host = a
        .source_host
        .clone()
        .or_else(|| conf_host(a.source_nova_conf.as_deref()))
        .unwrap_or_else(|| src.hostname());
    let dest_host = a
        .dest_host
        .clone()
        .or_else(|| conf_host(a.dest_nova_conf.as_deref()))
        .unwrap_or_else(|| dst.hostname());
    let dest_node = a.dest_node.clone().unwrap_or_else(|| dest_host.clone());

    let sg = read_source(&src, &a.guest)?;
    let on_source_active = sg
        .as_ref()
        .is_some_and(|s| s.dom.is_active().unwrap_or(false));
    // A source copy still paused inside a migration while the destination runs the guest: the
    // handover completed but its Confirm step never ran (the source's libvirtd died). The
    // guest is the destination's; the path below removes the source's copy.
    let handed_over = on_source_active
        && sg.as_ref().is_some_and(|s| {
            matches!(
                Presence::of(&src, &a.source_uri, &s.guest.uuid),
                Presence::Defined {
                    migrating: true,
                    ..
                }
            ) && Presence::settled(&dst, &dest_uri, &s.guest.uuid, Duration::from_secs(15))
                .running()
                == Some(true)
        });
    if !on_source_active || handed_over {
        // Idempotency: already on the destination with a valid placement? (By uuid when the
        // source still has a definition: the name may differ.)
        let key = sg
            .as_ref()
            .map(|s| s.guest.uuid.clone())
            .unwrap_or(a.guest.clone());
        let ddom = dst.find(&key).map_err(|e| {
            Failure::new(format!("{M}: {} is not running on {}, and the destination's libvirtd cannot be asked whether it runs there: {}; nothing was changed", a.guest, a.source_uri, lv(e)))
        })?;
        if let Some(ddom) = ddom.filter(|d| d.is_active().unwrap_or(false)) {
            let f = facts::gather_live(&dest_uri, a.dest_nova_conf.as_deref(), Some(&dest_host))?;
            let g = libvirt::guest_of(&ddom)?;
            let (_, p, valid) = current_valid(&f, &g, a.thread_policy);
            // One host per guest: a definition the source kept is a stale copy.
            let stale = presence::remove_stale_copy(&src, &a.source_uri, &g.uuid, ctx.check_mode);
            let note = stale.note(&g.name, &source_host);
            let mut o = Outcome::new(
                matches!(stale, Stale::Removed(_) | Stale::WouldRemove(_)),
                format!(
                    "{} already runs on {dest_host} with a valid placement: {}{}",
                    g.name,
                    placement_msg(&p),
                    note.as_ref().map(|n| format!("; {n}")).unwrap_or_default()
                ),
            );
            base_fields(&mut o, &g.uuid, &source_host, &dest_host, &dest_node, &p);
            o.set("guest", &g.name);
            o.set("stale_source_copy", stale.to_json());
            if let Err(why) = valid {
                o.failed = true;
                o.msg = format!("{} already runs on {dest_host} but its placement is not valid there ({why}); fix it with mode: repin on {dest_uri}{}", g.name, note.as_ref().map(|n| format!("; {n}")).unwrap_or_default());
            } else if !stale.ok() {
                o.failed = true;
            }
            return Ok(o);
        }
        return Err(match sg {
            Some(_) => Failure::new(format!("{M}: {} is not running on {}; live migration needs a running guest (start it, or move a stopped guest offline)", a.guest, a.source_uri)),
            None => Failure::new(format!("{M}: no guest named or with uuid '{}' on {} nor running on {dest_uri}", a.guest, a.source_uri)),
        }
        .into());
    }
    let sg = sg.expect("checked above");
    let g = &sg.guest;
    match Presence::of(&dst, &dest_uri, &g.uuid) {
        Presence::Defined { active: true, .. } => {
            return Err(Failure::new(format!("{M}: {} runs on both {} and {dest_uri}; resolve that by hand first (destroy the stale copy)", g.name, a.source_uri)).into());
        }
        Presence::Unknown(why) => {
            return Err(Failure::new(format!("{M}: cannot ask the destination's libvirtd whether {} is there: {why}; nothing was changed", g.name)).into());
        }
        _ => {}
    }
    let topo = GuestTopology::from_guest(g, a.thread_policy);
    let cpu = cpu_check(&src, &dst, &sg.live_xml)?;

    // The claim: exclusive per destination, in its libvirtd, held to the end of this function
    // (released explicitly at the end, by Drop on every early return). None in check mode.
    let claim = if ctx.check_mode {
        None
    } else {
        Some(take_claim(&dst, a, &g.name, "migrate")?)
    };
    let claim_rep = claim.as_ref().map(|c| c.report());
    // The destination's live state, read under the claim.
    let dfacts = facts::gather_live(&dest_uri, a.dest_nova_conf.as_deref(), Some(&dest_host))?;
    let state = dfacts.host_state(Some(&g.uuid));
    let placement = match fit::fit_topology(&state, &topo, &FitOptions::default()) {
        Ok(p) => p,
        Err(r) => {
            return Err(Failure::new(r.msg.clone())
                .with("reasons", &r.reasons)
                .with("instance_uuid", &g.uuid)
                .with("guest", &g.name)
                .with("dest_host", &dest_host)
                .with("guest_on_source", true)
                .with("claim", &claim_rep)
                .with("hint", format!("nothing was changed: {} keeps running on {source_host} with its pins; choose another destination or free pCPUs/memory on {dest_host}", g.name))
                .into());
        }
    };
    let dest_xml = rewrite::rewrite(&sg.live_xml, &placement).map_err(|e| {
        Failure::new(format!(
            "{M}: cannot rewrite the guest XML: {e}; nothing was changed"
        ))
    })?;
    let persist_xml = rewrite::rewrite(&sg.inactive_xml, &placement).map_err(|e| {
        Failure::new(format!(
            "{M}: cannot rewrite the persistent XML: {e}; nothing was changed"
        ))
    })?;
    let diff = diff_value(
        &sg.live_xml,
        &dest_xml,
        &format!("{} on {source_host} -> {dest_host}", g.name),
    );
    let data_gib = (g.memory_mb as f64 / 1024.0).max(2.0);

    let mut disks = match a.storage {
        Storage::Block => local_disks(&sg.dom, &sg.live_xml)?,
        Storage::Shared => Vec::new(),
    };
    let disk_gib: f64 = disks
        .iter()
        .map(|d| d.capacity_bytes as f64 / (1u64 << 30) as f64)
        .sum();
    let data_gib = data_gib + disk_gib;

    let mut o = Outcome::new(true, String::new());
    base_fields(
        &mut o,
        &g.uuid,
        &source_host,
        &dest_host,
        &dest_node,
        &placement,
    );
    o.set("guest", &g.name);
    o.set("old_pins", old_pins(g));
    o.set("cpu_check", &cpu);
    o.set("storage", a.storage);
    o.diff = Some(diff);
    if ctx.check_mode {
        o.msg = format!(
            "would migrate {} from {source_host} to {dest_host}: {}",
            g.name,
            placement_msg(&placement)
        );
        o.set("dest_xml", &dest_xml);
        o.set("xml_diff", rewrite::line_diff(&sg.live_xml, &dest_xml));
        o.set("disks", &disks);
        return Ok(o);
    }
    o.set("claim", &claim_rep);

    // Block migration: prepare the destination.
    let ssh = if a.storage == Storage::Block && !disks.is_empty() {
        let s = ssh_connect(a)?;
        prepare_disks(&s, &mut disks, a.instance_dir.as_deref(), &g.uuid).map_err(|e| {
            let removed = cleanup_disks(&s, &disks);
            match e.downcast::<Failure>() {
                Ok(f) => anyhow::Error::new(f.with("removed_on_destination", &removed)),
                Err(e) => anyhow::Error::new(Failure::new(format!("{M}: preparing the destination over SSH failed: {e:#}; nothing was migrated")).with("removed_on_destination", &removed)),
            }
        })?;
        o.set("ssh_host_key_sha256", &s.host_key_sha256);
        Some(s)
    } else {
        None
    };
    o.set("disks", &disks);

    // Migrate.
    let mut flags = consts::VIR_MIGRATE_LIVE
        | consts::VIR_MIGRATE_PEER2PEER
        | consts::VIR_MIGRATE_PERSIST_DEST
        | consts::VIR_MIGRATE_UNDEFINE_SOURCE
        | consts::VIR_MIGRATE_ABORT_ON_ERROR;
    if a.auto_converge {
        flags |= consts::VIR_MIGRATE_AUTO_CONVERGE;
    }
    if a.post_copy {
        flags |= consts::VIR_MIGRATE_POSTCOPY;
    }
    if a.storage == Storage::Block && !disks.is_empty() {
        flags |= consts::VIR_MIGRATE_NON_SHARED_DISK;
    }
    if !sg.persistent {
        flags &= !consts::VIR_MIGRATE_UNDEFINE_SOURCE;
    }
    let params = MigrateParameters {
        dest_xml: Some(dest_xml.clone()),
        persist_xml: sg.persistent.then(|| persist_xml.clone()),
        uri: a.migrate_uri.clone(),
        bandwidth: (a.bandwidth_mibps > 0).then_some(a.bandwidth_mibps),
        migrate_disks: if flags & consts::VIR_MIGRATE_NON_SHARED_DISK != 0 {
            disks.iter().map(|d| d.target.clone()).collect()
        } else {
            Vec::new()
        },
    };
    let completion = a.completion_timeout_s.unwrap_or((800.0 * data_gib) as u64);
    let cfg = MonitorCfg {
        progress_file: a.progress_file.clone(),
        steps: downtime_steps(
            a.max_downtime_ms,
            a.downtime_steps,
            a.downtime_delay_s,
            data_gib,
        ),
        completion_timeout_s: completion,
        progress_timeout_s: a.progress_timeout_s,
        action: a.timeout_action,
        post_copy: a.post_copy,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let figs = Arc::new(Mutex::new(JobFigures::default()));
    let mon = {
        let (u, id, s, f) = (
            a.source_uri.clone(),
            g.uuid.clone(),
            stop.clone(),
            figs.clone(),
        );
        std::thread::spawn(move || monitor(u, id, cfg, s, f))
    };
    let t0 = Instant::now();
    let started_unix_ms = unix_ms();
    let res = sg.dom.migrate_to_uri3(Some(&dest_uri), params, flags);
    let total_ms = t0.elapsed().as_millis() as u64;
    stop.store(true, Ordering::SeqCst);
    mon.thread().unpark();
    let _ = mon.join();
    let figs = figs.lock().map(|f| f.clone()).unwrap_or_default();

    if let Err(e) = res {
        return Err(migration_failed(
            a,
            &src,
            &dst,
            &sg,
            &dest_host,
            &source_host,
            &lv(e),
            &figs,
            total_ms,
            ssh.as_ref(),
            &disks,
        )
        .with("claim", &claim_rep)
        .into());
    }

    // Figures: the destination keeps the completed job's statistics.
    let ddom = match Presence::of(&dst, &dest_uri, &g.uuid) {
        Presence::Defined { dom, .. } => dom,
        Presence::Absent => {
            return Err(anyhow!(
                "{M}: the migration returned success but {dest_uri} has no {}; CHECK BY HAND where it runs (virsh list --all on both hosts)",
                g.name
            ))
        }
        Presence::Unknown(why) => {
            return Err(anyhow!(
                "{M}: the migration returned success but the destination's libvirtd cannot be asked about {} ({why}); CHECK BY HAND where it runs (virsh list --all on both hosts), then rerun: a rerun verifies and removes a stale copy",
                g.name
            ))
        }
    };
    let done = ddom.job_stats(consts::VIR_DOMAIN_JOB_STATS_COMPLETED).ok();
    let mig = json!({
        "total_time_ms": total_ms,
        // Wall-clock start, so that migrations run at the same time (a drain's wave) can be told apart.
        "started_unix_ms": started_unix_ms,
        "job_time_ms": done.as_ref().and_then(|d| d.time_elapsed).unwrap_or(figs.elapsed_ms),
        "downtime_ms": done.as_ref().and_then(|d| d.downtime),
        "data_total_bytes": done.as_ref().and_then(|d| d.data_total).unwrap_or(figs.data_total_bytes),
        "data_processed_bytes": done.as_ref().and_then(|d| d.data_processed).unwrap_or(figs.data_processed_bytes),
        "memory_iterations": done.as_ref().and_then(|d| d.mem_iteration).unwrap_or(figs.memory_iterations).max(figs.memory_iterations),
        "disk_processed_bytes": done.as_ref().and_then(|d| d.disk_processed),
        "monitor": figs,
        "flags": flags,
    });
    o.set("migration", &mig);
    if figs.paused_source {
        // force_complete paused the guest: it must run on the destination.
        if let Ok((libvirt::DomainState::Paused, _)) = ddom.state() {
            let _ = ddom.resume();
        }
    }

    // Verify.
    let verify = verify_after(a, &src, &dst, &dest_uri, &dest_host, g, &placement);
    o.set("verify", &verify.0);
    if let Err(why) = verify.1 {
        o.failed = true;
        o.msg = format!("{} migrated to {dest_host} but the check after failed: {why}; the guest runs on {dest_host}: fix its pins with mode: repin there", g.name);
        release_claim(&mut o, claim);
        return Ok(o);
    }
    o.msg = format!(
        "migrated {} from {source_host} to {dest_host} in {total_ms} ms: {}",
        g.name,
        placement_msg(&placement)
    );
    release_claim(&mut o, claim);
    Ok(o)
}

#[allow(clippy::too_many_arguments)]
fn migration_failed(
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

fn verify_after(
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

// ---------------------------------------------------------------------------------------------
// Mode repin: same host.

fn repin_in_place(a: &Args, ctx: &Context) -> Result<Outcome> {
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

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_and_paths_are_bounded_in_the_args() {
        let parse = |extra: &str| {
            crate::ansible::parse_args::<Args>(
                M,
                &format!(r#"{{"guest": "g", "source_uri": "qemu:///system"{extra}}}"#),
            )
            .map(|_| ())
            .map_err(|f| f.msg)
        };
        assert!(parse("").is_ok());
        assert!(parse(r#", "downtime_steps": 1000"#).is_ok());
        for (extra, field) in [
            (r#", "downtime_steps": 1099511627776"#, "downtime_steps"),
            (
                r#", "downtime_steps": 18446744073709551615"#,
                "downtime_steps",
            ),
            (
                r#", "max_downtime_ms": 18446744073709551615"#,
                "max_downtime_ms",
            ),
            (
                r#", "downtime_delay_s": 18446744073709551615"#,
                "downtime_delay_s",
            ),
            (r#", "lock_dir": "run/lock""#, "lock_dir"),
            (r#", "lock_dir": "/run/../etc""#, "lock_dir"),
            (r#", "dest_uri": "qemu+tcp://a\u0000b/system""#, "dest_uri"),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.starts_with(&format!("{M}: argument '{field}': ")), "{e}");
        }
        // The step list is never larger than the bound, whatever the library caller passes.
        assert_eq!(downtime_steps(500, u64::MAX, u64::MAX, 1e30).len(), 1001);
    }

    #[test]
    fn nova_downtime_steps() {
        // Nova: downtime 500, steps 10, delay 75, 2 GiB -> (0,50), (150,95), ..., (1500,500)
        let s = downtime_steps(500, 10, 75, 2.0);
        assert_eq!(s.len(), 11);
        assert_eq!(s[0], (0, 50));
        assert_eq!(s[1], (150, 95));
        assert_eq!(s[10], (1500, 500));
    }

    #[test]
    fn libvirt_live_pins_against_the_plan() {
        let x = crate::model::domain::fixtures::pinned("vm1", "u-1", &[2, 3], None, 1, 2048);
        let g = crate::model::domain::parse_guest(&x).unwrap();
        let p = placement_of(&g, &GuestTopology::from_guest(&g, None));
        let mut lp = libvirt::LivePins::default();
        for (v, pc) in [("0", 2), ("1", 3)] {
            lp.vcpu_pins.insert(v.into(), vec![pc]);
            lp.vcpu_threads.insert(v.into(), vec![pc]);
        }
        lp.emulator_pins = p.emulator_pins.iter().rev().copied().collect();
        assert_eq!(libvirt_pins_match(&lp, &p), Ok(()));
        // A thread whose affinity was not applied (pin info alone would look fine).
        lp.vcpu_threads.insert("1".into(), vec![0, 1, 2, 3]);
        let e = libvirt_pins_match(&lp, &p).unwrap_err();
        assert!(
            e.contains("vCPU 1 thread may run on [0, 1, 2, 3], plan 3"),
            "{e}"
        );
        lp.vcpu_pins.remove("0");
        assert!(libvirt_pins_match(&lp, &p)
            .unwrap_err()
            .contains("vCPU 0: libvirt reports no pinning"));
    }

    #[test]
    fn cpumaps() {
        assert_eq!(cpumap(&[0].into_iter().collect()), vec![1]);
        assert_eq!(cpumap(&[1, 9].into_iter().collect()), vec![2, 2]);
    }

    #[test]
    fn placement_of_a_guest_and_pin_match() {
        let x = crate::model::domain::fixtures::pinned("vm1", "u-1", &[2, 3], None, 1, 2048);
        let g = crate::model::domain::parse_guest(&x).unwrap();
        let t = GuestTopology::from_guest(&g, None);
        let p = placement_of(&g, &t);
        assert_eq!(p.cells[0].host_cell, 1);
        assert_eq!(p.cells[0].vcpu_pins["1"], 3);
        assert!(pins_match(&g, &p).is_ok());
        let mut q = p.clone();
        q.cells[0].vcpu_pins.insert("0".into(), 5);
        assert!(pins_match(&g, &q).unwrap_err().contains("vCPU 0"));
    }

    /// Field case 3 on a two-cell host (the lab has one cell): 2 free pCPUs in total, one per cell,
    /// so a 2-vCPU guest is refused with the in-band message; the same guest split in two guest
    /// cells fits, and the rewrite binds each guest cell's memory to its own host cell.
    #[test]
    fn split_free_cpus_refused_and_two_cell_rewrite() {
        use crate::model::domain::fixtures::pinned;
        let caps = crate::model::topology::fixtures::caps(2, 2, 1, 1024, &[]);
        let residents = vec![
            ("a.xml".to_string(), pinned("a", "u-a", &[0], None, 0, 64)),
            ("b.xml".to_string(), pinned("b", "u-b", &[2], None, 1, 64)),
        ];
        let f = facts::from_saved("h", &caps, &residents, &Default::default()).unwrap();
        let state = f.host_state(None);
        let g =
            crate::model::domain::parse_guest(&pinned("vm", "u-vm", &[5, 6], None, 0, 64)).unwrap();
        let topo = GuestTopology::from_guest(&g, None);
        let r = fit::fit_topology(&state, &topo, &FitOptions::default()).unwrap_err();
        assert_eq!(r.msg, "No numa available with 2 vcpu and 64 memory");
        // The same guest with two guest NUMA cells of one vCPU each.
        let two = pinned("vm", "u-vm", &[5, 6], None, 0, 64)
            .replace("<numa><cell id='0' cpus='0-1' memory='65536' unit='KiB'/></numa>", "<numa><cell id='0' cpus='0' memory='32768' unit='KiB'/><cell id='1' cpus='1' memory='32768' unit='KiB'/></numa>")
            .replace("<memnode cellid='0' mode='strict' nodeset='0'/>", "<memnode cellid='0' mode='strict' nodeset='0'/><memnode cellid='1' mode='strict' nodeset='0'/>");
        let g2 = crate::model::domain::parse_guest(&two).unwrap();
        let topo2 = GuestTopology::from_guest(&g2, None);
        let p = fit::fit_topology(&state, &topo2, &FitOptions::default()).unwrap();
        let out = rewrite::rewrite(&two, &p).unwrap();
        let after = crate::model::domain::parse_guest(&out).unwrap();
        assert!(pins_match(&after, &p).is_ok(), "{out}");
        let nodes: Vec<Vec<u32>> = after
            .numa_cells
            .iter()
            .map(|c| c.host_nodes.clone())
            .collect();
        assert_eq!(nodes, vec![vec![0], vec![1]]);
        assert!(
            out.contains("<memory mode='strict' nodeset='0-1'/>"),
            "{out}"
        );
        assert_eq!(after.vcpu_pins["0"], vec![1]);
        assert_eq!(after.vcpu_pins["1"], vec![3]);
    }

    #[test]
    fn conf_host_name() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nova.conf");
        std::fs::write(&p, "[DEFAULT]\nhost = cmp2\n[libvirt]\nhost = x\n").unwrap();
        assert_eq!(conf_host(Some(&p)).as_deref(), Some("cmp2"));
    }
}
