use crate::ansible::ModuleArgs;
use crate::fit::ThreadPolicy;
use crate::limits;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// destination (Nova: `/var/lib/nova/instances/<uuid>`; `{uuid}` is replaced). Default: the
    /// directory of each disk on the source.
    pub instance_dir: Option<String>,
    /// Also check the threads' affinity in /proc when the guest's QEMU runs on this machine (the
    /// live pins and thread affinity libvirt reports are always checked).
    #[serde(default = "yes")]
    pub verify_affinity: bool,
}

pub(super) fn d_mode() -> Mode {
    Mode::Migrate
}
pub(super) fn d_storage() -> Storage {
    Storage::Shared
}
pub(super) fn d_downtime() -> u64 {
    500
}
pub(super) fn d_steps() -> u64 {
    10
}
pub(super) fn d_delay() -> u64 {
    75
}
pub(super) fn d_progress() -> u64 {
    0
}
pub(super) fn d_action() -> TimeoutAction {
    TimeoutAction::Abort
}
pub(super) fn d_lock_dir() -> PathBuf {
    PathBuf::from("/run/lock/numa-repin")
}
pub(super) fn d_claim_lease() -> u64 {
    crate::io::claim::LEASE.as_secs()
}
pub(super) fn d_lock_timeout() -> u64 {
    3600
}
pub(super) fn d_ssh_port() -> u16 {
    8022
}
pub(super) fn d_ssh_user() -> String {
    "root".into()
}
pub(super) fn yes() -> bool {
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
