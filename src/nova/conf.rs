//! The nova.conf keys that decide where pinned guests may go.
//!
//! Before Train, `[DEFAULT] vcpu_pin_set` limits every guest's CPUs; from Train on,
//! `[compute] cpu_dedicated_set` holds the pinnable pCPUs (and `cpu_shared_set` the floating
//! ones). Both use Nova's range syntax. `reserved_huge_pages` is a multi-valued option, one
//! `node:N,size:S,count:C` per line (or several separated by `;`? no: oslo repeats the key).

use crate::limits;
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

/// Why nova.conf (or another oslo.config INI file: the conductor's, for `[database]`) could not
/// be read or understood. Each message names the file.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum ConfError {
    /// The file cannot be read (`file` names it as the message does: `nova.conf <path>`, a path).
    #[error("cannot read {file}: {why}")]
    Unreadable { file: String, why: String },
    /// A bound of `limits` refused it (larger than a config file can be).
    #[error(transparent)]
    Refused(#[from] limits::Error),
    #[error("{name}: not a valid ini file: {why}")]
    NotIni { name: String, why: String },
    #[error("{name}: [{section}] {key}: {why}")]
    BadCpuSet {
        name: String,
        section: &'static str,
        key: &'static str,
        why: Box<cpuset::SpecError>,
    },
    #[error("{name}: [{section}] {key} = {value:?} is not a number")]
    NotANumber {
        name: String,
        section: &'static str,
        key: &'static str,
        value: String,
    },
    #[error("{name}: [DEFAULT] reserved_huge_pages = {line:?}: {why}")]
    BadReservedPages {
        name: String,
        line: String,
        why: String,
    },
}

/// INI text as oslo.config reads it: no quoting, no escapes (values are taken verbatim), `#` and
/// `;` comments on their own lines. `name` names the text in the error.
pub fn parse_ini(text: &str, name: &str) -> Result<Ini, ConfError> {
    let opt = ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        ..ParseOption::default()
    };
    Ini::load_from_str_opt(text, opt).map_err(|e| ConfError::NotIni {
        name: name.to_string(),
        why: e.to_string(),
    })
}

/// An INI file read within `limits::MAX_FILE_BYTES` and parsed as [`parse_ini`] does. `field`
/// names the file in a bound's message (`nova_conf /etc/kolla/nova-conductor/nova.conf: ...`);
/// an unreadable file is [`ConfError::Unreadable`] naming its path.
pub fn load_ini(field: &str, path: &Path) -> Result<Ini, ConfError> {
    let text = read_bounded(field, path, path.display().to_string())?;
    parse_ini(&text, &path.display().to_string())
}

/// `[section] key` as oslo.config reads it: the LAST of duplicate keys wins (a section that
/// occurs twice is one section); trimmed; an empty value is None.
pub fn ini_get(ini: &Ini, section: &str, key: &str) -> Option<String> {
    ini.section_all(Some(section))
        .flat_map(|s| s.get_all(key))
        .last()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A config file's text within `limits::MAX_FILE_BYTES`; unreadable: named as `file`.
fn read_bounded(field: &str, path: &Path, file: String) -> Result<String, ConfError> {
    limits::read_text(field, path, limits::MAX_FILE_BYTES).map_err(|e| match e.kind {
        limits::Kind::Unreadable { why } => ConfError::Unreadable { file, why },
        _ => ConfError::Refused(e),
    })
}

/// Parse nova.conf text. Unknown sections and keys are ignored: only the keys above matter here.
pub fn parse(text: &str, path: Option<&Path>) -> Result<ComputeConf, ConfError> {
    let name = path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "nova.conf".into());
    let ini = parse_ini(text, &name)?;
    let get = |section: &str, key: &str| ini_get(&ini, section, key);
    let set = |section: &'static str, key: &'static str| -> Result<Option<CpuSet>, ConfError> {
        get(section, key)
            .map(|v| {
                cpuset::parse_spec(&v).map_err(|why| ConfError::BadCpuSet {
                    name: name.clone(),
                    section,
                    key,
                    why: Box::new(why),
                })
            })
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
        conf.reserved_host_memory_mb = v.parse().map_err(|_| ConfError::NotANumber {
            name: name.clone(),
            section: "DEFAULT",
            key: "reserved_host_memory_mb",
            value: v.clone(),
        })?;
    }
    if let Some(v) = get("workarounds", "enable_numa_live_migration") {
        conf.enable_numa_live_migration =
            matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on");
    }
    if let Some(section) = ini.section(Some("DEFAULT")) {
        for line in section.get_all("reserved_huge_pages") {
            conf.reserved_huge_pages
                .push(
                    parse_reserved(line).map_err(|why| ConfError::BadReservedPages {
                        name: name.clone(),
                        line: line.to_string(),
                        why,
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
pub fn load(explicit: Option<&Path>) -> Result<ComputeConf, ConfError> {
    let field = |p: &Path| format!("nova.conf {}", p.display());
    if let Some(p) = explicit {
        let text = read_bounded(&field(p), p, field(p))?;
        return parse(&text, Some(p));
    }
    for p in default_paths() {
        match read_bounded(&field(&p), &p, field(&p)) {
            Ok(text) => return parse(&text, Some(&p)),
            Err(ConfError::Unreadable { .. }) => {}
            Err(e) => return Err(e),
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
        let e = |t: &str| parse(t, None).unwrap_err().to_string();
        assert!(
            e("[DEFAULT]\nvcpu_pin_set = 3-1\n").starts_with("nova.conf: [DEFAULT] vcpu_pin_set: ")
        );
        assert!(e("[DEFAULT]\nreserved_huge_pages = node:0\n").starts_with(
            "nova.conf: [DEFAULT] reserved_huge_pages = \"node:0\": node, size and count"
        ));
        assert_eq!(
            e("[DEFAULT]\nreserved_host_memory_mb = lots\n"),
            "nova.conf: [DEFAULT] reserved_host_memory_mb = \"lots\" is not a number"
        );
        assert!(e("[DEFAULT]\nno equals sign\n").starts_with("nova.conf: not a valid ini file: "));
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
        let e = load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("nova.conf") && e.contains("more than"), "{e}");
        let e = load(Some(&d.path().join("none"))).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read nova.conf /") && e.contains("/none: "),
            "{e}"
        );
    }

    #[test]
    fn duplicate_keys_the_last_wins() {
        // oslo.config keeps the last of duplicate keys; so do parse and ini_get
        let text = "[database]\nconnection = mysql://a:1@first/nova\n[DEFAULT]\nreserved_host_memory_mb = 1\nreserved_host_memory_mb = 2\n[database]\nconnection = mysql://a:1@last/nova\n";
        let ini = parse_ini(text, "t").unwrap();
        assert_eq!(
            ini_get(&ini, "database", "connection").as_deref(),
            Some("mysql://a:1@last/nova")
        );
        assert_eq!(ini_get(&ini, "database", "missing"), None);
        assert_eq!(parse(text, None).unwrap().reserved_host_memory_mb, 2);
    }
}
