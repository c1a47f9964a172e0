//! The procedures of libvirt's remote program that the modules call: numbers, argument and
//! reply layouts (remote_protocol.x), over one connection (`Client`).

use super::wire::{self, Dec, Enc, Header};
use super::Error;
use std::io::{Read, Write};

// Procedure numbers (`enum remote_procedure`).
pub const CONNECT_OPEN: i32 = 1;
pub const CONNECT_CLOSE: i32 = 2;
pub const NODE_GET_INFO: i32 = 6;
pub const CONNECT_GET_CAPABILITIES: i32 = 7;
pub const DOMAIN_GET_XML_DESC: i32 = 14;
pub const DOMAIN_GET_INFO: i32 = 16;
pub const DOMAIN_GET_VCPUS: i32 = 20;
pub const DOMAIN_LOOKUP_BY_NAME: i32 = 23;
pub const DOMAIN_LOOKUP_BY_UUID: i32 = 24;
pub const DOMAIN_RESUME: i32 = 28;
pub const DOMAIN_SUSPEND: i32 = 34;
pub const CONNECT_GET_HOSTNAME: i32 = 59;
pub const AUTH_LIST: i32 = 66;
pub const DOMAIN_IS_ACTIVE: i32 = 150;
pub const DOMAIN_IS_PERSISTENT: i32 = 151;
pub const CONNECT_COMPARE_CPU: i32 = 158;
pub const DOMAIN_ABORT_JOB: i32 = 164;
pub const DOMAIN_MIGRATE_SET_MAX_DOWNTIME: i32 = 166;
pub const DOMAIN_GET_BLOCK_INFO: i32 = 194;
pub const DOMAIN_GET_STATE: i32 = 212;
pub const DOMAIN_PIN_VCPU_FLAGS: i32 = 225;
pub const DOMAIN_GET_VCPU_PIN_INFO: i32 = 230;
pub const DOMAIN_UNDEFINE_FLAGS: i32 = 231;
pub const DOMAIN_DESTROY_FLAGS: i32 = 234;
pub const CONNECT_LIST_ALL_DOMAINS: i32 = 273;
pub const DOMAIN_PIN_EMULATOR: i32 = 279;
pub const DOMAIN_GET_EMULATOR_PIN_INFO: i32 = 280;
pub const DOMAIN_GET_JOB_STATS: i32 = 298;
pub const DOMAIN_MIGRATE_PERFORM3_PARAMS: i32 = 305;
pub const DOMAIN_DEFINE_XML_FLAGS: i32 = 350;
pub const DOMAIN_MIGRATE_START_POST_COPY: i32 = 364;

/// Our own bounds on reply arrays (at or below libvirt's REMOTE_*_MAX).
const DOMAIN_LIST_MAX: usize = 16384;
const CPUMAPS_MAX: usize = 8 * 1024 * 1024;
const TYPED_PARAMS_MAX: usize = 4096;

/// `remote_auth_type`.
pub const AUTH_NONE: u32 = 0;

/// `remote_nonnull_domain`: how the protocol names a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDomain {
    pub name: String,
    pub uuid: [u8; 16],
    pub id: i32,
}

impl RemoteDomain {
    pub fn encode(&self, e: &mut Enc) {
        e.string(&self.name).fixed_opaque(&self.uuid).i32(self.id);
    }
    pub fn decode(d: &mut Dec) -> Result<Self, Error> {
        let name = d.string()?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(d.fixed_opaque(16)?);
        Ok(RemoteDomain {
            name,
            uuid,
            id: d.i32()?,
        })
    }
}

/// `remote_typed_param`: a named value of one of virTypedParameterType's kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i32),
    UInt(u32),
    LLong(i64),
    ULLong(u64),
    Double(f64),
    Boolean(bool),
    String(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TypedParam {
    pub field: String,
    pub value: Value,
}

impl TypedParam {
    pub fn new(field: &str, value: Value) -> Self {
        TypedParam {
            field: field.to_string(),
            value,
        }
    }
    pub fn encode(&self, e: &mut Enc) {
        e.string(&self.field);
        match &self.value {
            Value::Int(v) => e.i32(1).i32(*v),
            Value::UInt(v) => e.i32(2).u32(*v),
            Value::LLong(v) => e.i32(3).i64(*v),
            Value::ULLong(v) => e.i32(4).u64(*v),
            Value::Double(v) => e.i32(5).f64(*v),
            Value::Boolean(v) => e.i32(6).i32(*v as i32),
            Value::String(s) => e.i32(7).string(s),
        };
    }
    pub fn decode(d: &mut Dec) -> Result<Self, Error> {
        let field = d.string()?;
        let value = match d.i32()? {
            1 => Value::Int(d.i32()?),
            2 => Value::UInt(d.u32()?),
            3 => Value::LLong(d.i64()?),
            4 => Value::ULLong(d.u64()?),
            5 => Value::Double(d.f64()?),
            6 => Value::Boolean(d.i32()? != 0),
            7 => Value::String(d.string()?),
            t => {
                return Err(Error::Protocol(format!(
                    "typed parameter {field} has unknown type {t}"
                )))
            }
        };
        Ok(TypedParam { field, value })
    }
    /// The value as an unsigned number (job statistics are ULLONG, some drivers use others).
    pub fn as_u64(&self) -> Option<u64> {
        match self.value {
            Value::Int(v) => u64::try_from(v).ok(),
            Value::UInt(v) => Some(v as u64),
            Value::LLong(v) => u64::try_from(v).ok(),
            Value::ULLong(v) => Some(v),
            Value::Double(v) if v >= 0.0 => Some(v as u64),
            _ => None,
        }
    }
}

/// A `remote_error` reply (`virNetMessageError`): the fields a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    pub code: i32,
    pub domain: i32,
    pub message: String,
}

fn decode_error(body: &[u8]) -> Result<RemoteError, Error> {
    let mut d = Dec::new(body);
    let code = d.i32()?;
    let domain = d.i32()?;
    let message = d.opt_string()?;
    let _level = d.i32()?;
    // The rest (dom, str1..3, int1, int2, net) carries nothing we report.
    Ok(RemoteError {
        code,
        domain,
        message: message.unwrap_or_else(|| format!("libvirt error code {code}")),
    })
}

/// The byte stream to libvirtd: its unix socket or TCP.
pub enum Stream {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(b),
            Stream::Tcp(s) => s.read(b),
        }
    }
}
impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(b),
            Stream::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// One connection: calls are strictly sequential (the caller holds it behind a mutex); a
/// connection whose stream broke mid-call is not reused.
pub struct Client {
    stream: Stream,
    serial: u32,
    broken: bool,
}

impl Client {
    pub fn new(stream: Stream) -> Self {
        Client {
            stream,
            serial: 0,
            broken: false,
        }
    }

    /// One call: send the arguments, return the reply's payload, or the daemon's error.
    pub fn call(&mut self, proc_: i32, args: &[u8]) -> Result<Vec<u8>, Error> {
        if self.broken {
            return Err(Error::Closed);
        }
        self.serial = self.serial.wrapping_add(1);
        let h = Header {
            prog: wire::REMOTE_PROGRAM,
            vers: wire::REMOTE_VERSION,
            proc_,
            mtype: wire::CALL,
            serial: self.serial,
            status: wire::STATUS_OK,
        };
        let r = self.exchange(&h, args);
        if matches!(r, Err(Error::Io { .. }) | Err(Error::Protocol(_))) {
            self.broken = true;
        }
        r
    }

    fn exchange(&mut self, h: &Header, args: &[u8]) -> Result<Vec<u8>, Error> {
        wire::write_packet(&mut self.stream, h, args).map_err(Error::io("sending a call"))?;
        loop {
            let (rh, body) = wire::read_packet(&mut self.stream)?;
            // Events, keepalives and stream data are not ours: skip them.
            if rh.prog != wire::REMOTE_PROGRAM || rh.mtype != wire::REPLY || rh.serial != h.serial {
                continue;
            }
            if rh.proc_ != h.proc_ {
                return Err(Error::Protocol(format!(
                    "reply to procedure {} for call {}",
                    rh.proc_, h.proc_
                )));
            }
            return match rh.status {
                wire::STATUS_OK => Ok(body),
                wire::STATUS_ERROR => Err(Error::Remote(decode_error(&body)?)),
                s => Err(Error::Protocol(format!("reply status {s}"))),
            };
        }
    }

    pub fn set_timeout(&self, t: Option<std::time::Duration>) {
        let _ = match &self.stream {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        };
    }
}

// ---------------------------------------------------------------------------------------------
// Typed procedures.

fn dom_args(d: &RemoteDomain) -> Enc {
    let mut e = Enc::new();
    d.encode(&mut e);
    e
}

pub fn auth_list(c: &mut Client) -> Result<Vec<u32>, Error> {
    let b = c.call(AUTH_LIST, &[])?;
    let mut d = Dec::new(&b);
    let n = d.count(64, 4)?;
    (0..n).map(|_| d.u32()).collect()
}

pub fn connect_open(c: &mut Client, name: &str) -> Result<(), Error> {
    let mut e = Enc::new();
    e.opt_string(Some(name)).u32(0);
    c.call(CONNECT_OPEN, &e.buf).map(|_| ())
}

pub fn connect_close(c: &mut Client) -> Result<(), Error> {
    c.call(CONNECT_CLOSE, &[]).map(|_| ())
}

fn one_string(c: &mut Client, p: i32, args: &[u8]) -> Result<String, Error> {
    let b = c.call(p, args)?;
    Dec::new(&b).string()
}

fn one_int(c: &mut Client, p: i32, args: &[u8]) -> Result<i32, Error> {
    let b = c.call(p, args)?;
    Dec::new(&b).i32()
}

pub fn hostname(c: &mut Client) -> Result<String, Error> {
    one_string(c, CONNECT_GET_HOSTNAME, &[])
}

pub fn capabilities(c: &mut Client) -> Result<String, Error> {
    one_string(c, CONNECT_GET_CAPABILITIES, &[])
}

/// `virNodeInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub model: String,
    /// KiB.
    pub memory: u64,
    pub cpus: u32,
    pub mhz: u32,
    pub nodes: u32,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

pub fn node_info(c: &mut Client) -> Result<NodeInfo, Error> {
    let b = c.call(NODE_GET_INFO, &[])?;
    let mut d = Dec::new(&b);
    // `char model[32]`: rpcgen encodes each char as a 4-byte int.
    let mut model = Vec::new();
    for _ in 0..32 {
        model.push(d.i32()? as u8);
    }
    let model = String::from_utf8_lossy(model.split(|b| *b == 0).next().unwrap_or(&[])).into();
    let memory = d.u64()?;
    let mut n = || d.i32().map(|v| v.max(0) as u32);
    Ok(NodeInfo {
        model,
        memory,
        cpus: n()?,
        mhz: n()?,
        nodes: n()?,
        sockets: n()?,
        cores: n()?,
        threads: n()?,
    })
}

pub fn compare_cpu(c: &mut Client, xml: &str, flags: u32) -> Result<i32, Error> {
    let mut e = Enc::new();
    e.string(xml).u32(flags);
    one_int(c, CONNECT_COMPARE_CPU, &e.buf)
}

pub fn list_all_domains(c: &mut Client, flags: u32) -> Result<Vec<RemoteDomain>, Error> {
    let mut e = Enc::new();
    e.i32(1).u32(flags);
    let b = c.call(CONNECT_LIST_ALL_DOMAINS, &e.buf)?;
    let mut d = Dec::new(&b);
    let n = d.count(DOMAIN_LIST_MAX, 24)?;
    (0..n).map(|_| RemoteDomain::decode(&mut d)).collect()
}

pub fn lookup_by_name(c: &mut Client, name: &str) -> Result<RemoteDomain, Error> {
    let mut e = Enc::new();
    e.string(name);
    let b = c.call(DOMAIN_LOOKUP_BY_NAME, &e.buf)?;
    RemoteDomain::decode(&mut Dec::new(&b))
}

pub fn lookup_by_uuid(c: &mut Client, uuid: &[u8; 16]) -> Result<RemoteDomain, Error> {
    let mut e = Enc::new();
    e.fixed_opaque(uuid);
    let b = c.call(DOMAIN_LOOKUP_BY_UUID, &e.buf)?;
    RemoteDomain::decode(&mut Dec::new(&b))
}

/// `remote_domain_define_xml_flags_args` (xml, flags) -> `remote_domain_define_xml_flags_ret` (dom).
pub fn define_xml_args(xml: &str, flags: u32) -> Vec<u8> {
    let mut e = Enc::new();
    e.string(xml).u32(flags);
    e.buf
}

/// `virDomainDefineXMLFlags`: a persistent, inactive definition. The daemon refuses, under its
/// domain-list lock, a name that already exists with another uuid.
pub fn define_xml_flags(c: &mut Client, xml: &str, flags: u32) -> Result<RemoteDomain, Error> {
    let b = c.call(DOMAIN_DEFINE_XML_FLAGS, &define_xml_args(xml, flags))?;
    RemoteDomain::decode(&mut Dec::new(&b))
}

/// `remote_domain_undefine_flags_args` (dom, flags); no reply data.
pub fn undefine_args(dom: &RemoteDomain, flags: u32) -> Vec<u8> {
    let mut e = dom_args(dom);
    e.u32(flags);
    e.buf
}

/// `virDomainUndefineFlags`. The daemon finds the domain by the uuid in `dom` (the qemu driver
/// looks domains up by uuid), so a domain of the same name but another uuid is not touched.
pub fn undefine_flags(c: &mut Client, dom: &RemoteDomain, flags: u32) -> Result<(), Error> {
    c.call(DOMAIN_UNDEFINE_FLAGS, &undefine_args(dom, flags))
        .map(|_| ())
}

/// `virDomainDestroyFlags` (same arguments as undefine: the domain and flags; no reply data).
pub fn destroy_flags(c: &mut Client, dom: &RemoteDomain, flags: u32) -> Result<(), Error> {
    c.call(DOMAIN_DESTROY_FLAGS, &undefine_args(dom, flags))
        .map(|_| ())
}

pub fn xml_desc(c: &mut Client, dom: &RemoteDomain, flags: u32) -> Result<String, Error> {
    let mut e = dom_args(dom);
    e.u32(flags);
    one_string(c, DOMAIN_GET_XML_DESC, &e.buf)
}

/// `virDomainInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    pub state: u32,
    /// KiB.
    pub max_mem: u64,
    pub memory: u64,
    pub nr_virt_cpu: u32,
    pub cpu_time: u64,
}

pub fn domain_info(c: &mut Client, dom: &RemoteDomain) -> Result<DomainInfo, Error> {
    let b = c.call(DOMAIN_GET_INFO, &dom_args(dom).buf)?;
    let mut d = Dec::new(&b);
    Ok(DomainInfo {
        state: d.u32()?,
        max_mem: d.u64()?,
        memory: d.u64()?,
        nr_virt_cpu: d.u32()?,
        cpu_time: d.u64()?,
    })
}

pub fn domain_state(c: &mut Client, dom: &RemoteDomain) -> Result<(i32, i32), Error> {
    let mut e = dom_args(dom);
    e.u32(0);
    let b = c.call(DOMAIN_GET_STATE, &e.buf)?;
    let mut d = Dec::new(&b);
    Ok((d.i32()?, d.i32()?))
}

pub fn is_active(c: &mut Client, dom: &RemoteDomain) -> Result<bool, Error> {
    one_int(c, DOMAIN_IS_ACTIVE, &dom_args(dom).buf).map(|v| v != 0)
}

pub fn is_persistent(c: &mut Client, dom: &RemoteDomain) -> Result<bool, Error> {
    one_int(c, DOMAIN_IS_PERSISTENT, &dom_args(dom).buf).map(|v| v != 0)
}

/// Calls that take the domain only and return nothing.
pub fn dom_only(c: &mut Client, p: i32, dom: &RemoteDomain) -> Result<(), Error> {
    c.call(p, &dom_args(dom).buf).map(|_| ())
}

/// Calls that take the domain and flags and return nothing.
pub fn dom_flags(c: &mut Client, p: i32, dom: &RemoteDomain, flags: u32) -> Result<(), Error> {
    let mut e = dom_args(dom);
    e.u32(flags);
    c.call(p, &e.buf).map(|_| ())
}

pub fn job_stats(
    c: &mut Client,
    dom: &RemoteDomain,
    flags: u32,
) -> Result<(i32, Vec<TypedParam>), Error> {
    let mut e = dom_args(dom);
    e.u32(flags);
    let b = c.call(DOMAIN_GET_JOB_STATS, &e.buf)?;
    let mut d = Dec::new(&b);
    let t = d.i32()?;
    let n = d.count(TYPED_PARAMS_MAX, 12)?;
    let params = (0..n)
        .map(|_| TypedParam::decode(&mut d))
        .collect::<Result<_, _>>()?;
    Ok((t, params))
}

pub fn migrate_set_max_downtime(
    c: &mut Client,
    dom: &RemoteDomain,
    ms: u64,
    flags: u32,
) -> Result<(), Error> {
    let mut e = dom_args(dom);
    e.u64(ms).u32(flags);
    c.call(DOMAIN_MIGRATE_SET_MAX_DOWNTIME, &e.buf).map(|_| ())
}

/// `virDomainMigratePerform3Params` on the source, peer-to-peer: the source daemon connects to
/// `dconnuri` itself; no cookie. Returns when the migration ended.
pub fn migrate_perform3_params(
    c: &mut Client,
    dom: &RemoteDomain,
    dconnuri: &str,
    params: &[TypedParam],
    flags: u32,
) -> Result<(), Error> {
    let mut e = dom_args(dom);
    e.opt_string(Some(dconnuri)).u32(params.len() as u32);
    for p in params {
        p.encode(&mut e);
    }
    e.opaque(&[]).u32(flags);
    c.call(DOMAIN_MIGRATE_PERFORM3_PARAMS, &e.buf).map(|_| ())
}

pub fn pin_vcpu_flags(
    c: &mut Client,
    dom: &RemoteDomain,
    vcpu: u32,
    cpumap: &[u8],
    flags: u32,
) -> Result<(), Error> {
    let mut e = dom_args(dom);
    e.u32(vcpu).opaque(cpumap).u32(flags);
    c.call(DOMAIN_PIN_VCPU_FLAGS, &e.buf).map(|_| ())
}

pub fn pin_emulator(
    c: &mut Client,
    dom: &RemoteDomain,
    cpumap: &[u8],
    flags: u32,
) -> Result<(), Error> {
    let mut e = dom_args(dom);
    e.opaque(cpumap).u32(flags);
    c.call(DOMAIN_PIN_EMULATOR, &e.buf).map(|_| ())
}

/// `virDomainGetVcpuPinInfo`: `ncpumaps` maps of `maplen` bytes; returns the maps and how many
/// vCPUs they describe.
pub fn vcpu_pin_info(
    c: &mut Client,
    dom: &RemoteDomain,
    ncpumaps: u32,
    maplen: u32,
    flags: u32,
) -> Result<(Vec<u8>, i32), Error> {
    let mut e = dom_args(dom);
    e.i32(ncpumaps as i32).i32(maplen as i32).u32(flags);
    let b = c.call(DOMAIN_GET_VCPU_PIN_INFO, &e.buf)?;
    let mut d = Dec::new(&b);
    let maps = d.opaque(CPUMAPS_MAX)?.to_vec();
    Ok((maps, d.i32()?))
}

/// `virDomainGetEmulatorPinInfo`: one map; the int says whether the emulator is pinned at all.
pub fn emulator_pin_info(
    c: &mut Client,
    dom: &RemoteDomain,
    maplen: u32,
    flags: u32,
) -> Result<(Vec<u8>, i32), Error> {
    let mut e = dom_args(dom);
    e.i32(maplen as i32).u32(flags);
    let b = c.call(DOMAIN_GET_EMULATOR_PIN_INFO, &e.buf)?;
    let mut d = Dec::new(&b);
    let map = d.opaque(CPUMAPS_MAX)?.to_vec();
    Ok((map, d.i32()?))
}

/// `remote_vcpu_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuInfo {
    pub number: u32,
    pub state: i32,
    pub cpu_time: u64,
    /// The pCPU the vCPU thread last ran on.
    pub cpu: i32,
}

/// `virDomainGetVcpus` (running guests only): per vCPU its info and the affinity map of its
/// thread.
pub fn vcpus(
    c: &mut Client,
    dom: &RemoteDomain,
    maxinfo: u32,
    maplen: u32,
) -> Result<(Vec<VcpuInfo>, Vec<u8>), Error> {
    let mut e = dom_args(dom);
    e.i32(maxinfo as i32).i32(maplen as i32);
    let b = c.call(DOMAIN_GET_VCPUS, &e.buf)?;
    let mut d = Dec::new(&b);
    let n = d.count(16384, 20)?;
    let mut info = Vec::with_capacity(n);
    for _ in 0..n {
        info.push(VcpuInfo {
            number: d.u32()?,
            state: d.i32()?,
            cpu_time: d.u64()?,
            cpu: d.i32()?,
        });
    }
    let maps = d.opaque(CPUMAPS_MAX)?.to_vec();
    Ok((info, maps))
}

/// `virDomainBlockInfo` (bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    pub allocation: u64,
    pub capacity: u64,
    pub physical: u64,
}

pub fn block_info(
    c: &mut Client,
    dom: &RemoteDomain,
    path: &str,
    flags: u32,
) -> Result<BlockInfo, Error> {
    let mut e = dom_args(dom);
    e.string(path).u32(flags);
    let b = c.call(DOMAIN_GET_BLOCK_INFO, &e.buf)?;
    let mut d = Dec::new(&b);
    Ok(BlockInfo {
        allocation: d.u64()?,
        capacity: d.u64()?,
        physical: d.u64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake daemon's error reply (`remote_error`: code, domain, message, level, no domain or
    /// network, no extra strings or ints) to the call whose header is `h`.
    fn write_error_reply<W: std::io::Write>(
        b: &mut W,
        h: Header,
        code: i32,
        domain: i32,
        msg: &str,
    ) {
        let mut e = Enc::new();
        e.i32(code)
            .i32(domain)
            .opt_string(Some(msg))
            .i32(2)
            .bool(false);
        e.opt_string(None)
            .opt_string(None)
            .opt_string(None)
            .i32(0)
            .i32(0)
            .bool(false);
        let rep = Header {
            mtype: wire::REPLY,
            status: wire::STATUS_ERROR,
            ..h
        };
        wire::write_packet(b, &rep, &e.buf).unwrap();
    }

    #[test]
    fn typed_params_round_trip() {
        let ps = vec![
            TypedParam::new("destination_xml", Value::String("<domain/>".into())),
            TypedParam::new("bandwidth", Value::ULLong(100)),
            TypedParam::new("i", Value::Int(-1)),
            TypedParam::new("u", Value::UInt(3)),
            TypedParam::new("l", Value::LLong(-4)),
            TypedParam::new("d", Value::Double(0.5)),
            TypedParam::new("b", Value::Boolean(true)),
        ];
        let mut e = Enc::new();
        for p in &ps {
            p.encode(&mut e);
        }
        let mut d = Dec::new(&e.buf);
        let back: Vec<_> = (0..ps.len())
            .map(|_| TypedParam::decode(&mut d).unwrap())
            .collect();
        assert_eq!(back, ps);
        assert_eq!(back[1].as_u64(), Some(100));
        assert_eq!(back[2].as_u64(), None);
        // Unknown type: refused.
        let mut e = Enc::new();
        e.string("x").i32(99);
        assert!(TypedParam::decode(&mut Dec::new(&e.buf)).is_err());
    }

    #[test]
    fn remote_error_decodes() {
        let mut e = Enc::new();
        e.i32(42)
            .i32(10)
            .opt_string(Some("Domain not found: no domain with matching name 'x'"));
        e.i32(2)
            .bool(false)
            .opt_string(None)
            .opt_string(None)
            .opt_string(None);
        e.i32(0).i32(0).bool(false);
        let r = decode_error(&e.buf).unwrap();
        assert_eq!(r.code, 42);
        assert!(r.message.contains("matching name"));
    }

    /// A fake daemon on a socket pair: one reply to a call, after an unrelated event packet.
    #[test]
    fn call_skips_events_and_matches_serial() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let (h, _args) = wire::read_packet(&mut b).unwrap();
            assert_eq!(h.proc_, CONNECT_GET_HOSTNAME);
            let ev = Header {
                mtype: 2,
                serial: 0,
                ..h
            };
            wire::write_packet(&mut b, &ev, &[0, 0, 0, 0]).unwrap();
            let mut e = Enc::new();
            e.string("cmp9");
            let rep = Header {
                mtype: wire::REPLY,
                ..h
            };
            wire::write_packet(&mut b, &rep, &e.buf).unwrap();
            // Then an error reply to the second call.
            let (h, _) = wire::read_packet(&mut b).unwrap();
            write_error_reply(&mut b, h, 1, 0, "boom");
        });
        let mut c = Client::new(Stream::Unix(a));
        assert_eq!(hostname(&mut c).unwrap(), "cmp9");
        match hostname(&mut c) {
            Err(Error::Remote(r)) => assert_eq!(r.message, "boom"),
            other => panic!("{other:?}"),
        }
        t.join().unwrap();
        // The daemon hung up: the next call fails with an I/O error, then the client is closed.
        assert!(matches!(hostname(&mut c), Err(Error::Io { .. })));
        assert!(matches!(hostname(&mut c), Err(Error::Closed)));
    }

    #[test]
    fn define_and_undefine_encode_like_remote_protocol_x() {
        // remote_domain_define_xml_flags_args: string xml (length, bytes, pad to 4), uint flags.
        let a = define_xml_args("<d/>!", 0);
        assert_eq!(
            a,
            vec![0, 0, 0, 5, b'<', b'd', b'/', b'>', b'!', 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(define_xml_args("abcd", 1)[8..], [0, 0, 0, 1]);
        // remote_domain_undefine_flags_args: remote_nonnull_domain (name, uuid[16], id), uint flags.
        let d = RemoteDomain {
            name: "numa-repin-claim".into(),
            uuid: [7; 16],
            id: -1,
        };
        let a = undefine_args(&d, 2);
        let mut x = Dec::new(&a);
        assert_eq!(x.string().unwrap(), "numa-repin-claim");
        assert_eq!(x.fixed_opaque(16).unwrap(), &[7u8; 16]);
        assert_eq!(x.i32().unwrap(), -1);
        assert_eq!(x.u32().unwrap(), 2);
        assert_eq!(a.len(), 4 + 16 + 16 + 4 + 4);
        assert_eq!((DOMAIN_DEFINE_XML_FLAGS, DOMAIN_UNDEFINE_FLAGS), (350, 231));
    }

    /// Define replies with the domain; undefine with an empty body; a refused define is the
    /// daemon's error.
    #[test]
    fn define_and_undefine_over_a_fake_daemon() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let (h, args) = wire::read_packet(&mut b).unwrap();
            assert_eq!(h.proc_, DOMAIN_DEFINE_XML_FLAGS);
            let mut d = Dec::new(&args);
            assert_eq!(d.string().unwrap(), "<domain/>");
            assert_eq!(d.u32().unwrap(), 0);
            let mut e = Enc::new();
            RemoteDomain {
                name: "numa-repin-claim".into(),
                uuid: [1; 16],
                id: -1,
            }
            .encode(&mut e);
            let rep = Header {
                mtype: wire::REPLY,
                ..h
            };
            wire::write_packet(&mut b, &rep, &e.buf).unwrap();
            let (h, args) = wire::read_packet(&mut b).unwrap();
            assert_eq!(h.proc_, DOMAIN_UNDEFINE_FLAGS);
            let mut d = Dec::new(&args);
            assert_eq!(RemoteDomain::decode(&mut d).unwrap().uuid, [1; 16]);
            assert_eq!(d.u32().unwrap(), 0);
            let rep = Header {
                mtype: wire::REPLY,
                ..h
            };
            wire::write_packet(&mut b, &rep, &[]).unwrap();
            let (h, _) = wire::read_packet(&mut b).unwrap();
            write_error_reply(
                &mut b,
                h,
                9,
                10,
                "operation failed: domain 'numa-repin-claim' already exists with uuid 01010101-0101-0101-0101-010101010101",
            );
        });
        let mut c = Client::new(Stream::Unix(a));
        let d = define_xml_flags(&mut c, "<domain/>", 0).unwrap();
        assert_eq!(
            (d.name.as_str(), d.uuid, d.id),
            ("numa-repin-claim", [1; 16], -1)
        );
        undefine_flags(&mut c, &d, 0).unwrap();
        match define_xml_flags(&mut c, "<domain/>", 0) {
            Err(Error::Remote(r)) => assert!(r.message.contains("already exists"), "{r:?}"),
            other => panic!("{other:?}"),
        }
        t.join().unwrap();
    }
}
