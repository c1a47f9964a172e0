//! The nova.conf keys that decide where pinned guests may go.
//!
//! Before Train, `[DEFAULT] vcpu_pin_set` limits every guest's CPUs; from Train on,
//! `[compute] cpu_dedicated_set` holds the pinnable pCPUs (and `cpu_shared_set` the floating
//! ones). Both use Nova's range syntax. `reserved_huge_pages` is a multi-valued option, one
//! `node:N,size:S,count:C` per line (or several separated by `;`? no: oslo repeats the key).

use crate::model::cpuset::{self, CpuSet};
use crate::model::units::{self, SizeError, Syntax};
use ini::{Ini, ParseOption};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct ReservedPages {
    pub node: u32,
    pub size_kb: u64,
    pub count: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct ComputeConf {
    /// Which file this came from; None when no nova.conf was found (all defaults).
    pub path: Option<String>,
    pub vcpu_pin_set: Option<CpuSet>,
    pub cpu_dedicated_set: Option<CpuSet>,
    pub cpu_shared_set: Option<CpuSet>,
    pub reserved_host_memory_mb: u64,
    pub reserved_huge_pages: Vec<ReservedPages>,
    pub enable_numa_live_migration: bool,
}

/// Nova's default for `reserved_host_memory_mb`.
pub const DEFAULT_RESERVED_HOST_MEMORY_MB: u64 = 512;

impl ComputeConf {
    /// The pCPUs pinned guests may use: `cpu_dedicated_set` (Train+), else `vcpu_pin_set`,
    /// else None (= every host CPU).
    pub fn dedicated_set(&self) -> Option<&CpuSet> {
        self.cpu_dedicated_set
            .as_ref()
            .or(self.vcpu_pin_set.as_ref())
    }
    pub fn reserved_pages(&self, node: u32, size_kb: u64) -> u64 {
        self.reserved_huge_pages
            .iter()
            .filter(|r| r.node == node && r.size_kb == size_kb)
            .map(|r| r.count)
            .sum()
    }
}

/// Parse nova.conf text. Unknown sections and keys are ignored: only the keys above matter here.
pub fn parse(text: &str, path: Option<&Path>) -> Result<ComputeConf, String> {
    let name = path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "nova.conf".into());
    let opt = ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        ..ParseOption::default()
    };
    let ini = Ini::load_from_str_opt(text, opt)
        .map_err(|e| format!("{name}: not a valid ini file: {e}"))?;
    let get = |section: &str, key: &str| -> Option<String> {
        ini.section(Some(section))
            .and_then(|s| s.get_all(key).last().map(|v| v.trim().to_string()))
            .filter(|v| !v.is_empty())
    };
    let set = |section: &str, key: &str| -> Result<Option<CpuSet>, String> {
        get(section, key)
            .map(|v| cpuset::parse_spec(&v).map_err(|e| format!("{name}: [{section}] {key}: {e}")))
            .transpose()
    };
    let mut conf = ComputeConf {
        path: path.map(|p| p.display().to_string()),
        vcpu_pin_set: set("DEFAULT", "vcpu_pin_set")?,
        cpu_dedicated_set: set("compute", "cpu_dedicated_set")?,
        cpu_shared_set: set("compute", "cpu_shared_set")?,
        reserved_host_memory_mb: DEFAULT_RESERVED_HOST_MEMORY_MB,
        ..Default::default()
    };
    if let Some(v) = get("DEFAULT", "reserved_host_memory_mb") {
        conf.reserved_host_memory_mb = v.parse().map_err(|_| {
            format!("{name}: [DEFAULT] reserved_host_memory_mb = {v:?} is not a number")
        })?;
    }
    if let Some(v) = get("workarounds", "enable_numa_live_migration") {
        conf.enable_numa_live_migration =
            matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on");
    }
    if let Some(section) = ini.section(Some("DEFAULT")) {
        for line in section.get_all("reserved_huge_pages") {
            conf.reserved_huge_pages.push(
                parse_reserved(line).map_err(|e| {
                    format!("{name}: [DEFAULT] reserved_huge_pages = {line:?}: {e}")
                })?,
            );
        }
    }
    Ok(conf)
}

fn parse_reserved(line: &str) -> Result<ReservedPages, String> {
    let (mut node, mut size, mut count) = (None, None, None);
    for kv in line.split(',') {
        let (k, v) = kv
            .split_once(':')
            .ok_or("expected key:value pairs like node:0,size:2048,count:64")?;
        let v = v.trim();
        match k.trim() {
            "node" => {
                node = Some(
                    v.parse::<u32>()
                        .map_err(|_| format!("node {v:?} is not a number"))?,
                )
            }
            "size" => size = Some(parse_page_size(v)?),
            "count" => {
                count = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("count {v:?} is not a number"))?,
                )
            }
            other => return Err(format!("unknown key {other:?}")),
        }
    }
    match (node, size, count) {
        (Some(node), Some(size_kb), Some(count)) => Ok(ReservedPages {
            node,
            size_kb,
            count: crate::limits::pages("count", size_kb, count).map_err(|e| e.to_string())?,
        }),
        _ => Err("node, size and count are all required".into()),
    }
}

/// A page size as Nova accepts it: KiB as a bare number, or with a unit (`2MB`, `1GB`, `2048KB`),
/// any case, powers of 1024 ([`units::Syntax::Conf`]).
pub fn parse_page_size(v: &str) -> Result<u64, String> {
    let checked = |kb: Option<u64>| {
        let kb = kb.ok_or_else(|| format!("page size {v:?} overflows"))?;
        crate::limits::page_kib(&format!("page size {v:?}"), kb).map_err(|e| e.to_string())
    };
    if let Ok(n) = v.parse::<u64>() {
        return checked(Some(n));
    }
    let kb = units::split(v, Syntax::Conf)
        .and_then(|s| s.whole_kib())
        .map_err(|e| match e {
            SizeError::NotASize => format!("page size {v:?} is not a size"),
            SizeError::UnknownUnit => format!("page size {v:?} has an unknown unit"),
        })?;
    checked(kb)
}

/// Where Kolla and distro installs keep nova-compute's config, in the order tried.
pub fn default_paths() -> Vec<PathBuf> {
    vec![
        PathBuf::from("/etc/kolla/nova-compute/nova.conf"),
        PathBuf::from("/etc/nova/nova.conf"),
    ]
}

/// Load the first existing file of `explicit` (must exist) or the defaults (absence is fine).
pub fn load(explicit: Option<&Path>) -> Result<ComputeConf, String> {
    let read = |p: &Path| {
        let field = format!("nova.conf {}", p.display());
        crate::limits::read_text(&field, p, crate::limits::MAX_FILE_BYTES)
    };
    if let Some(p) = explicit {
        let text = read(p).map_err(|e| match e.kind {
            crate::limits::Kind::Unreadable { why } => {
                format!("cannot read nova.conf {}: {why}", p.display())
            }
            _ => e.to_string(),
        })?;
        return parse(&text, Some(p));
    }
    for p in default_paths() {
        match read(&p) {
            Ok(text) => return parse(&text, Some(&p)),
            Err(e) if matches!(e.kind, crate::limits::Kind::Unreadable { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(ComputeConf {
        reserved_host_memory_mb: DEFAULT_RESERVED_HOST_MEMORY_MB,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_train_keys() {
        let c = parse(
            "[DEFAULT]\n# comment\nvcpu_pin_set = 2-11,^6\nreserved_host_memory_mb=4096\nreserved_huge_pages = node:0,size:2048,count:64\nreserved_huge_pages = node:1,size:1GB,count:1\n[workarounds]\nenable_numa_live_migration = True\n[libvirt]\ncpu_mode = custom\n",
            None,
        )
        .unwrap();
        assert_eq!(
            c.dedicated_set().unwrap().to_vec(),
            vec![2, 3, 4, 5, 7, 8, 9, 10, 11]
        );
        assert_eq!(c.reserved_host_memory_mb, 4096);
        assert_eq!(c.reserved_pages(0, 2048), 64);
        assert_eq!(c.reserved_pages(1, 1048576), 1);
        assert!(c.enable_numa_live_migration);
    }

    #[test]
    fn train_dedicated_set_wins() {
        let c = parse(
            "[DEFAULT]\nvcpu_pin_set=0-3\n[compute]\ncpu_dedicated_set = 4-7\ncpu_shared_set=0-1\n",
            None,
        )
        .unwrap();
        assert_eq!(c.dedicated_set().unwrap().to_vec(), vec![4, 5, 6, 7]);
        assert_eq!(c.cpu_shared_set.unwrap().to_vec(), vec![0, 1]);
    }

    #[test]
    fn defaults_and_errors() {
        let c = parse("[DEFAULT]\n", None).unwrap();
        assert!(c.dedicated_set().is_none());
        assert_eq!(c.reserved_host_memory_mb, 512);
        assert!(parse("[DEFAULT]\nvcpu_pin_set = 3-1\n", None)
            .unwrap_err()
            .contains("vcpu_pin_set"));
        assert!(parse("[DEFAULT]\nreserved_huge_pages = node:0\n", None)
            .unwrap_err()
            .contains("required"));
        assert!(parse("[DEFAULT]\nreserved_host_memory_mb = lots\n", None)
            .unwrap_err()
            .contains("not a number"));
    }

    #[test]
    fn page_sizes() {
        assert_eq!(parse_page_size("2048").unwrap(), 2048);
        assert_eq!(parse_page_size("2MB").unwrap(), 2048);
        assert_eq!(parse_page_size("1GB").unwrap(), 1048576);
        assert_eq!(parse_page_size("1GiB").unwrap(), 1048576);
        assert!(parse_page_size("huge").is_err());
        assert!(parse_page_size("0").unwrap_err().contains("page size of 0"));
        assert!(parse_page_size("3").unwrap_err().contains("power of two"));
        assert!(parse_page_size("18446744073709551615G")
            .unwrap_err()
            .contains("overflows"));
        assert!(parse_reserved("node:0,size:1GB,count:18446744073709551615").is_err());
    }

    #[test]
    fn an_oversized_nova_conf_is_refused_unread() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nova.conf");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(crate::limits::MAX_FILE_BYTES + 1).unwrap();
        let e = load(Some(&p)).unwrap_err();
        assert!(e.contains("nova.conf") && e.contains("more than"), "{e}");
    }
}
