//! libvirt without libvirt's C library: a client of libvirtd's remote protocol (XDR RPC over
//! its unix socket or TCP), for the procedures the modules call, and the Host/Domain API the
//! rest of the crate uses (capabilities, guests, migration, job statistics, live pinning).
//!
//! URIs: `qemu:///system` (unix socket `/run/libvirt/libvirt-sock`, else
//! `/var/run/libvirt/libvirt-sock`, else the modular daemon's `/run/libvirt/virtqemud-sock`),
//! `qemu+unix:///system?socket=PATH`, `qemu+tcp://host[:port]/system` (port 16509). Only
//! authentication `none` is spoken (libvirtd's `auth_unix_rw`/`auth_tcp`); TLS, SSH, SASL and
//! polkit are refused with a message. `test://` (libvirt's test driver) is not a daemon: it runs
//! inside libvirt's client library, which this crate does not load, so it is refused too.
//!
//! XDR is hand-written (`wire.rs`): `serde-xdr` is GPL-3.0 (this crate is Apache-2.0) and
//! `xdr-codec` has had no release since 2017 (error-chain 0.10) and expects generated code; the
//! subset libvirt needs is ~200 lines with bounds checks of our own.

pub mod proc;
pub mod wire;

use crate::model::domain::{self, Guest};
use crate::model::topology::{self, Cell, Cpu, HostTopology, PagePool};
use proc::{Client, RemoteDomain, Stream, TypedParam, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use proc::{BlockInfo, DomainInfo, NodeInfo, RemoteError, VcpuInfo};

/// libvirt's public constants used here (values from libvirt's headers, names as in its C API).
pub mod consts {
    pub const VIR_DOMAIN_XML_SECURE: u32 = 1;
    pub const VIR_DOMAIN_XML_INACTIVE: u32 = 2;
    pub const VIR_DOMAIN_XML_MIGRATABLE: u32 = 8;

    pub const VIR_DOMAIN_AFFECT_CURRENT: u32 = 0;
    pub const VIR_DOMAIN_AFFECT_LIVE: u32 = 1;
    pub const VIR_DOMAIN_AFFECT_CONFIG: u32 = 2;

    pub const VIR_MIGRATE_LIVE: u32 = 1;
    pub const VIR_MIGRATE_PEER2PEER: u32 = 2;
    pub const VIR_MIGRATE_PERSIST_DEST: u32 = 8;
    pub const VIR_MIGRATE_UNDEFINE_SOURCE: u32 = 16;
    pub const VIR_MIGRATE_NON_SHARED_DISK: u32 = 64;
    pub const VIR_MIGRATE_ABORT_ON_ERROR: u32 = 4096;
    pub const VIR_MIGRATE_AUTO_CONVERGE: u32 = 8192;
    pub const VIR_MIGRATE_POSTCOPY: u32 = 32768;

    pub const VIR_DOMAIN_UNDEFINE_MANAGED_SAVE: u32 = 1;
    pub const VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA: u32 = 2;
    pub const VIR_DOMAIN_UNDEFINE_KEEP_NVRAM: u32 = 8;

    pub const VIR_DOMAIN_JOB_NONE: i32 = 0;
    pub const VIR_DOMAIN_JOB_BOUNDED: i32 = 1;
    pub const VIR_DOMAIN_JOB_UNBOUNDED: i32 = 2;
    pub const VIR_DOMAIN_JOB_STATS_COMPLETED: u32 = 1;

    pub const VIR_CPU_COMPARE_ERROR: i32 = -1;
    pub const VIR_CPU_COMPARE_INCOMPATIBLE: i32 = 0;
    pub const VIR_CPU_COMPARE_IDENTICAL: i32 = 1;
    pub const VIR_CPU_COMPARE_SUPERSET: i32 = 2;

    /// virErrorNumber VIR_ERR_NO_DOMAIN.
    pub const VIR_ERR_NO_DOMAIN: i32 = 42;
}

/// The name of numa-repin's destination claim (`crate::io::claim`): a never-started domain that is
/// not a guest. Every guest listing skips it.
pub const CLAIM_NAME: &str = "numa-repin-claim";

/// A never-started claim domain found on a host: its uuid and its persistent XML (or why it
/// could not be read).
#[derive(Debug, Clone)]
pub struct ClaimDomain {
    pub uuid: String,
    pub xml: std::result::Result<String, String>,
}
use consts::*;

// ---------------------------------------------------------------------------------------------
// Errors.

/// What can go wrong talking to libvirtd.
#[derive(Debug)]
pub enum Error {
    /// No connection could be made: the URI, every socket or address tried, and why.
    Connect { uri: String, reason: String },
    /// A URI this client does not speak (transport, driver, authentication).
    Unsupported { uri: String, why: String },
    /// The stream broke during a call.
    Io {
        during: &'static str,
        source: std::io::Error,
    },
    /// The daemon sent something that is not a valid reply.
    Protocol(String),
    /// The daemon answered with an error (`remote_error`).
    Remote(RemoteError),
    /// A previous call broke this connection.
    Closed,
    /// No domain with this name or uuid.
    NoDomain { name: String, uri: String },
    /// An error with what we were doing and on which host.
    At {
        uri: String,
        what: String,
        source: Box<Error>,
    },
}

impl Error {
    pub(crate) fn io(during: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { during, source }
    }
    /// The message without our context (libvirt's own text for daemon errors).
    pub fn message(&self) -> String {
        match self {
            Error::Remote(r) => r.message.clone(),
            Error::At { source, .. } => source.message(),
            e => e.to_string(),
        }
    }
    /// libvirt's error code, for daemon errors.
    pub fn code(&self) -> Option<i32> {
        match self {
            Error::Remote(r) => Some(r.code),
            Error::At { source, .. } => source.code(),
            _ => None,
        }
    }
    fn at(self, uri: &str, what: &str) -> Error {
        Error::At {
            uri: uri.to_string(),
            what: what.to_string(),
            source: Box::new(self),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { uri, reason } => write!(
                f,
                "cannot connect to libvirt at {uri}: {reason}; check that libvirtd runs there and listens (libvirtd --listen with listen_tcp=1 for qemu+tcp://)"
            ),
            Error::Unsupported { uri, why } => write!(f, "libvirt URI {uri}: {why}"),
            Error::Io { during, source } => {
                write!(f, "connection to libvirtd lost while {during}: {source}")
            }
            Error::Protocol(m) => write!(f, "libvirt protocol error: {m}"),
            Error::Remote(r) => f.write_str(&r.message),
            Error::Closed => f.write_str("the connection to libvirtd broke earlier"),
            Error::NoDomain { name, uri } => {
                write!(f, "no guest named or with uuid '{name}' on {uri}")
            }
            Error::At { uri, what, source } => {
                write!(f, "libvirt at {uri}: {what}: {source}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::At { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// URIs.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Unix sockets, tried in order.
    Unix(Vec<PathBuf>),
    Tcp {
        host: String,
        port: u16,
    },
}

/// Where to connect, and the name the daemon is asked to open (`qemu:///system`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub endpoint: Endpoint,
    pub name: String,
}

pub const DEFAULT_SOCKETS: [&str; 3] = [
    "/run/libvirt/libvirt-sock",
    "/var/run/libvirt/libvirt-sock",
    "/run/libvirt/virtqemud-sock",
];
pub const DEFAULT_TCP_PORT: u16 = 16509;

pub fn parse_uri(uri: &str) -> Result<Target> {
    let unsupported = |why: String| Error::Unsupported {
        uri: uri.to_string(),
        why,
    };
    if uri.contains('\0') {
        return Err(unsupported("it contains a NUL byte".into()));
    }
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| unsupported("not a URI (expected e.g. qemu:///system)".into()))?;
    let (driver, transport) = match scheme.split_once('+') {
        Some((d, t)) => (d, Some(t)),
        None => (scheme, None),
    };
    if driver == "test" {
        return Err(unsupported("libvirt's test driver runs inside libvirt's client library, which numa-repin does not use (it speaks libvirtd's protocol); give a libvirtd URI (qemu:///system, qemu+tcp://host/system) or saved dumps (capabilities_file, domain_files)".into()));
    }
    if driver.is_empty() || !driver.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(unsupported(format!("bad driver name '{driver}'")));
    }
    let (authority, path_query) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path_query, ""),
    };
    let mut socket = None;
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("socket", v)) => socket = Some(PathBuf::from(v)),
            Some(("no_verify", _)) | Some(("mode", _)) => {}
            _ => {
                return Err(unsupported(format!(
                    "query parameter '{kv}' is not supported"
                )))
            }
        }
    }
    let path = if path.is_empty() { "/" } else { path };
    let name = format!("{driver}://{path}");
    // user@ is meaningless without SSH; drop it like libvirt's remote driver does for tcp.
    let host = authority.rsplit('@').next().unwrap_or("");
    let endpoint = match transport {
        Some("unix") | None if host.is_empty() => match socket {
            Some(s) => Endpoint::Unix(vec![s]),
            None => Endpoint::Unix(DEFAULT_SOCKETS.iter().map(PathBuf::from).collect()),
        },
        Some("unix") => {
            return Err(unsupported(
                "a unix socket URI has no host (qemu+unix:///system)".into(),
            ))
        }
        None => {
            return Err(unsupported(
                "a host without transport means TLS, which is not supported: use qemu+tcp://HOST/system".into(),
            ))
        }
        Some("tcp") => {
            if host.is_empty() {
                return Err(unsupported("qemu+tcp:// needs a host".into()));
            }
            let (h, port) = split_host_port(host)
                .ok_or_else(|| unsupported(format!("bad host or port '{host}'")))?;
            Endpoint::Tcp {
                host: h.to_string(),
                port: port.unwrap_or(DEFAULT_TCP_PORT),
            }
        }
        Some(t) => {
            return Err(unsupported(format!(
                "transport '{t}' is not supported (only unix and tcp with auth none)"
            )))
        }
    };
    Ok(Target { endpoint, name })
}

fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(r) = s.strip_prefix('[') {
        let (h, rest) = r.split_once(']')?;
        return match rest.strip_prefix(':') {
            Some(p) => Some((h, Some(p.parse().ok()?))),
            None if rest.is_empty() => Some((h, None)),
            None => None,
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p.parse().ok()?))),
        Some(_) => Some((s, None)), // bare IPv6
        None => Some((s, None)),
    }
}

// ---------------------------------------------------------------------------------------------
// Connection.

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared connection: closed politely when the last Host/Domain using it goes.
struct Conn(Mutex<Client>);

impl Drop for Conn {
    fn drop(&mut self) {
        let c = self.0.get_mut().unwrap_or_else(|p| p.into_inner());
        c.set_timeout(Some(Duration::from_secs(2)));
        let _ = proc::connect_close(c);
    }
}

impl Conn {
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    }
}

fn open_stream(uri: &str, t: &Target) -> Result<Stream> {
    let fail = |reason: String| Error::Connect {
        uri: uri.to_string(),
        reason,
    };
    match &t.endpoint {
        Endpoint::Unix(paths) => {
            let mut tried = Vec::new();
            for p in paths {
                match UnixStream::connect(p) {
                    Ok(s) => return Ok(Stream::Unix(s)),
                    Err(e) => tried.push(format!("socket {}: {e}", p.display())),
                }
            }
            Err(fail(tried.join("; ")))
        }
        Endpoint::Tcp { host, port } => {
            let addrs: Vec<_> = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| fail(format!("cannot resolve {host}: {e}")))?
                .collect();
            let mut tried = Vec::new();
            for a in &addrs {
                match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(Stream::Tcp(s));
                    }
                    Err(e) => tried.push(format!("tcp {a}: {e}")),
                }
            }
            if tried.is_empty() {
                tried.push(format!("{host} has no address"));
            }
            Err(fail(tried.join("; ")))
        }
    }
}

/// An open libvirt connection and the URI it was opened with (for messages). Clones share the
/// connection.
#[derive(Clone)]
pub struct Host {
    pub uri: String,
    conn: Arc<Conn>,
}

/// Open a connection: socket or TCP, authentication list (only `none` is spoken), CONNECT_OPEN.
pub fn connect(uri: &str) -> Result<Host> {
    let target = parse_uri(uri)?;
    let stream = open_stream(uri, &target)?;
    let mut c = Client::new(stream);
    // Bound the handshake; calls after it may legitimately take long (a migration).
    c.set_timeout(Some(Duration::from_secs(30)));
    let fail = |e: Error| Error::Connect {
        uri: uri.to_string(),
        reason: format!("connected, but the handshake failed: {e}"),
    };
    let auth = proc::auth_list(&mut c).map_err(fail)?;
    if !auth.is_empty() && !auth.contains(&proc::AUTH_NONE) {
        return Err(Error::Unsupported {
            uri: uri.to_string(),
            why: format!("libvirtd asks for authentication {auth:?} (1 = SASL, 2 = polkit); only auth none is supported (auth_tcp / auth_unix_rw = \"none\")"),
        });
    }
    proc::connect_open(&mut c, &target.name).map_err(fail)?;
    c.set_timeout(None);
    Ok(Host {
        uri: uri.to_string(),
        conn: Arc::new(Conn(Mutex::new(c))),
    })
}

/// `virDomainState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    NoState,
    Running,
    Blocked,
    Paused,
    Shutdown,
    Shutoff,
    Crashed,
    PMSuspended,
}

impl DomainState {
    pub fn from_raw(v: i32) -> Self {
        match v {
            1 => Self::Running,
            2 => Self::Blocked,
            3 => Self::Paused,
            4 => Self::Shutdown,
            5 => Self::Shutoff,
            6 => Self::Crashed,
            7 => Self::PMSuspended,
            _ => Self::NoState,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Blocked => "blocked",
            Self::Paused => "paused",
            Self::Shutdown => "shutdown",
            Self::Shutoff => "shutoff",
            Self::Crashed => "crashed",
            Self::PMSuspended => "pmsuspended",
            Self::NoState => "nostate",
        }
    }
}

pub fn state_name(s: &DomainState) -> &'static str {
    s.name()
}

fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || s.len() != 36 && s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The canonical text form (8-4-4-4-12 lowercase hex) of a uuid's 16 bytes.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Host {
    fn call<T>(&self, what: &str, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        self.conn.with(f).map_err(|e| e.at(&self.uri, what))
    }

    pub fn hostname(&self) -> String {
        self.conn
            .with(proc::hostname)
            .unwrap_or_else(|_| self.uri.clone())
    }

    pub fn capabilities_xml(&self) -> Result<String> {
        self.call("cannot read capabilities", proc::capabilities)
    }

    pub fn node_info(&self) -> Result<NodeInfo> {
        self.call("cannot read node info", proc::node_info)
    }

    /// `virConnectCompareCPU`: one of the VIR_CPU_COMPARE_* values.
    pub fn compare_cpu(&self, xml: &str, flags: u32) -> Result<i32> {
        self.call("cannot compare CPUs", |c| proc::compare_cpu(c, xml, flags))
    }

    fn domain(&self, raw: RemoteDomain) -> Domain {
        Domain {
            conn: self.conn.clone(),
            raw,
            uri: self.uri.clone(),
        }
    }

    pub fn list_all_domains(&self, flags: u32) -> Result<Vec<Domain>> {
        let v = self.call("cannot list domains", |c| proc::list_all_domains(c, flags))?;
        Ok(v.into_iter().map(|r| self.domain(r)).collect())
    }

    /// The host topology; where capabilities list no NUMA cells (some drivers), one cell is
    /// synthesized from node info, and the second value says so.
    pub fn topology(&self) -> anyhow::Result<(HostTopology, &'static str)> {
        let topo = topology::parse_capabilities(&self.capabilities_xml()?)
            .map_err(|e| anyhow::anyhow!("libvirt at {}: {e}", self.uri))?;
        if !topo.cells.is_empty() {
            return Ok((topo, "capabilities"));
        }
        Ok((with_nodeinfo_cell(topo, &self.node_info()?), "nodeinfo"))
    }

    /// Every defined or running guest, parsed. A guest whose XML cannot be read is returned in
    /// the second list with the reason, so one odd domain does not hide the others. The claim
    /// domain (`CLAIM_NAME`) is not a guest and is left out.
    pub fn guests(&self) -> anyhow::Result<(Vec<Guest>, Vec<String>)> {
        self.guests_and_claims().map(|(g, b, _)| (g, b))
    }

    /// `guests()` and, apart, the claim domains (`CLAIM_NAME`) with their XML, from one listing.
    #[allow(clippy::type_complexity)]
    pub fn guests_and_claims(&self) -> anyhow::Result<(Vec<Guest>, Vec<String>, Vec<ClaimDomain>)> {
        let doms = self.list_all_domains(0)?;
        let mut guests = Vec::new();
        let mut bad = Vec::new();
        let mut claims = Vec::new();
        for d in doms {
            if d.name() == CLAIM_NAME {
                claims.push(ClaimDomain {
                    uuid: d.uuid_string(),
                    xml: d.xml_desc(0).map_err(|e| e.message()),
                });
                continue;
            }
            match guest_of(&d) {
                Ok(g) => guests.push(g),
                Err(e) => bad.push(format!("{e:#}")),
            }
        }
        guests.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((guests, bad, claims))
    }

    /// `virDomainDefineXMLFlags`: define (never start) a persistent domain.
    pub fn define_xml(&self, xml: &str, flags: u32) -> Result<Domain> {
        let r = self.call("cannot define a domain", |c| {
            proc::define_xml_flags(c, xml, flags)
        })?;
        Ok(self.domain(r))
    }

    /// A domain by name, else by uuid. A missing domain is `Error::NoDomain`; a broken
    /// connection says so instead of pretending the guest is absent.
    pub fn lookup(&self, name_or_uuid: &str) -> Result<Domain> {
        let missing = |e: &Error| e.code() == Some(VIR_ERR_NO_DOMAIN);
        match self.conn.with(|c| proc::lookup_by_name(c, name_or_uuid)) {
            Ok(r) => return Ok(self.domain(r)),
            Err(e) if !missing(&e) => return Err(e.at(&self.uri, "cannot look up a domain")),
            Err(_) => {}
        }
        if let Some(u) = uuid_bytes(name_or_uuid) {
            match self.conn.with(|c| proc::lookup_by_uuid(c, &u)) {
                Ok(r) => return Ok(self.domain(r)),
                Err(e) if !missing(&e) => return Err(e.at(&self.uri, "cannot look up a domain")),
                Err(_) => {}
            }
        }
        Err(Error::NoDomain {
            name: name_or_uuid.to_string(),
            uri: self.uri.clone(),
        })
    }

    /// `lookup` where a missing domain is `Ok(None)`: `None` only when libvirtd answered that it
    /// has none, never when it could not be asked.
    pub fn find(&self, name_or_uuid: &str) -> Result<Option<Domain>> {
        match self.lookup(name_or_uuid) {
            Ok(d) => Ok(Some(d)),
            Err(Error::NoDomain { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// One cell from node info, for drivers whose capabilities show none.
pub fn with_nodeinfo_cell(mut topo: HostTopology, info: &NodeInfo) -> HostTopology {
    let cpus = (0..info.cpus)
        .map(|id| Cpu {
            id,
            socket: 0,
            core: id,
            siblings: vec![id],
        })
        .collect();
    topo.cells.push(Cell {
        id: 0,
        memory_mb: info.memory / 1024,
        cpus,
        pages: vec![PagePool {
            size_kb: 4,
            total: info.memory / 4,
            free: None,
        }],
        distances: [("0".to_string(), 10)].into_iter().collect(),
    });
    topo
}

// ---------------------------------------------------------------------------------------------
// Domains.

/// A domain on a connection.
pub struct Domain {
    conn: Arc<Conn>,
    raw: RemoteDomain,
    uri: String,
}

/// Typed parameters of `virDomainMigrateToURI3` that the modules set.
#[derive(Debug, Clone, Default)]
pub struct MigrateParameters {
    pub dest_xml: Option<String>,
    pub persist_xml: Option<String>,
    pub uri: Option<String>,
    /// MiB/s.
    pub bandwidth: Option<u64>,
    pub migrate_disks: Vec<String>,
}

impl MigrateParameters {
    /// VIR_MIGRATE_PARAM_* names and types.
    pub fn typed(&self) -> Vec<TypedParam> {
        let mut v = Vec::new();
        let s = |n: &str, x: &str| TypedParam::new(n, Value::String(x.to_string()));
        if let Some(x) = &self.dest_xml {
            v.push(s("destination_xml", x));
        }
        if let Some(x) = &self.persist_xml {
            v.push(s("persistent_xml", x));
        }
        if let Some(x) = &self.uri {
            v.push(s("migrate_uri", x));
        }
        if let Some(b) = self.bandwidth {
            v.push(TypedParam::new("bandwidth", Value::ULLong(b)));
        }
        for d in &self.migrate_disks {
            v.push(s("migrate_disks", d));
        }
        v
    }
}

/// The job statistics the monitor reads (`virDomainGetJobStats`, VIR_DOMAIN_JOB_*).
#[derive(Debug, Clone, Default)]
pub struct JobStats {
    pub r#type: i32,
    pub time_elapsed: Option<u64>,
    pub data_total: Option<u64>,
    pub data_processed: Option<u64>,
    pub data_remaining: Option<u64>,
    pub mem_iteration: Option<u64>,
    pub downtime: Option<u64>,
    pub disk_processed: Option<u64>,
    /// Pages dirtied per second, and the page size: the rate the copy has to beat.
    pub mem_dirty_rate: Option<u64>,
    pub mem_page_size: Option<u64>,
}

/// Live pinning as libvirt reports it for a running guest.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LivePins {
    /// vCPU -> pCPUs it may run on (`virDomainGetVcpuPinInfo`, live).
    pub vcpu_pins: BTreeMap<String, Vec<u32>>,
    /// Emulator threads' pCPUs (`virDomainGetEmulatorPinInfo`, live).
    pub emulator_pins: Vec<u32>,
    /// vCPU -> affinity of its running thread (`virDomainGetVcpus` cpumaps).
    pub vcpu_threads: BTreeMap<String, Vec<u32>>,
    /// vCPU -> the pCPU its thread last ran on.
    pub vcpu_last_cpu: BTreeMap<String, i32>,
}

fn map_cpus(map: &[u8]) -> Vec<u32> {
    let mut v = Vec::new();
    for (i, b) in map.iter().enumerate() {
        for bit in 0..8 {
            if b & (1 << bit) != 0 {
                v.push(i as u32 * 8 + bit);
            }
        }
    }
    v
}

impl Domain {
    fn call<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Client, &RemoteDomain) -> Result<T>,
    ) -> Result<T> {
        self.conn
            .with(|c| f(c, &self.raw))
            .map_err(|e| e.at(&self.uri, &format!("{}: {what}", self.raw.name)))
    }

    pub fn name(&self) -> &str {
        &self.raw.name
    }
    pub fn uuid_string(&self) -> String {
        uuid_string(&self.raw.uuid)
    }
    /// The connection this domain was found on.
    pub fn host(&self) -> Host {
        Host {
            uri: self.uri.clone(),
            conn: self.conn.clone(),
        }
    }
    /// `virDomainUndefineFlags` of this domain (the daemon finds it by its uuid).
    pub fn undefine(&self, flags: u32) -> Result<()> {
        self.call("cannot undefine it", |c, d| {
            proc::undefine_flags(c, d, flags)
        })
    }
    /// `virDomainDestroyFlags`: stop its QEMU at once (the definition stays).
    pub fn destroy(&self, flags: u32) -> Result<()> {
        self.call("cannot destroy it", |c, d| proc::destroy_flags(c, d, flags))
    }
    pub fn xml_desc(&self, flags: u32) -> Result<String> {
        self.call("cannot read its XML", |c, d| proc::xml_desc(c, d, flags))
    }
    pub fn state(&self) -> Result<(DomainState, i32)> {
        self.call("cannot read its state", proc::domain_state)
            .map(|(s, r)| (DomainState::from_raw(s), r))
    }
    pub fn info(&self) -> Result<DomainInfo> {
        self.call("cannot read its info", proc::domain_info)
    }
    pub fn is_active(&self) -> Result<bool> {
        self.call("cannot tell whether it runs", proc::is_active)
    }
    pub fn is_persistent(&self) -> Result<bool> {
        self.call("cannot tell whether it is persistent", proc::is_persistent)
    }
    pub fn suspend(&self) -> Result<()> {
        self.call("cannot pause it", |c, d| {
            proc::dom_only(c, proc::DOMAIN_SUSPEND, d)
        })
    }
    pub fn resume(&self) -> Result<()> {
        self.call("cannot resume it", |c, d| {
            proc::dom_only(c, proc::DOMAIN_RESUME, d)
        })
    }
    pub fn abort_job(&self) -> Result<()> {
        self.call("cannot abort its job", |c, d| {
            proc::dom_only(c, proc::DOMAIN_ABORT_JOB, d)
        })
    }
    pub fn migrate_start_post_copy(&self, flags: u32) -> Result<()> {
        self.call("cannot switch its migration to post-copy", |c, d| {
            proc::dom_flags(c, proc::DOMAIN_MIGRATE_START_POST_COPY, d, flags)
        })
    }
    pub fn migrate_set_max_downtime(&self, ms: u64, flags: u32) -> Result<()> {
        self.call("cannot set the maximum downtime", |c, d| {
            proc::migrate_set_max_downtime(c, d, ms, flags)
        })
    }
    pub fn job_stats(&self, flags: u32) -> Result<JobStats> {
        let (t, params) = self.call("cannot read its job statistics", |c, d| {
            proc::job_stats(c, d, flags)
        })?;
        let get = |n: &str| {
            params
                .iter()
                .find(|p| p.field == n)
                .and_then(|p| p.as_u64())
        };
        Ok(JobStats {
            r#type: t,
            time_elapsed: get("time_elapsed"),
            data_total: get("data_total"),
            data_processed: get("data_processed"),
            data_remaining: get("data_remaining"),
            mem_iteration: get("memory_iteration"),
            downtime: get("downtime"),
            disk_processed: get("disk_processed"),
            mem_dirty_rate: get("memory_dirty_rate"),
            mem_page_size: get("memory_page_size"),
        })
    }
    pub fn block_info(&self, path: &str, flags: u32) -> Result<BlockInfo> {
        self.call("cannot read a disk's size", |c, d| {
            proc::block_info(c, d, path, flags)
        })
    }
    pub fn pin_vcpu_flags(&self, vcpu: u32, cpumap: &[u8], flags: u32) -> Result<()> {
        self.call("cannot pin a vCPU", |c, d| {
            proc::pin_vcpu_flags(c, d, vcpu, cpumap, flags)
        })
    }
    pub fn pin_emulator(&self, cpumap: &[u8], flags: u32) -> Result<()> {
        self.call("cannot pin the emulator", |c, d| {
            proc::pin_emulator(c, d, cpumap, flags)
        })
    }

    /// `virDomainMigrateToURI3` with VIR_MIGRATE_PEER2PEER: one perform call on the source
    /// daemon, which connects to `dconnuri` itself. Blocks until the migration ended.
    pub fn migrate_to_uri3(
        &self,
        dconnuri: Option<&str>,
        params: MigrateParameters,
        flags: u32,
    ) -> Result<()> {
        if flags & VIR_MIGRATE_PEER2PEER == 0 {
            return Err(Error::Unsupported {
                uri: self.uri.clone(),
                why: "only peer-to-peer migration (VIR_MIGRATE_PEER2PEER) is implemented".into(),
            });
        }
        let dconnuri = dconnuri.ok_or_else(|| Error::Unsupported {
            uri: self.uri.clone(),
            why: "a peer-to-peer migration needs the destination's URI".into(),
        })?;
        let typed = params.typed();
        // Not `call`: libvirt's own message is what the caller reports.
        self.conn
            .with(|c| proc::migrate_perform3_params(c, &self.raw, dconnuri, &typed, flags))
    }

    /// Live pins read through libvirt: vCPU pin info, emulator pin info and, for a running
    /// guest, the affinity of each vCPU thread.
    pub fn live_pins(&self) -> Result<LivePins> {
        let info = self.info()?;
        let node = self
            .conn
            .with(proc::node_info)
            .map_err(|e| e.at(&self.uri, "cannot read node info"))?;
        let host_cpus = (info_max_cpus(&node)).max(node.cpus).max(1);
        let maplen = host_cpus.div_ceil(8);
        let nvcpu = info.nr_virt_cpu.max(1);
        let mut out = LivePins::default();
        let (maps, num) = self.call("cannot read its vCPU pinning", |c, d| {
            proc::vcpu_pin_info(c, d, nvcpu, maplen, VIR_DOMAIN_AFFECT_LIVE)
        })?;
        for v in 0..(num.max(0) as u32).min(nvcpu) {
            let m = maps
                .get((v * maplen) as usize..((v + 1) * maplen) as usize)
                .unwrap_or(&[]);
            out.vcpu_pins.insert(v.to_string(), map_cpus(m));
        }
        let (map, pinned) = self.call("cannot read its emulator pinning", |c, d| {
            proc::emulator_pin_info(c, d, maplen, VIR_DOMAIN_AFFECT_LIVE)
        })?;
        if pinned > 0 {
            out.emulator_pins = map_cpus(&map);
        }
        let (vinfo, maps) = self.call("cannot read its vCPU threads", |c, d| {
            proc::vcpus(c, d, nvcpu, maplen)
        })?;
        for (i, vi) in vinfo.iter().enumerate() {
            let m = maps
                .get(i * maplen as usize..(i + 1) * maplen as usize)
                .unwrap_or(&[]);
            out.vcpu_threads.insert(vi.number.to_string(), map_cpus(m));
            out.vcpu_last_cpu.insert(vi.number.to_string(), vi.cpu);
        }
        Ok(out)
    }
}

/// VIR_NODEINFO_MAXCPUS.
fn info_max_cpus(n: &NodeInfo) -> u32 {
    n.nodes
        .saturating_mul(n.sockets)
        .saturating_mul(n.cores)
        .saturating_mul(n.threads)
}

pub fn guest_of(d: &Domain) -> anyhow::Result<Guest> {
    let name = d.name().to_string();
    let xml = d
        .xml_desc(0)
        .map_err(|e| anyhow::anyhow!("guest {name}: cannot read its XML: {}", e.message()))?;
    let mut g = domain::parse_guest(&xml).map_err(|e| anyhow::anyhow!(e))?;
    g.state = d
        .state()
        .map(|(s, _)| s.name())
        .unwrap_or("nostate")
        .to_string();
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let e = parse_uri("qemu:///sys\0tem").unwrap_err();
        assert!(e.to_string().contains("NUL byte"), "{e}");
        assert!(connect("qemu+tcp://h\0st/system").is_err());
        let t = parse_uri("qemu:///system").unwrap();
        assert_eq!(t.name, "qemu:///system");
        assert_eq!(
            t.endpoint,
            Endpoint::Unix(DEFAULT_SOCKETS.iter().map(PathBuf::from).collect())
        );
        let t = parse_uri("qemu+tcp://127.0.0.2/system").unwrap();
        assert_eq!(t.name, "qemu:///system");
        assert_eq!(
            t.endpoint,
            Endpoint::Tcp {
                host: "127.0.0.2".into(),
                port: 16509
            }
        );
        let t = parse_uri("qemu+tcp://[::1]:1234/system").unwrap();
        assert_eq!(
            t.endpoint,
            Endpoint::Tcp {
                host: "::1".into(),
                port: 1234
            }
        );
        let t = parse_uri("qemu+unix:///system?socket=/x/libvirt-sock").unwrap();
        assert_eq!(
            t.endpoint,
            Endpoint::Unix(vec![PathBuf::from("/x/libvirt-sock")])
        );
        assert_eq!(t.name, "qemu:///system");
        for bad in [
            "test:///default",
            "qemu+ssh://h/system",
            "qemu+tls://h/system",
            "qemu://h/system",
            "qemu+tcp:///system",
            "qemu+tcp://h:x/system",
            "nonsense",
            "qemu:///system?foo=1",
        ] {
            assert!(
                matches!(parse_uri(bad), Err(Error::Unsupported { .. })),
                "{bad}"
            );
        }
        assert!(parse_uri("test:///default")
            .unwrap_err()
            .to_string()
            .contains("test driver"));
    }

    #[test]
    fn uuids_and_maps() {
        let u = uuid_bytes("6c1a9e10-0000-4000-8000-000000000001").unwrap();
        assert_eq!(uuid_string(&u), "6c1a9e10-0000-4000-8000-000000000001");
        assert!(uuid_bytes("vm-taken").is_none());
        assert_eq!(map_cpus(&[0b101, 0b10]), vec![0, 2, 9]);
    }

    #[test]
    fn unreachable_names_what_was_tried() {
        let e = connect("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
            .err()
            .unwrap();
        let m = e.to_string();
        assert!(
            m.contains(
                "cannot connect to libvirt at qemu+unix:///system?socket=/nonexistent/libvirt-sock"
            ),
            "{m}"
        );
        assert!(m.contains("socket /nonexistent/libvirt-sock"), "{m}");
        let e = connect("qemu+tcp://127.0.0.1:1/system").err().unwrap();
        assert!(e.to_string().contains("tcp 127.0.0.1:1"), "{e}");
    }

    #[test]
    fn migrate_params_are_typed_like_libvirt() {
        let p = MigrateParameters {
            dest_xml: Some("<d/>".into()),
            bandwidth: Some(5),
            migrate_disks: vec!["vda".into(), "vdb".into()],
            ..Default::default()
        };
        let t = p.typed();
        assert_eq!(t[0].field, "destination_xml");
        assert_eq!(t[1].value, Value::ULLong(5));
        assert_eq!(t.iter().filter(|p| p.field == "migrate_disks").count(), 2);
    }

    #[test]
    fn nodeinfo_cell_when_capabilities_show_none() {
        let caps = "<capabilities><host><uuid>u</uuid><cpu><arch>x86_64</arch></cpu></host></capabilities>";
        let topo = topology::parse_capabilities(caps).unwrap();
        assert!(topo.cells.is_empty());
        let n = NodeInfo {
            model: "i686".into(),
            memory: 8 * 1024 * 1024,
            cpus: 4,
            mhz: 2000,
            nodes: 1,
            sockets: 1,
            cores: 4,
            threads: 1,
        };
        let t = with_nodeinfo_cell(topo, &n);
        assert_eq!(t.cells.len(), 1);
        assert_eq!(t.cells[0].cpus.len(), 4);
        assert_eq!(t.cells[0].memory_mb, 8192);
    }
}
