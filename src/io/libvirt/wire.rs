//! XDR (RFC 4506) encoding and libvirt's RPC packet framing (`virnetprotocol.x`).
//!
//! Hand-written on purpose: the subset libvirt's remote protocol uses is small (4-byte aligned
//! integers, hypers, doubles, counted and fixed opaques, strings, optional pointers encoded as a
//! bool followed by the value, discriminated unions for typed parameters), and the crates on
//! offer did not fit (see `mod.rs`).

use super::Error;
use std::io::{Read, Write};

/// `REMOTE_PROGRAM`, `REMOTE_PROTOCOL_VERSION` (remote_protocol.x).
pub const REMOTE_PROGRAM: u32 = 0x2000_8086;
pub const REMOTE_VERSION: u32 = 1;
/// `VIR_NET_MESSAGE_MAX` (total serialised size, without the length word) and the header size.
pub const MESSAGE_MAX: usize = 16 * 1024 * 1024;
pub const HEADER_LEN: usize = 24;
/// `VIR_NET_MESSAGE_STRING_MAX`.
pub const STRING_MAX: usize = 4 * 1024 * 1024;

/// virNetMessageType.
pub const CALL: u32 = 0;
pub const REPLY: u32 = 1;
/// virNetMessageStatus.
pub const STATUS_OK: u32 = 0;
pub const STATUS_ERROR: u32 = 1;

/// An XDR encoder appending to a buffer.
#[derive(Default)]
pub struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_bits().to_be_bytes());
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u32(v as u32)
    }
    fn pad(&mut self, n: usize) {
        let p = (4 - n % 4) % 4;
        self.buf.extend(std::iter::repeat_n(0u8, p));
    }
    /// `opaque x[N]`: the bytes and padding, no length.
    pub fn fixed_opaque(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self.pad(b.len());
        self
    }
    /// `opaque x<>`: length, bytes, padding.
    pub fn opaque(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.fixed_opaque(b)
    }
    /// `string x<>` (remote_nonnull_string).
    pub fn string(&mut self, s: &str) -> &mut Self {
        self.opaque(s.as_bytes())
    }
    /// `remote_string` = `remote_nonnull_string *`: present flag, then the string.
    pub fn opt_string(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.bool(true).string(s),
            None => self.bool(false),
        }
    }
}

/// An XDR decoder over one reply's payload; every read is bounds-checked.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn short(what: &str) -> Error {
    Error::Protocol(format!("reply too short while reading {what}"))
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).ok_or_else(|| short(what))?;
        let s = self.buf.get(self.pos..end).ok_or_else(|| short(what))?;
        self.pos = end;
        Ok(s)
    }
    pub fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4, "an int")?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn i32(&mut self) -> Result<i32, Error> {
        Ok(self.u32()? as i32)
    }
    pub fn u64(&mut self) -> Result<u64, Error> {
        let b = self.take(8, "a hyper")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    pub fn i64(&mut self) -> Result<i64, Error> {
        Ok(self.u64()? as i64)
    }
    pub fn f64(&mut self) -> Result<f64, Error> {
        Ok(f64::from_bits(self.u64()?))
    }
    pub fn bool(&mut self) -> Result<bool, Error> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(Error::Protocol(format!("bad XDR bool {v}"))),
        }
    }
    pub fn fixed_opaque(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let b = self.take(n, "fixed opaque data")?;
        self.take((4 - n % 4) % 4, "padding")?;
        Ok(b)
    }
    pub fn opaque(&mut self, max: usize) -> Result<&'a [u8], Error> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(Error::Protocol(format!(
                "opaque of {n} bytes exceeds its limit {max}"
            )));
        }
        self.fixed_opaque(n)
    }
    pub fn string(&mut self) -> Result<String, Error> {
        let b = self.opaque(STRING_MAX)?;
        String::from_utf8(b.to_vec()).map_err(|_| Error::Protocol("string is not UTF-8".into()))
    }
    pub fn opt_string(&mut self) -> Result<Option<String>, Error> {
        if self.bool()? {
            Ok(Some(self.string()?))
        } else {
            Ok(None)
        }
    }
    /// A counted array's length, checked against its limit and against the bytes left (each
    /// element takes at least `min_elem` bytes), so a hostile count cannot make us allocate.
    pub fn count(&mut self, max: usize, min_elem: usize) -> Result<usize, Error> {
        let n = self.u32()? as usize;
        if n > max || n.saturating_mul(min_elem.max(1)) > self.buf.len() - self.pos {
            return Err(Error::Protocol(format!(
                "array of {n} elements exceeds its limit or the reply"
            )));
        }
        Ok(n)
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// The header of one packet (`virNetMessageHeader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub prog: u32,
    pub vers: u32,
    pub proc_: i32,
    pub mtype: u32,
    pub serial: u32,
    pub status: u32,
}

/// One whole packet: length word (counting itself), header, payload.
pub fn frame(h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32((4 + HEADER_LEN + payload.len()) as u32)
        .u32(h.prog)
        .u32(h.vers)
        .i32(h.proc_)
        .u32(h.mtype)
        .u32(h.serial)
        .u32(h.status);
    e.buf.extend_from_slice(payload);
    e.buf
}

pub fn write_packet(w: &mut impl Write, h: &Header, payload: &[u8]) -> std::io::Result<()> {
    let p = frame(h, payload);
    if p.len() > MESSAGE_MAX + 4 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "request larger than libvirt's message limit",
        ));
    }
    w.write_all(&p)?;
    w.flush()
}

/// Read one packet; the length is checked before anything is allocated.
pub fn read_packet(r: &mut impl Read) -> Result<(Header, Vec<u8>), Error> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(Error::io("reading a reply"))?;
    let len = u32::from_be_bytes(len) as usize;
    if !(4 + HEADER_LEN..=4 + MESSAGE_MAX).contains(&len) {
        return Err(Error::Protocol(format!(
            "packet length {len} out of range (is this a libvirtd socket?)"
        )));
    }
    let mut body = vec![0u8; len - 4];
    r.read_exact(&mut body)
        .map_err(Error::io("reading a reply"))?;
    let mut d = Dec::new(&body[..HEADER_LEN]);
    let h = Header {
        prog: d.u32()?,
        vers: d.u32()?,
        proc_: d.i32()?,
        mtype: d.u32()?,
        serial: d.u32()?,
        status: d.u32()?,
    };
    body.drain(..HEADER_LEN);
    Ok((h, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdr_round_trip_and_padding() {
        let mut e = Enc::new();
        e.u32(7)
            .i32(-2)
            .u64(1 << 40)
            .i64(-5)
            .f64(1.5)
            .bool(true)
            .string("abcde")
            .opt_string(None)
            .opt_string(Some("x"))
            .fixed_opaque(&[1, 2, 3])
            .opaque(&[9; 4]);
        // "abcde" is length 4 + 5 bytes + 3 padding.
        assert_eq!(e.buf.len(), 4 + 4 + 8 + 8 + 8 + 4 + 12 + 4 + 12 + 4 + 8);
        let mut d = Dec::new(&e.buf);
        assert_eq!(d.u32().unwrap(), 7);
        assert_eq!(d.i32().unwrap(), -2);
        assert_eq!(d.u64().unwrap(), 1 << 40);
        assert_eq!(d.i64().unwrap(), -5);
        assert_eq!(d.f64().unwrap(), 1.5);
        assert!(d.bool().unwrap());
        assert_eq!(d.string().unwrap(), "abcde");
        assert_eq!(d.opt_string().unwrap(), None);
        assert_eq!(d.opt_string().unwrap().as_deref(), Some("x"));
        assert_eq!(d.fixed_opaque(3).unwrap(), &[1, 2, 3]);
        assert_eq!(d.opaque(16).unwrap(), &[9; 4]);
        assert_eq!(d.remaining(), 0);
        assert!(d.u32().is_err());
    }

    #[test]
    fn hostile_lengths_are_refused() {
        let mut e = Enc::new();
        e.u32(u32::MAX);
        assert!(Dec::new(&e.buf).opaque(100).is_err());
        assert!(Dec::new(&e.buf).string().is_err());
        assert!(Dec::new(&e.buf).count(1 << 20, 4).is_err());
        // A packet whose length word is absurd is refused before any allocation.
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(read_packet(&mut r).is_err());
        let mut r: &[u8] = &[0, 0, 0, 3];
        assert!(read_packet(&mut r).is_err());
    }

    #[test]
    fn packet_framing() {
        let h = Header {
            prog: REMOTE_PROGRAM,
            vers: REMOTE_VERSION,
            proc_: 66,
            mtype: CALL,
            serial: 1,
            status: STATUS_OK,
        };
        let p = frame(&h, &[0, 0, 0, 5]);
        assert_eq!(&p[..8], &[0, 0, 0, 32, 0x20, 0x00, 0x80, 0x86]);
        let (h2, body) = read_packet(&mut p.as_slice()).unwrap();
        assert_eq!(h2, h);
        assert_eq!(body, vec![0, 0, 0, 5]);
    }
}
