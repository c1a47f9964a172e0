//! Bounds on what comes from outside (module arguments, saved files, XML, facts handed back in
//! as JSON): every count, size and path is checked here before anything is allocated, divided
//! or computed from it. One home for the numbers and the checks; modules call them from their
//! args' [`crate::ansible::ModuleArgs::validate`], the parsers where they read a value.
//!
//! The numbers are far above any real host or guest and far below what would exhaust memory:
//! - [`MAX_VCPUS`] 4096 vCPUs per guest (libvirt's own ceiling for a QEMU guest);
//! - [`MAX_NUMA_NODES`] 128 guest NUMA nodes (QEMU's `MAX_NODES`), [`MAX_HOST_CELLS`] 1024 host cells;
//! - [`MAX_MEMORY_MIB`] 64 TiB of memory, in MiB ([`MAX_MEMORY_KIB`] in KiB);
//! - page sizes: more than 0, a power of two, at most [`MAX_PAGE_KIB`] (16 GiB);
//! - [`MAX_DOWNTIME_STEPS`] 1000 migration downtime steps;
//! - [`MAX_FILE_BYTES`] 4 MiB per file a module reads (XML dumps, nova.conf), checked before
//!   reading it; [`MAX_SOURCE_BYTES`] 16 MiB per Nova source file of the patch rollout;
//!   [`MAX_ARGS_BYTES`] 32 MiB for the arguments file;
//! - no NUL in any argument string (it would cut a path or URI short, or reach C code);
//! - directories the module writes to (`backup_dir`, `lock_dir`): absolute, no `..`.

use serde_json::Value;
use std::fmt;
use std::io::Read;
use std::path::{Component, Path};

pub const MAX_VCPUS: u32 = 4096;
pub const MAX_NUMA_NODES: u32 = 128;
pub const MAX_HOST_CELLS: usize = 1024;
pub const MAX_MEMORY_MIB: u64 = 64 << 20;
pub const MAX_MEMORY_KIB: u64 = MAX_MEMORY_MIB << 10;
pub const MAX_PAGE_KIB: u64 = 16 << 20;
pub const MAX_DOWNTIME_STEPS: u64 = 1000;
pub const MAX_FILE_BYTES: u64 = 4 << 20;
pub const MAX_ARGS_BYTES: u64 = 32 << 20;
/// A Nova source file the patch rollout reads (Nova's largest, the libvirt driver, is ~0.5 MiB).
pub const MAX_SOURCE_BYTES: u64 = 16 << 20;

/// What is wrong with a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `value` is above `max` (both in `unit`).
    Above {
        value: u128,
        max: u64,
        unit: &'static str,
    },
    /// A page size of zero.
    Zero,
    /// A count that must be at least 1.
    NotPositive,
    /// A page size that is not a power of two.
    NotPowerOfTwo { value: u64 },
    /// A quantity whose conversion overflows (`what` says which).
    Overflow { what: String },
    /// A string with a NUL byte.
    Nul,
    /// A relative path where an absolute one is required.
    Relative,
    /// A path with a `..` component.
    ParentDir,
    /// A file larger than `max` bytes (`size` as its metadata says, or at least `max + 1`).
    FileTooBig { size: u64, max: u64 },
    /// The file cannot be read (or is not UTF-8 text).
    Unreadable { why: String },
}

/// A value refused, with the field (argument path, XML element, file) it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub field: String,
    pub kind: Kind,
}

impl Error {
    pub fn new(field: impl Into<String>, kind: Kind) -> Self {
        Error {
            field: field.into(),
            kind,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Above { value, max, unit } => {
                write!(f, "{value} {unit} is more than the {max} accepted")
            }
            Kind::Zero => f.write_str("a page size of 0 is invalid"),
            Kind::NotPositive => f.write_str("must be at least 1"),
            Kind::NotPowerOfTwo { value } => {
                write!(f, "page size {value} KiB is not a power of two")
            }
            Kind::Overflow { what } => write!(f, "{what} overflows"),
            Kind::Nul => f.write_str("contains a NUL byte"),
            Kind::Relative => f.write_str("must be an absolute path"),
            Kind::ParentDir => f.write_str("must not contain '..' components"),
            Kind::FileTooBig { size, max } => {
                write!(f, "is {size} bytes, more than the {max} accepted")
            }
            Kind::Unreadable { why } => write!(f, "cannot be read: {why}"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.kind)
    }
}
impl std::error::Error for Error {}

/// `value` (in `unit`) at most `max`.
pub fn at_most(field: &str, value: u64, max: u64, unit: &'static str) -> Result<u64, Error> {
    if value > max {
        return Err(Error::new(
            field,
            Kind::Above {
                value: value as u128,
                max,
                unit,
            },
        ));
    }
    Ok(value)
}

/// A count of things at once (parallel moves): 1 to `max`.
pub fn count(field: &str, value: u64, max: u64) -> Result<u64, Error> {
    if value == 0 {
        return Err(Error::new(field, Kind::NotPositive));
    }
    at_most(field, value, max, "at once")
}

pub fn vcpus(field: &str, n: u32) -> Result<u32, Error> {
    at_most(field, n as u64, MAX_VCPUS as u64, "vCPUs").map(|_| n)
}

pub fn memory_mib(field: &str, mib: u64) -> Result<u64, Error> {
    at_most(field, mib, MAX_MEMORY_MIB, "MiB")
}

pub fn memory_kib(field: &str, kib: u64) -> Result<u64, Error> {
    at_most(field, kib, MAX_MEMORY_KIB, "KiB")
}

pub fn cpu_id(field: &str, id: u32) -> Result<u32, Error> {
    let max = crate::model::cpuset::MAX_CPU_ID;
    at_most(field, id as u64, max as u64, "(CPU id)").map(|_| id)
}

/// A huge/small page size in KiB: more than 0, a power of two, at most 16 GiB.
pub fn page_kib(field: &str, kib: u64) -> Result<u64, Error> {
    if kib == 0 {
        return Err(Error::new(field, Kind::Zero));
    }
    if !kib.is_power_of_two() {
        return Err(Error::new(field, Kind::NotPowerOfTwo { value: kib }));
    }
    at_most(field, kib, MAX_PAGE_KIB, "KiB")
}

/// A pool of `count` pages of `size_kib` (already checked): its total at most 64 TiB.
pub fn pages(field: &str, size_kib: u64, count: u64) -> Result<u64, Error> {
    let total = (size_kib as u128) * (count as u128);
    if total > MAX_MEMORY_KIB as u128 {
        return Err(Error::new(
            field,
            Kind::Above {
                value: total,
                max: MAX_MEMORY_KIB,
                unit: "KiB of pages",
            },
        ));
    }
    Ok(count)
}

pub fn no_nul(field: &str, s: &str) -> Result<(), Error> {
    if s.contains('\0') {
        return Err(Error::new(field, Kind::Nul));
    }
    Ok(())
}

/// A directory this program writes into: absolute, without `..`, without NUL.
pub fn abs_dir(field: &str, p: &Path) -> Result<(), Error> {
    no_nul(field, &p.to_string_lossy())?;
    if !p.is_absolute() {
        return Err(Error::new(field, Kind::Relative));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(Error::new(field, Kind::ParentDir));
    }
    Ok(())
}

/// Every string (and key) in a JSON value free of NUL; the field is named by its path
/// (`drain.sources[0].host`, the way argument type errors name it).
pub fn json_no_nul(v: &Value, path: &str) -> Result<(), Error> {
    let at = |p: &str| {
        if p.is_empty() {
            ".".to_string()
        } else {
            p.to_string()
        }
    };
    match v {
        Value::String(s) => no_nul(&at(path), s),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| json_no_nul(x, &format!("{path}[{i}]"))),
        Value::Object(m) => m.iter().try_for_each(|(k, x)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            no_nul(&p, k)?;
            json_no_nul(x, &p)
        }),
        _ => Ok(()),
    }
}

/// Read a text file of at most `max` bytes: its size is checked before reading, and the read
/// stops after `max + 1` bytes (a file that grows, a device, a /proc file). `field` names what
/// the file is (`capabilities_file /x/caps.xml`).
pub fn read_text(field: &str, path: &Path, max: u64) -> Result<String, Error> {
    let bytes = read_bytes(field, path, max)?;
    String::from_utf8(bytes).map_err(|_| {
        Error::new(
            field,
            Kind::Unreadable {
                why: "not UTF-8 text".into(),
            },
        )
    })
}

/// [`read_text`] for bytes.
pub fn read_bytes(field: &str, path: &Path, max: u64) -> Result<Vec<u8>, Error> {
    let io = |e: std::io::Error| Error::new(field, Kind::Unreadable { why: e.to_string() });
    no_nul(field, &path.to_string_lossy())?;
    let f = std::fs::File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if meta.is_dir() {
        return Err(Error::new(
            field,
            Kind::Unreadable {
                why: "is a directory".into(),
            },
        ));
    }
    if meta.len() > max {
        return Err(Error::new(
            field,
            Kind::FileTooBig {
                size: meta.len(),
                max,
            },
        ));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    f.take(max + 1).read_to_end(&mut out).map_err(io)?;
    if out.len() as u64 > max {
        return Err(Error::new(
            field,
            Kind::FileTooBig {
                size: out.len() as u64,
                max,
            },
        ));
    }
    Ok(out)
}

/// A quantity in a libvirt unit converted to KiB, with every step checked: `None` when the
/// arithmetic overflows u64 (the caller names the element).
pub fn checked_kib(value: u64, bytes_per_unit: u64) -> Option<u64> {
    let bytes = (value as u128).checked_mul(bytes_per_unit as u128)?;
    u64::try_from(bytes / 1024).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_and_sizes() {
        assert_eq!(vcpus("vcpus", 4096), Ok(4096));
        let e = vcpus("request.vcpus", u32::MAX).unwrap_err();
        assert_eq!(
            e.to_string(),
            "request.vcpus: 4294967295 vCPUs is more than the 4096 accepted"
        );
        assert!(memory_mib("m", MAX_MEMORY_MIB).is_ok());
        assert!(memory_mib("m", MAX_MEMORY_MIB + 1).is_err());
        assert!(memory_kib("m", u64::MAX).is_err());
        assert!(at_most("downtime_steps", u64::MAX, MAX_DOWNTIME_STEPS, "steps").is_err());
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_kib("p", 4), Ok(4));
        assert_eq!(page_kib("p", 1 << 20), Ok(1 << 20));
        assert_eq!(page_kib("p", 0).unwrap_err().kind, Kind::Zero);
        assert_eq!(
            page_kib("p", 3).unwrap_err().kind,
            Kind::NotPowerOfTwo { value: 3 }
        );
        assert!(page_kib("p", 1 << 40).is_err());
        assert!(pages("p", 1 << 20, 64).is_ok());
        assert!(pages("p", 1 << 20, u64::MAX).is_err());
    }

    #[test]
    fn paths_and_nul() {
        assert!(abs_dir("lock_dir", Path::new("/run/lock/numa-repin")).is_ok());
        assert_eq!(
            abs_dir("lock_dir", Path::new("run/lock")).unwrap_err().kind,
            Kind::Relative
        );
        assert_eq!(
            abs_dir("backup_dir", Path::new("/var/lib/../../etc"))
                .unwrap_err()
                .kind,
            Kind::ParentDir
        );
        assert_eq!(
            abs_dir("backup_dir", Path::new("/var/\0x"))
                .unwrap_err()
                .kind,
            Kind::Nul
        );
        let v = json!({"uri": "qemu:///system", "drain": {"sources": [{"host": "a\u{0}b"}]}});
        let e = json_no_nul(&v, "").unwrap_err();
        assert_eq!(e.field, "drain.sources[0].host");
        assert!(json_no_nul(&json!({"k\u{0}": 1}), "").is_err());
        assert!(json_no_nul(&json!({"uri": "qemu:///system", "n": [1, "x"]}), "").is_ok());
    }

    #[test]
    fn files_are_refused_before_being_read_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("caps.xml");
        std::fs::write(&p, vec![b'x'; 2000]).unwrap();
        assert_eq!(
            read_text("capabilities_file", &p, 2000).unwrap().len(),
            2000
        );
        let e = read_text("capabilities_file", &p, 1999).unwrap_err();
        assert_eq!(
            e.kind,
            Kind::FileTooBig {
                size: 2000,
                max: 1999
            }
        );
        assert!(e
            .to_string()
            .starts_with("capabilities_file: is 2000 bytes"));
        assert!(matches!(
            read_text("f", d.path(), 10).unwrap_err().kind,
            Kind::Unreadable { .. }
        ));
        assert!(matches!(
            read_text("f", &d.path().join("none"), 10).unwrap_err().kind,
            Kind::Unreadable { .. }
        ));
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(read_text("f", &p, 10).is_err());
    }

    #[test]
    fn unit_conversions_are_checked() {
        assert_eq!(checked_kib(2048, 1024), Some(2048));
        assert_eq!(checked_kib(1000, 1000), Some(976));
        assert!(checked_kib(u64::MAX, 1000).is_some());
        assert_eq!(checked_kib(u64::MAX, 1 << 40), None);
    }
}
