//! The destination claim: a mutex that lives in the destination's libvirtd, so that every runner
//! that migrates to (or repins on) a host sees it, whatever machine it runs on.
//!
//! The claim is a persistent, never-started domain named `numa-repin-claim`
//! (`libvirt::CLAIM_NAME`), defined with a fresh random uuid per run through
//! `virDomainDefineXMLFlags`. libvirtd refuses, atomically under its domain-list lock, to define
//! a name that already exists with another uuid: that refusal is the mutual exclusion. Release
//! is `virDomainUndefineFlags` of the domain with *our* uuid only (libvirtd finds the domain by
//! uuid, and we check the name still carries our uuid first), so a run never removes a claim it
//! does not own.
//!
//! The owner (runner's hostname, pid and its start time, pid namespace, boot id, start time,
//! guest, source, destination) is in the domain's `<metadata>` (namespace `CLAIM_NS`) and, for a
//! human reading `virsh dumpxml`, in `<description>`. Waiters poll until the claim is gone or their
//! timeout ends.
//!
//! A claim is a lease: its holder renews it every `BEAT` (redefines it with the same uuid and a
//! `beat` counter one higher) from a thread of its own, until it releases it. A claim whose `beat`
//! a waiter sees unchanged for `LEASE` of the waiter's *own* monotonic clock is stale (its holder
//! died, or lost every connection to this host for that long, as when the host's libvirtd was
//! restarted under it and the release could not reach it): the waiter removes it by uuid and
//! takes the claim. No clocks of two machines are compared. A claim recorded by *this* machine
//! (same hostname, boot id and pid namespace) whose process is gone is taken over at once. A claim
//! without a beat (defined by hand, or by an older numa-repin) is never broken automatically; the
//! timeout message says who holds it and how to remove it.

use crate::io::libvirt::{self, Domain, Host, CLAIM_NAME};
use anyhow::{anyhow, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// XML namespace of the owner record in the claim's `<metadata>`.
pub const CLAIM_NS: &str = "http://numa-repin/xmlns/claim/1";
/// How often a waiter asks the destination whether the claim is free.
pub const POLL: Duration = Duration::from_millis(250);
/// How often the holder renews its claim.
pub const BEAT: Duration = Duration::from_secs(10);
/// A claim whose beat stays unchanged this long (four missed renewals and more) is stale.
pub const LEASE: Duration = Duration::from_secs(45);

/// Who holds a claim.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Owner {
    /// Hostname of the machine that runs the module.
    pub host: String,
    pub pid: u32,
    /// The process's start time (clock ticks after boot, `/proc/<pid>/stat` field 22): a reused
    /// pid is not mistaken for the holder.
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// The runner's pid namespace (`pid:[inode]`): pids of other namespaces are not comparable.
    #[serde(default)]
    pub pid_ns: Option<String>,
    /// /proc/sys/kernel/random/boot_id of the runner's machine.
    pub boot_id: String,
    /// When the claim was taken, unix seconds.
    pub started: u64,
    /// The guest being moved (or repinned).
    pub guest: String,
    /// Where it comes from (the source's libvirt URI).
    pub source: String,
    /// The claimed host's libvirt URI as the runner spelled it.
    #[serde(default)]
    pub destination: String,
    /// `migrate` or `repin`.
    #[serde(default)]
    pub mode: String,
    /// Renewal counter of the lease (None: a claim that is never renewed, never stale).
    #[serde(default)]
    pub beat: Option<u64>,
}

fn read_trim(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Start time of a process (field 22 of `/proc/<pid>/stat`, clock ticks after boot).
pub fn pid_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) may hold spaces and parentheses: fields 3.. follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process recorded as a claim's holder still runs on this machine.
pub fn pid_alive(pid: u32, start: Option<u64>) -> bool {
    if pid == 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return false;
    }
    match (start, pid_start_time(pid)) {
        (Some(want), Some(now)) => want == now,
        // Cannot tell: assume it runs (never break a claim on a guess).
        _ => true,
    }
}

impl Owner {
    /// This process, moving `guest` from `source` to `destination`.
    pub fn me(guest: &str, source: &str, destination: &str, mode: &str) -> Owner {
        let pid = std::process::id();
        Owner {
            host: read_trim("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into()),
            pid,
            pid_start: pid_start_time(pid),
            pid_ns: std::fs::read_link("/proc/self/ns/pid")
                .ok()
                .map(|p| p.to_string_lossy().into_owned()),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
            started: now_unix(),
            guest: guest.to_string(),
            source: source.to_string(),
            destination: destination.to_string(),
            mode: mode.to_string(),
            beat: Some(0),
        }
    }

    pub fn age_s(&self, now: u64) -> u64 {
        now.saturating_sub(self.started)
    }

    /// `host pid N, guest G from S, for A s`.
    pub fn describe(&self, now: u64) -> String {
        format!(
            "host {} pid {}, guest {} from {}, for {} s",
            self.host,
            self.pid,
            self.guest,
            self.source,
            self.age_s(now)
        )
    }
}

/// The takeover rule: a held claim may be removed automatically only when it was recorded by
/// this very machine and process namespace (same hostname, boot id and pid namespace) and its
/// process is gone (`alive(pid, start)` false). Never a claim of another machine.
pub fn may_take_over(holder: &Owner, me: &Owner, alive: impl Fn(u32, Option<u64>) -> bool) -> bool {
    !holder.host.is_empty()
        && holder.host == me.host
        && !holder.boot_id.is_empty()
        && holder.boot_id == me.boot_id
        && holder.pid_ns.is_some()
        && holder.pid_ns == me.pid_ns
        && !alive(holder.pid, holder.pid_start)
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// A random (version 4) uuid, from the kernel.
pub fn random_uuid() -> Result<String> {
    if let Some(u) = read_trim("/proc/sys/kernel/random/uuid") {
        if u.len() == 36 {
            return Ok(u);
        }
    }
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| anyhow!("cannot read random bytes for the claim's uuid: {e}"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(libvirt::uuid_string(&b))
}

/// The claim domain: a minimal QEMU definition that is never started (no disks, no network, 16
/// MiB, one vCPU), carrying its owner.
pub fn claim_xml(uuid: &str, o: &Owner) -> String {
    let opt = |v: &Option<String>| v.as_deref().map(esc).unwrap_or_default();
    let start = o.pid_start.map(|v| v.to_string()).unwrap_or_default();
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <title>numa-repin destination claim (not a guest; never start it)</title>
  <description>Held by numa-repin (repin_migrate) on host {host}, pid {pid}, since {started} (unix), while it moves guest {guest} from {source}. Not a guest. If no numa-repin migration to this host is running, remove it: virsh undefine {name}</description>
  <metadata>
    <nrc:claim xmlns:nrc='{ns}'>
      <nrc:host>{host}</nrc:host>
      <nrc:pid>{pid}</nrc:pid>
      <nrc:pid_start>{start}</nrc:pid_start>
      <nrc:pid_ns>{pid_ns}</nrc:pid_ns>
      <nrc:boot_id>{boot}</nrc:boot_id>
      <nrc:started>{started}</nrc:started>
      <nrc:guest>{guest}</nrc:guest>
      <nrc:source>{source}</nrc:source>
      <nrc:destination>{dest}</nrc:destination>
      <nrc:mode>{mode}</nrc:mode>
      <nrc:beat>{beat}</nrc:beat>
    </nrc:claim>
  </metadata>
  <memory unit='KiB'>16384</memory>
  <vcpu>1</vcpu>
  <os>
    <type>hvm</type>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
</domain>
",
        name = CLAIM_NAME,
        ns = CLAIM_NS,
        host = esc(&o.host),
        pid = o.pid,
        pid_ns = opt(&o.pid_ns),
        boot = esc(&o.boot_id),
        started = o.started,
        guest = esc(&o.guest),
        source = esc(&o.source),
        dest = esc(&o.destination),
        mode = esc(&o.mode),
        beat = o.beat.map(|b| b.to_string()).unwrap_or_default(),
    )
}

/// The owner recorded in a claim domain's XML (`<metadata>`, our namespace, any prefix).
pub fn parse_owner(xml: &str) -> Result<Owner, String> {
    let root = crate::model::xml::parse(xml).map_err(|e| e.to_string())?;
    let rec = root
        .child("metadata")
        .and_then(|m| m.children.iter().find(|c| c.local_name() == "claim"))
        .ok_or_else(|| {
            "no numa-repin owner in its <metadata> (not defined by numa-repin?)".to_string()
        })?;
    let get = |n: &str| {
        rec.children
            .iter()
            .find(|c| c.local_name() == n)
            .map(|c| c.text.clone())
            .unwrap_or_default()
    };
    let num = |n: &str| -> Result<Option<u64>, String> {
        let v = get(n);
        if v.is_empty() {
            return Ok(None);
        }
        v.parse()
            .map(Some)
            .map_err(|_| format!("owner field {n} '{v}' is not a number"))
    };
    let host = get("host");
    if host.is_empty() {
        return Err("its owner record names no host".into());
    }
    let nonempty = |v: String| Some(v).filter(|s| !s.is_empty());
    Ok(Owner {
        host,
        pid: num("pid")?.unwrap_or(0).try_into().unwrap_or(0),
        pid_start: num("pid_start")?,
        pid_ns: nonempty(get("pid_ns")),
        boot_id: get("boot_id"),
        started: num("started")?.unwrap_or(0),
        guest: get("guest"),
        source: get("source"),
        destination: get("destination"),
        mode: get("mode"),
        beat: num("beat")?,
    })
}

/// A claim seen on a host, as `numa_facts` reports it (`ansible_facts.numa.claims`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct ClaimFact {
    pub name: String,
    pub uuid: String,
    /// The owner's hostname (empty when the owner record cannot be read).
    pub host: String,
    pub pid: Option<u32>,
    pub guest: String,
    pub source: String,
    /// Unix seconds when it was taken.
    pub started: Option<u64>,
    pub age_s: Option<u64>,
    /// Why the owner could not be read, if so.
    #[serde(default)]
    pub error: Option<String>,
}

impl ClaimFact {
    pub fn from_domain(uuid: &str, xml: Result<&str, &str>, now: u64) -> ClaimFact {
        let owner = xml.map_err(str::to_string).and_then(parse_owner);
        match owner {
            Ok(o) => ClaimFact {
                name: CLAIM_NAME.into(),
                uuid: uuid.into(),
                pid: Some(o.pid),
                started: Some(o.started),
                age_s: Some(o.age_s(now)),
                host: o.host,
                guest: o.guest,
                source: o.source,
                error: None,
            },
            Err(e) => ClaimFact {
                name: CLAIM_NAME.into(),
                uuid: uuid.into(),
                host: String::new(),
                pid: None,
                guest: String::new(),
                source: String::new(),
                started: None,
                age_s: None,
                error: Some(e),
            },
        }
    }
}

/// A held claim: released (undefined) by `release` or when dropped; renewed meanwhile.
pub struct Claim {
    dom: Option<Domain>,
    pub destination: String,
    pub uuid: String,
    pub waited_ms: u64,
    /// The stale claim that was taken over, if any, and why it was stale.
    pub took_over: Option<(String, Owner, &'static str)>,
    renewal: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

/// The holder's renewal thread: every `BEAT`, on a connection of its own (the module's may be
/// busy in a migration, or broken), redefine the claim with the next beat while the name still
/// carries our uuid. Errors are ignored: a missed beat only brings the lease nearer its end.
fn renew(destination: String, uuid: String, mut me: Owner, stop: Arc<AtomicBool>) {
    let mut conn: Option<Host> = None;
    loop {
        std::thread::park_timeout(BEAT);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if conn.is_none() {
            conn = libvirt::connect(&destination).ok();
        }
        let Some(h) = &conn else { continue };
        let ok = match h.lookup(CLAIM_NAME) {
            Ok(d) if d.uuid_string() == uuid => {
                me.beat = Some(me.beat.unwrap_or(0) + 1);
                h.define_xml(&claim_xml(&uuid, &me), 0).is_ok()
            }
            // Removed or taken over: nothing of ours to renew.
            Ok(_) | Err(libvirt::Error::NoDomain { .. }) => return,
            Err(_) => false,
        };
        if !ok {
            conn = None;
        }
    }
}

/// Staleness of the claims a waiter keeps finding: (uuid, beat) and since when (this clock).
#[derive(Default)]
struct Watch {
    seen: Option<(String, Option<u64>, Instant)>,
}

impl Watch {
    /// True once the same claim has shown the same beat for `lease` (never for a claim without one).
    fn stale(&mut self, uuid: &str, beat: Option<u64>, lease: Duration) -> bool {
        match &self.seen {
            Some((u, b, since)) if u == uuid && *b == beat => {
                beat.is_some() && since.elapsed() >= lease
            }
            _ => {
                self.seen = Some((uuid.to_string(), beat, Instant::now()));
                false
            }
        }
    }
}

/// Why a claim could not be taken.
#[derive(Debug)]
pub enum Refused {
    /// Another holder kept it for the whole wait.
    Timeout {
        uuid: String,
        holder: Box<Result<Owner, String>>,
        waited: Duration,
    },
    /// libvirt failed (connection, or a define that fails with no claim present).
    Error(anyhow::Error),
}

fn conn_error(e: &libvirt::Error) -> bool {
    !matches!(
        e,
        libvirt::Error::Remote(_) | libvirt::Error::NoDomain { .. }
    ) && !matches!(e, libvirt::Error::At { source, .. } if matches!(**source, libvirt::Error::Remote(_)))
}

/// The held claim, with its renewal thread started.
fn held(
    h: &Host,
    d: Domain,
    uuid: String,
    me: &Owner,
    t0: Instant,
    took_over: Option<(String, Owner, &'static str)>,
) -> Claim {
    let stop = Arc::new(AtomicBool::new(false));
    let (dest, u, o, st) = (h.uri.clone(), uuid.clone(), me.clone(), stop.clone());
    let renewal = std::thread::Builder::new()
        .name("claim-renewal".into())
        .spawn(move || renew(dest, u, o, st))
        .ok()
        .map(|j| (stop, j));
    Claim {
        dom: Some(d),
        destination: h.uri.clone(),
        uuid,
        waited_ms: t0.elapsed().as_millis() as u64,
        took_over,
        renewal,
    }
}

/// What decides whether a held claim is stale, across one `acquire`'s polls.
struct Stale<'a> {
    me: &'a Owner,
    lease: Duration,
    watch: &'a mut Watch,
    /// Claims already tried: each is taken over at most once.
    tried: &'a mut Vec<String>,
}

impl Stale<'_> {
    /// Remove the claim `d` (uuid `their`, owner `o`) if it is stale: its process on this
    /// machine is gone, or its lease ran out. Some(why) when it was removed.
    fn take_over(
        self,
        d: &Domain,
        their: &str,
        o: &Owner,
    ) -> Result<Option<&'static str>, Refused> {
        let why = if may_take_over(o, self.me, pid_alive) {
            "its process on this machine is gone"
        } else if self.watch.stale(their, o.beat, self.lease) {
            "its lease ran out (not renewed)"
        } else {
            return Ok(None);
        };
        if self.tried.iter().any(|t| t == their) {
            return Ok(None);
        }
        self.tried.push(their.to_string());
        // By uuid: if it changed hands meanwhile, this fails and we wait.
        match d.undefine(0) {
            Ok(()) => Ok(Some(why)),
            Err(e) if conn_error(&e) => Err(Refused::Error(e.into())),
            Err(_) => Ok(None),
        }
    }
}

/// Take the claim on `h`, waiting up to `timeout`, polling every `poll`; a claim whose beat
/// stays unchanged for `lease` (`LEASE` by default, `claim_lease_s`) is taken over as stale.
/// Long: one poll loop, whose exits (held, taken over, timed out, libvirt's error) read best together.
pub fn acquire(
    h: &Host,
    me: &Owner,
    timeout: Duration,
    poll: Duration,
    lease: Duration,
) -> Result<Claim, Refused> {
    let uuid = random_uuid().map_err(Refused::Error)?;
    let xml = claim_xml(&uuid, me);
    let t0 = Instant::now();
    let mut took_over = None;
    let mut tried_takeover: Vec<String> = Vec::new();
    let mut watch = Watch::default();
    let mut lonely_failures = 0;
    loop {
        let define_err = match h.define_xml(&xml, 0) {
            Ok(d) => {
                if d.uuid_string() == uuid {
                    return Ok(held(h, d, uuid, me, t0, took_over));
                }
                // Cannot happen with libvirtd (a name with another uuid is refused).
                return Err(Refused::Error(anyhow!(
                    "libvirt at {}: defining {CLAIM_NAME} returned uuid {} instead of {uuid}",
                    h.uri,
                    d.uuid_string()
                )));
            }
            Err(e) if conn_error(&e) => return Err(Refused::Error(e.into())),
            Err(e) => e,
        };
        // Refused: who holds it?
        match h.lookup(CLAIM_NAME) {
            Ok(d) => {
                lonely_failures = 0;
                let their = d.uuid_string();
                if their == uuid {
                    // Our define went through after all (cannot happen, but it is ours).
                    return Ok(held(h, d, uuid, me, t0, took_over));
                }
                let owner = d
                    .xml_desc(0)
                    .map_err(|e| e.message())
                    .and_then(|x| parse_owner(&x));
                if let Ok(o) = &owner {
                    let stale = Stale {
                        me,
                        lease,
                        watch: &mut watch,
                        tried: &mut tried_takeover,
                    };
                    if let Some(why) = stale.take_over(&d, &their, o)? {
                        took_over = Some((their, o.clone(), why));
                        continue;
                    }
                }
                if t0.elapsed() >= timeout {
                    return Err(Refused::Timeout {
                        uuid: their,
                        holder: Box::new(owner),
                        waited: t0.elapsed(),
                    });
                }
            }
            Err(libvirt::Error::NoDomain { .. }) => {
                // Released between our define and the lookup; or the define fails for another
                // reason while no claim exists: retry a few times, then report libvirt's error.
                lonely_failures += 1;
                if lonely_failures >= 5 {
                    return Err(Refused::Error(anyhow!(
                        "libvirt at {}: cannot define the claim domain {CLAIM_NAME}: {}",
                        h.uri,
                        define_err.message()
                    )));
                }
                continue;
            }
            Err(e) => return Err(Refused::Error(e.into())),
        }
        std::thread::sleep(
            poll.min(timeout.saturating_sub(t0.elapsed()))
                .max(Duration::from_millis(10)),
        );
    }
}

impl Claim {
    /// Undefine the claim if the domain by that name still has our uuid. `Ok(false)`: it was no
    /// longer ours (removed by hand); nothing was touched.
    pub fn release(&mut self) -> Result<bool> {
        if let Some((stop, j)) = self.renewal.take() {
            stop.store(true, Ordering::SeqCst);
            j.thread().unpark();
            let _ = j.join();
        }
        let Some(d) = self.dom.take() else {
            return Ok(false);
        };
        let attempt = |h: &Host| -> Result<bool, libvirt::Error> {
            match h.lookup(CLAIM_NAME) {
                Ok(now) if now.uuid_string() == self.uuid => now.undefine(0).map(|_| true),
                Ok(_) | Err(libvirt::Error::NoDomain { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        };
        match attempt(&d.host()) {
            Ok(v) => Ok(v),
            Err(e) if conn_error(&e) => {
                // The connection broke (a long migration): one fresh connection to release.
                let h = libvirt::connect(&self.destination)?;
                Ok(attempt(&h)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// For the module's result.
    pub fn report(&self) -> serde_json::Value {
        let now = now_unix();
        serde_json::json!({
            "destination": self.destination,
            "name": CLAIM_NAME,
            "uuid": self.uuid,
            "waited_ms": self.waited_ms,
            "took_over": match &self.took_over {
                None => serde_json::Value::Bool(false),
                Some((u, o, why)) => serde_json::json!({
                    "uuid": u, "host": o.host, "pid": o.pid, "guest": o.guest,
                    "source": o.source, "age_s": o.age_s(now), "why": why
                }),
            },
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// The failure message of a claim that stayed held for the whole wait.
pub fn timeout_msg(
    dest_uri: &str,
    uuid: &str,
    holder: &Result<Owner, String>,
    waited: Duration,
    now: u64,
) -> String {
    let who = match holder {
        Ok(o) => format!("held by {}", o.describe(now)),
        Err(e) => format!("held by an unknown owner ({e})"),
    };
    format!(
        "the destination {dest_uri} is claimed by another numa-repin run: {CLAIM_NAME} (uuid {uuid}) {who}; waited {} s (lock_timeout_s). Nothing was changed. Wait for that run and retry, or raise lock_timeout_s; if no migration to this destination is running (its runner died), remove the stale claim: virsh -c {dest_uri} undefine {CLAIM_NAME}",
        waited.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            host: "ctl-1".into(),
            pid: 4242,
            pid_start: Some(777),
            pid_ns: Some("pid:[4026531836]".into()),
            boot_id: "b0f1d2e3-0000-4000-8000-000000000001".into(),
            started: 1_700_000_000,
            guest: "vm <1> & co".into(),
            source: "qemu+tcp://cmp1/system".into(),
            destination: "qemu+tcp://cmp2/system".into(),
            mode: "migrate".into(),
            beat: Some(0),
        }
    }

    #[test]
    fn claim_xml_parses_and_carries_the_owner() {
        let o = owner();
        let x = claim_xml("6c1a9e10-0000-4000-8000-000000000001", &o);
        let root = crate::model::xml::parse(&x).unwrap();
        assert_eq!(root.attr("type"), Some("qemu"));
        assert_eq!(root.child("name").unwrap().text, CLAIM_NAME);
        assert_eq!(
            root.child("uuid").unwrap().text,
            "6c1a9e10-0000-4000-8000-000000000001"
        );
        assert_eq!(root.path("os/type").unwrap().text, "hvm");
        assert!(root.child("devices").is_none(), "no devices of ours");
        let m = &root.child("metadata").unwrap().children[0];
        assert_eq!(m.attr("xmlns:nrc"), Some(CLAIM_NS));
        assert!(root
            .child("description")
            .unwrap()
            .text
            .contains("ctl-1, pid 4242"));
        assert_eq!(parse_owner(&x).unwrap(), o);
        // It is a parsable domain with no pins: even a reader that did not skip it would see
        // no pinned pCPUs.
        let g = crate::model::domain::parse_guest(&x).unwrap();
        assert!(g.vcpu_pins.is_empty());
    }

    #[test]
    fn owner_parsing_any_prefix_and_errors() {
        // libvirt may re-serialise the metadata with its own prefix.
        let x = format!(
            "<domain type='qemu'><name>{CLAIM_NAME}</name><metadata><x:claim xmlns:x='{CLAIM_NS}'><x:host>h2</x:host><x:pid>9</x:pid><x:boot_id>b</x:boot_id><x:started>5</x:started><x:guest>g</x:guest><x:source>s</x:source></x:claim></metadata></domain>"
        );
        let o = parse_owner(&x).unwrap();
        assert_eq!((o.host.as_str(), o.pid, o.started), ("h2", 9, 5));
        assert_eq!((o.pid_start, o.pid_ns.as_deref()), (None, None));
        assert_eq!(o.describe(65), "host h2 pid 9, guest g from s, for 60 s");
        assert!(
            parse_owner("<domain><name>numa-repin-claim</name></domain>")
                .unwrap_err()
                .contains("no numa-repin owner")
        );
        let bad = x.replace("<x:pid>9", "<x:pid>nine");
        assert!(parse_owner(&bad).unwrap_err().contains("pid"));
        let f = ClaimFact::from_domain("u", Ok(&x), 65);
        assert_eq!((f.host.as_str(), f.pid, f.age_s), ("h2", Some(9), Some(60)));
        let f = ClaimFact::from_domain("u", Err("gone"), 65);
        assert_eq!(f.error.as_deref(), Some("gone"));
    }

    #[test]
    fn takeover_only_same_machine_and_dead_pid() {
        let holder = owner();
        let mut me = owner();
        me.pid = 1;
        let dead = |_: u32, _: Option<u64>| false;
        let alive = |_: u32, _: Option<u64>| true;
        assert!(may_take_over(&holder, &me, dead));
        assert!(!may_take_over(&holder, &me, alive), "live holder");
        let mut other = me.clone();
        other.host = "ctl-2".into();
        assert!(!may_take_over(&holder, &other, dead), "another machine");
        let mut rebooted = me.clone();
        rebooted.boot_id = "another-boot".into();
        assert!(!may_take_over(&holder, &rebooted, dead), "another boot");
        let mut ns = me.clone();
        ns.pid_ns = Some("pid:[1]".into());
        assert!(!may_take_over(&holder, &ns, dead), "another pid namespace");
        let mut unknown = holder.clone();
        unknown.boot_id.clear();
        assert!(!may_take_over(&unknown, &me, dead), "no boot id recorded");
        let mut hand = holder.clone();
        hand.pid_ns = None;
        assert!(
            !may_take_over(&hand, &me, dead),
            "no pid namespace recorded"
        );
    }

    #[test]
    fn pid_liveness_with_start_time() {
        let me = std::process::id();
        let start = pid_start_time(me);
        assert!(start.is_some());
        assert!(pid_alive(me, start));
        assert!(pid_alive(me, None));
        assert!(
            !pid_alive(me, start.map(|s| s + 1)),
            "pid reused by another process"
        );
        assert!(!pid_alive(0, None));
        assert!(!pid_alive(u32::MAX - 1, None));
        let o = Owner::me("g", "s", "d", "migrate");
        assert_eq!(o.pid, me);
        assert!(!o.boot_id.is_empty() && !o.host.is_empty());
    }

    #[test]
    fn lease_stale_only_when_the_same_beat_outlives_it() {
        let mut w = Watch::default();
        let lease = Duration::from_millis(30);
        assert!(!w.stale("a", Some(3), lease));
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            w.stale("a", Some(3), lease),
            "same claim, same beat past the lease"
        );
        // A renewal (new beat) or another claim starts the clock again.
        assert!(!w.stale("a", Some(4), lease));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!w.stale("b", Some(4), lease));
        // Never renewed (no beat): never stale, however long.
        let mut w = Watch::default();
        assert!(!w.stale("c", None, lease));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!w.stale("c", None, lease));
    }

    #[test]
    fn beat_round_trips_through_the_xml() {
        let mut o = owner();
        o.beat = Some(7);
        assert_eq!(parse_owner(&claim_xml("u", &o)).unwrap().beat, Some(7));
        o.beat = None;
        assert_eq!(parse_owner(&claim_xml("u", &o)).unwrap().beat, None);
    }

    #[test]
    fn uuids_are_random_v4() {
        let (a, b) = (random_uuid().unwrap(), random_uuid().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn timeout_message_names_holder_and_removal() {
        let m = timeout_msg(
            "qemu+tcp://cmp2/system",
            "u-1",
            &Ok(owner()),
            Duration::from_secs(2),
            1_700_000_030,
        );
        assert!(
            m.contains("the destination qemu+tcp://cmp2/system is claimed"),
            "{m}"
        );
        assert!(
            m.contains(
                "host ctl-1 pid 4242, guest vm <1> & co from qemu+tcp://cmp1/system, for 30 s"
            ),
            "{m}"
        );
        assert!(
            m.contains("virsh -c qemu+tcp://cmp2/system undefine numa-repin-claim"),
            "{m}"
        );
    }
}
