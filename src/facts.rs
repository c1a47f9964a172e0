//! `ansible_facts.numa`: a host's topology, nova.conf CPU sets, every guest's pinning, usage,
//! overlaps and pins on missing/forbidden pCPUs. Built live from libvirt or offline from saved
//! `virsh capabilities` / `virsh dumpxml` output, through the same code.

use crate::fit::{HostCell, HostState, MemPages};
use crate::io::claim::ClaimFact;
use crate::limits;
use crate::model::cpuset::CpuSet;
use crate::model::domain::{self, Guest};
use crate::model::topology::{self, Cell, HostTopology};
use crate::nova::conf::{ComputeConf, ReservedPages};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Default)]
pub struct Usage {
    /// pCPUs held exclusively by some guest (dedicated vCPU pins, isolated emulator pins).
    pub pinned_cpus: CpuSet,
    /// Guest memory bound to each cell, MiB, keyed by cell id.
    pub memory_used_mb: BTreeMap<String, u64>,
    /// Per cell: pCPUs a new pinned guest could take (dedicated set minus pinned).
    #[serde(default)]
    pub free_cpus: BTreeMap<String, CpuSet>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Overlap {
    pub cpu: u32,
    pub guests: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct MissingCpu {
    pub guest: String,
    pub cpu: u32,
    /// `absent` (the host has no such pCPU) or `not_dedicated` (outside vcpu_pin_set /
    /// cpu_dedicated_set). Added after the first versions: optional on input.
    #[serde(default)]
    pub reason: String,
}

/// `ansible_facts.numa`, and the same document handed back as a module argument
/// (`pin_fit_check`'s `host_facts`/`source_facts`/`drain`, `nova_instance_fixup`'s `hosts`).
/// Fields that `build` derives or that later versions added (`topology_source`, `usage`,
/// `overlaps`, `missing_cpus`, `reserved_huge_pages`, `unreadable_guests`, `claims`; the
/// `Option`s) are optional on input, so facts any earlier `numa_facts` returned are accepted.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct NumaFacts {
    pub host: String,
    pub libvirt_uri: Option<String>,
    /// `capabilities`, `nodeinfo` (driver shows no cells: one synthesized) or `saved` files.
    #[serde(default)]
    pub topology_source: String,
    pub cells: Vec<Cell>,
    pub cpu_model: Option<String>,
    /// vcpu_pin_set before Train, `[compute] cpu_dedicated_set` after; null = all host CPUs.
    pub cpu_dedicated_set: Option<CpuSet>,
    pub cpu_shared_set: Option<CpuSet>,
    pub reserved_host_memory_mb: u64,
    #[serde(default)]
    pub reserved_huge_pages: Vec<ReservedPages>,
    pub nova_conf: Option<String>,
    pub guests: Vec<Guest>,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub overlaps: Vec<Overlap>,
    #[serde(default)]
    pub missing_cpus: Vec<MissingCpu>,
    /// Guests whose XML could not be read, with the reason.
    #[serde(default)]
    pub unreadable_guests: Vec<String>,
    /// numa-repin destination claims on this host (`numa-repin-claim` domains: not guests, left
    /// out of `guests`); one that stays while no migration runs is stale (see `crate::io::claim`).
    #[serde(default)]
    pub claims: Vec<ClaimFact>,
}

/// The host cells a guest's memory is bound to, with MiB per cell. Guests without any binding
/// on a multi-cell host are not counted (the kernel places them; Nova does not account them).
fn memory_by_cell(g: &Guest, topo: &HostTopology) -> Vec<(u32, u64)> {
    let only = (topo.cells.len() == 1).then(|| topo.cells[0].id);
    if g.numa_cells.is_empty() {
        return g
            .memory_cell(0, only)
            .map(|n| vec![(n, g.memory_mb)])
            .unwrap_or_default();
    }
    g.numa_cells
        .iter()
        .filter_map(|c| g.memory_cell(c.id, only).map(|n| (n, c.memory_mb)))
        .collect()
}

/// Memory (MiB) per cell and pages per (cell, size) these guests use. `small_pages`: count
/// guests without hugepages in the smallest (4 KiB) pool too (what the host really has free).
fn cell_usage<'a>(
    guests: impl Iterator<Item = &'a Guest>,
    topo: &HostTopology,
    small_pages: bool,
) -> (BTreeMap<u32, u64>, BTreeMap<(u32, u64), u64>) {
    let mut mem: BTreeMap<u32, u64> = BTreeMap::new();
    let mut pages: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    for g in guests {
        for (cell, mb) in memory_by_cell(g, topo) {
            let m = mem.entry(cell).or_default();
            *m = m.saturating_add(mb);
            // A page size of 0 never gets here (parsers and `NumaFacts::check` refuse it);
            // checked anyway, as is the arithmetic.
            let size = g
                .hugepage_kb
                .or(small_pages.then_some(4))
                .filter(|s| *s > 0);
            if let Some(size) = size {
                let p = pages.entry((cell, size)).or_default();
                *p = p.saturating_add(mb.saturating_mul(1024) / size);
            }
        }
    }
    (mem, pages)
}

/// Overlaps: a pCPU held exclusively by two or more guests; and every pCPU held exclusively.
fn overlaps_of(guests: &[Guest]) -> (Vec<Overlap>, CpuSet) {
    let mut holders: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for g in guests {
        for cpu in g.exclusive_cpus().iter() {
            holders.entry(cpu).or_default().push(g.name.clone());
        }
    }
    let overlaps = holders
        .iter()
        .filter(|(_, gs)| gs.len() > 1)
        .map(|(cpu, gs)| Overlap {
            cpu: *cpu,
            guests: gs.clone(),
        })
        .collect();
    let pinned: CpuSet = holders.keys().copied().collect();
    (overlaps, pinned)
}

/// Pins on pCPUs the host lacks, or (for dedicated guests) outside the dedicated set.
fn missing_cpus_of(
    guests: &[Guest],
    host_cpus: &CpuSet,
    dedicated: Option<&CpuSet>,
) -> Vec<MissingCpu> {
    let mut missing = Vec::new();
    for g in guests {
        for cpu in g.all_pinned_cpus().iter() {
            if !host_cpus.contains(cpu) {
                missing.push(MissingCpu {
                    guest: g.name.clone(),
                    cpu,
                    reason: "absent".into(),
                });
            } else if let Some(d) = dedicated {
                if g.is_dedicated() && !d.contains(cpu) && g.exclusive_cpus().contains(cpu) {
                    missing.push(MissingCpu {
                        guest: g.name.clone(),
                        cpu,
                        reason: "not_dedicated".into(),
                    });
                }
            }
        }
    }
    missing
}

/// Combine topology, nova.conf and guests into the facts.
pub fn build(
    host: &str,
    uri: Option<&str>,
    source: &str,
    mut topo: HostTopology,
    conf: &ComputeConf,
    guests: Vec<Guest>,
    unreadable: Vec<String>,
) -> NumaFacts {
    let host_cpus = topo.all_cpus();
    let dedicated = conf.dedicated_set().cloned();

    let (overlaps, pinned) = overlaps_of(&guests);

    let missing = missing_cpus_of(&guests, &host_cpus, dedicated.as_ref());

    // Memory per cell and page usage.
    let (mut mem_used, pages_used) = cell_usage(guests.iter(), &topo, true);
    for c in &topo.cells {
        mem_used.entry(c.id).or_default();
    }
    for c in topo.cells.iter_mut() {
        for p in c.pages.iter_mut() {
            let used = pages_used.get(&(c.id, p.size_kb)).copied().unwrap_or(0);
            p.free = Some(
                p.total
                    .saturating_sub(used)
                    .saturating_sub(conf.reserved_pages(c.id, p.size_kb)),
            );
        }
    }
    let free_cpus = topo
        .cells
        .iter()
        .map(|c| {
            let allowed = match &dedicated {
                Some(d) => c.cpu_set().intersection(d),
                None => c.cpu_set(),
            };
            (c.id.to_string(), allowed.difference(&pinned))
        })
        .collect();

    NumaFacts {
        host: host.to_string(),
        libvirt_uri: uri.map(str::to_string),
        topology_source: source.to_string(),
        cpu_model: topo.cpu_model.clone(),
        cells: topo.cells,
        cpu_dedicated_set: dedicated,
        cpu_shared_set: conf.cpu_shared_set.clone(),
        reserved_host_memory_mb: conf.reserved_host_memory_mb,
        reserved_huge_pages: conf.reserved_huge_pages.clone(),
        nova_conf: conf.path.clone(),
        guests,
        usage: Usage {
            pinned_cpus: pinned,
            memory_used_mb: mem_used
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            free_cpus,
        },
        overlaps,
        missing_cpus: missing,
        unreadable_guests: unreadable,
        claims: Vec::new(),
    }
}

/// Live facts from a libvirt host. `nova_conf`: an explicit path must exist; without one the
/// Kolla and distro defaults are tried and their absence is fine.
pub fn gather_live(
    uri: &str,
    nova_conf: Option<&std::path::Path>,
    host: Option<&str>,
) -> anyhow::Result<NumaFacts> {
    let conf = crate::nova::conf::load(nova_conf).map_err(anyhow::Error::msg)?;
    let h = crate::io::libvirt::connect(uri)?;
    let (topo, source) = h.topology()?;
    let (guests, bad, claims) = h.guests_and_claims()?;
    let name = host.map(str::to_string).unwrap_or_else(|| h.hostname());
    let mut f = build(&name, Some(uri), source, topo, &conf, guests, bad);
    let now = crate::io::claim::now_unix();
    f.claims = claims
        .iter()
        .map(|c| ClaimFact::from_domain(&c.uuid, c.xml.as_deref().map_err(|e| e.as_str()), now))
        .collect();
    Ok(f)
}

/// At most this many saved domain XMLs in one run (a compute host runs a few hundred guests):
/// with [`limits::MAX_FILE_BYTES`] each, what the saved dumps can take stays bounded.
pub const MAX_DOMAIN_FILES: usize = 1024;

/// Offline facts from files: a saved `virsh capabilities` and saved `virsh dumpxml` outputs.
pub fn gather_saved(
    caps_file: &std::path::Path,
    domain_files: &[std::path::PathBuf],
    nova_conf: Option<&std::path::Path>,
    host: Option<&str>,
) -> anyhow::Result<NumaFacts> {
    let conf = match nova_conf {
        Some(p) => crate::nova::conf::load(Some(p)).map_err(anyhow::Error::msg)?,
        None => ComputeConf {
            reserved_host_memory_mb: crate::nova::conf::DEFAULT_RESERVED_HOST_MEMORY_MB,
            ..Default::default()
        },
    };
    let read = |what: &str, p: &std::path::Path| {
        let field = format!("{what} {}", p.display());
        limits::read_text(&field, p, limits::MAX_FILE_BYTES).map_err(|e| match e.kind {
            limits::Kind::Unreadable { why } => anyhow::anyhow!("cannot read {field}: {why}"),
            _ => anyhow::Error::new(e),
        })
    };
    let caps = read("capabilities_file", caps_file)?;
    limits::at_most(
        "domain_files",
        domain_files.len() as u64,
        MAX_DOMAIN_FILES as u64,
        "files",
    )?;
    let mut doms = Vec::new();
    for f in domain_files {
        doms.push((f.display().to_string(), read("domain_files", f)?));
    }
    let name = host.map(str::to_string).unwrap_or_else(|| {
        caps_file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    from_saved(&name, &caps, &doms, &conf)
        .map_err(|e| anyhow::anyhow!("{}: {e}", caps_file.display()))
}

/// Offline facts from saved `virsh capabilities` and `virsh dumpxml` outputs.
pub fn from_saved(
    host: &str,
    caps_xml: &str,
    domain_xmls: &[(String, String)],
    conf: &ComputeConf,
) -> Result<NumaFacts, String> {
    let topo = topology::parse_capabilities(caps_xml)?;
    let mut guests = Vec::new();
    let mut bad = Vec::new();
    let mut claims = Vec::new();
    let now = crate::io::claim::now_unix();
    for (origin, xml) in domain_xmls {
        match domain::parse_guest(xml) {
            // A saved dump of the claim domain: not a guest.
            Ok(g) if g.name == crate::io::libvirt::CLAIM_NAME => {
                claims.push(ClaimFact::from_domain(&g.uuid, Ok(xml), now))
            }
            Ok(g) => guests.push(g),
            Err(e) => bad.push(format!("{origin}: {e}")),
        }
    }
    guests.sort_by(|a, b| a.name.cmp(&b.name));
    let mut f = build(host, None, "saved", topo, conf, guests, bad);
    f.claims = claims;
    Ok(f)
}

impl NumaFacts {
    /// The bounds of [`crate::limits`] on facts handed in as JSON (`host_facts`, `drain`): cell
    /// count, CPU ids, memory, page sizes, each guest. `field` names the argument.
    pub fn check(&self, field: &str) -> Result<(), limits::Error> {
        limits::at_most(
            &format!("{field}.cells"),
            self.cells.len() as u64,
            limits::MAX_HOST_CELLS as u64,
            "cells",
        )?;
        for (i, c) in self.cells.iter().enumerate() {
            c.check(&format!("{field}.cells[{i}]"))?;
        }
        limits::memory_mib(
            &format!("{field}.reserved_host_memory_mb"),
            self.reserved_host_memory_mb,
        )?;
        for (i, g) in self.guests.iter().enumerate() {
            g.check(&format!("{field}.guests[{i}]"))?;
        }
        Ok(())
    }

    /// The host as the fit engine sees it (Nova's NUMATopology shape), optionally ignoring one
    /// guest's own usage (when replanning that guest on its own host).
    pub fn host_state(&self, exclude_guest: Option<&str>) -> HostState {
        self.host_state_isolating(exclude_guest, &Default::default())
    }

    /// `host_state`, where the guests in `isolated` (uuids: thread policy isolate, which libvirt
    /// does not record) hold the whole cores of their pCPUs, as Nova's accounting pins them
    /// (`pin_cpus_with_siblings`): no other guest goes on their sibling threads.
    pub fn host_state_isolating(
        &self,
        exclude_guest: Option<&str>,
        isolated: &std::collections::BTreeSet<String>,
    ) -> HostState {
        let dedicated = self.cpu_dedicated_set.as_ref();
        let others: Vec<&Guest> = self
            .guests
            .iter()
            .filter(|g| {
                Some(g.name.as_str()) != exclude_guest && Some(g.uuid.as_str()) != exclude_guest
            })
            .collect();
        let siblings_of = |cpu: u32| -> CpuSet {
            self.cells
                .iter()
                .flat_map(|c| &c.cpus)
                .find(|c| c.id == cpu)
                .map(|c| c.siblings.iter().copied().collect())
                .unwrap_or_default()
        };
        let pinned: CpuSet = others.iter().fold(CpuSet::new(), |a, g| {
            let own = g.exclusive_cpus();
            let held = if isolated.contains(&g.uuid) {
                own.iter()
                    .fold(own.clone(), |h, cpu| h.union(&siblings_of(cpu)))
            } else {
                own
            };
            a.union(&held)
        });
        let topo = HostTopology {
            cells: self.cells.clone(),
            ..Default::default()
        };
        // Nova counts pages only for guests that asked for a page size.
        let (mem_used, pages_used) = cell_usage(others.iter().copied(), &topo, false);
        let cells = self
            .cells
            .iter()
            .map(|c| {
                let cpuset = match dedicated {
                    Some(d) => c.cpu_set().intersection(d),
                    None => c.cpu_set(),
                };
                let mut siblings: Vec<CpuSet> = Vec::new();
                for cpu in &c.cpus {
                    let s: CpuSet = cpu
                        .siblings
                        .iter()
                        .copied()
                        .collect::<CpuSet>()
                        .intersection(&cpuset);
                    if !s.is_empty() && !siblings.contains(&s) {
                        siblings.push(s);
                    }
                }
                let reserved = |size: u64| {
                    self.reserved_huge_pages
                        .iter()
                        .filter(|r| r.node == c.id && r.size_kb == size)
                        .map(|r| r.count)
                        .sum()
                };
                HostCell {
                    id: c.id,
                    pinned_cpus: pinned.intersection(&cpuset),
                    cpuset,
                    siblings,
                    memory: c.memory_mb,
                    memory_usage: mem_used.get(&c.id).copied().unwrap_or(0),
                    mempages: c
                        .pages
                        .iter()
                        .map(|p| MemPages {
                            size_kb: p.size_kb,
                            total: p.total,
                            used: pages_used.get(&(c.id, p.size_kb)).copied().unwrap_or(0),
                            reserved: reserved(p.size_kb),
                        })
                        .collect(),
                    cpu_usage: None,
                }
            })
            .collect();
        HostState {
            name: self.host.clone(),
            cells,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::domain::fixtures::pinned;
    use crate::model::topology::fixtures::caps;
    use crate::nova::conf;

    fn saved(guests: &[String], conf_text: &str) -> NumaFacts {
        let c = conf::parse(conf_text, None).unwrap();
        let doms: Vec<(String, String)> = guests
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("g{i}.xml"), g.clone()))
            .collect();
        from_saved("h1", &caps(2, 4, 2, 8192, &[(2048, 512)]), &doms, &c).unwrap()
    }

    #[test]
    fn overlaps_missing_and_usage() {
        let f = saved(
            &[
                pinned("a", "u-a", &[0, 1], None, 0, 1024),
                pinned("b", "u-b", &[1, 2], None, 0, 1024),
                pinned("c", "u-c", &[99], None, 1, 512),
                pinned("d", "u-d", &[4], None, 1, 512),
            ],
            "[DEFAULT]\nvcpu_pin_set = 0-3,5-15\n",
        );
        assert_eq!(
            f.overlaps,
            vec![Overlap {
                cpu: 1,
                guests: vec!["a".into(), "b".into()]
            }]
        );
        assert!(f.missing_cpus.contains(&MissingCpu {
            guest: "c".into(),
            cpu: 99,
            reason: "absent".into()
        }));
        assert!(f.missing_cpus.contains(&MissingCpu {
            guest: "d".into(),
            cpu: 4,
            reason: "not_dedicated".into()
        }));
        assert_eq!(f.usage.memory_used_mb["0"], 2048);
        assert_eq!(f.usage.memory_used_mb["1"], 1024);
        assert_eq!(f.usage.pinned_cpus.to_vec(), vec![0, 1, 2, 4, 99]);
        // cell 0 = CPUs 0-3 and 8-11 (threads); dedicated set drops nothing there
        assert_eq!(f.usage.free_cpus["0"].to_vec(), vec![3, 8, 9, 10, 11]);
        assert_eq!(f.guests.len(), 4);
    }

    #[test]
    fn host_state_for_the_fit_engine() {
        let f = saved(
            &[pinned("a", "u-a", &[0, 8], None, 0, 1024)],
            "[DEFAULT]\nvcpu_pin_set = 0-15,^3\nreserved_huge_pages = node:1,size:2048,count:12\n",
        );
        let h = f.host_state(None);
        assert_eq!(h.cells[0].cpuset.to_vec(), vec![0, 1, 2, 8, 9, 10, 11]);
        // core 3 = {3, 11}: trimmed to {11}
        assert!(h.cells[0].siblings.contains(&[11].into_iter().collect()));
        assert_eq!(h.cells[0].pinned_cpus.to_vec(), vec![0, 8]);
        assert_eq!(h.cells[0].memory_usage, 1024);
        assert_eq!(
            h.cells[1].mempages[1],
            MemPages {
                size_kb: 2048,
                total: 512,
                used: 0,
                reserved: 12
            }
        );
        let h2 = f.host_state(Some("a"));
        assert!(h2.cells[0].pinned_cpus.is_empty());
        assert_eq!(h2.cells[0].memory_usage, 0);
    }

    #[test]
    fn facts_of_earlier_versions_are_accepted_as_input() {
        // The shape the first `numa_facts` returned: none of topology_source, cpu_model,
        // reserved_huge_pages, usage.free_cpus, missing_cpus[].reason, unreadable_guests, claims.
        let old = serde_json::json!({
            "host": "cmp1",
            "libvirt_uri": "qemu+tcp://cmp1/system",
            "cells": [{
                "id": 0,
                "memory_mb": 4096,
                "cpus": [
                    {"id": 0, "socket": 0, "core": 0, "siblings": [0, 2]},
                    {"id": 1, "socket": 0, "core": 1, "siblings": [1, 3]},
                    {"id": 2, "socket": 0, "core": 0, "siblings": [0, 2]},
                    {"id": 3, "socket": 0, "core": 1, "siblings": [1, 3]}
                ],
                "pages": [{"size_kb": 4, "total": 1048576}]
            }],
            "cpu_dedicated_set": [0, 1, 2, 3],
            "cpu_shared_set": null,
            "reserved_host_memory_mb": 512,
            "nova_conf": null,
            "guests": [{
                "name": "a", "uuid": "u-a", "state": "running", "vcpus": 1,
                "memory_mb": 1024, "vcpu_pins": {"0": [1]}, "emulator_pins": [1],
                "numa_cells": [], "hugepage_kb": null
            }],
            "usage": {"pinned_cpus": [1], "memory_used_mb": {"0": 1024}},
            "overlaps": [],
            "missing_cpus": [{"guest": "a", "cpu": 7}]
        });
        let f: NumaFacts = serde_json::from_value(old).unwrap();
        f.check("host_facts").unwrap();
        assert_eq!(f.topology_source, "");
        assert!(f.reserved_huge_pages.is_empty() && f.claims.is_empty());
        assert_eq!(f.missing_cpus[0].reason, "");
        let h = f.host_state(None);
        assert_eq!(h.cells[0].pinned_cpus.to_vec(), vec![1]);
        assert_eq!(h.cells[0].memory_usage, 1024);
        // And the least a caller can hand in: what the fit engine reads.
        let bare = serde_json::json!({
            "host": "cmp1", "cells": [], "cpu_dedicated_set": null,
            "reserved_host_memory_mb": 0, "guests": []
        });
        serde_json::from_value::<NumaFacts>(bare).unwrap();
        // Today's output reads back as it was.
        let now = saved(&[pinned("a", "u-a", &[0, 8], None, 0, 1024)], "");
        let back: NumaFacts = serde_json::from_value(serde_json::to_value(&now).unwrap()).unwrap();
        assert_eq!(back, now);
    }

    #[test]
    fn page_pools_show_free() {
        let mut g = pinned("h", "u-h", &[0], None, 0, 512);
        g = g.replace("<os>", "<memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages></memoryBacking><os>");
        let f = saved(&[g], "[DEFAULT]\n");
        let p = &f.cells[0].pages[1];
        assert_eq!((p.size_kb, p.total, p.free), (2048, 512, Some(256)));
    }

    #[test]
    fn the_claim_domain_is_not_a_guest() {
        let mut o = crate::io::claim::Owner::me("vm-1", "qemu+tcp://cmp1/system", "d", "migrate");
        o.started = crate::io::claim::now_unix().saturating_sub(30);
        let x = crate::io::claim::claim_xml("6c1a9e10-0000-4000-8000-00000000000c", &o);
        let f = saved(&[x, pinned("ok", "u", &[0], None, 0, 64)], "");
        assert_eq!(f.guests.len(), 1);
        assert_eq!(f.guests[0].name, "ok");
        assert!(f.unreadable_guests.is_empty());
        assert_eq!(f.claims.len(), 1);
        let c = &f.claims[0];
        assert_eq!(c.uuid, "6c1a9e10-0000-4000-8000-00000000000c");
        assert_eq!(
            (c.guest.as_str(), c.pid),
            ("vm-1", Some(std::process::id()))
        );
        assert!(c.age_s.unwrap() >= 30 && c.age_s.unwrap() < 100);
        assert_eq!(f.usage.memory_used_mb["0"], 64);
    }

    #[test]
    fn unreadable_guests_are_reported_not_fatal() {
        let f = saved(
            &[
                "<domain><name>broken</name></domain>".to_string(),
                pinned("ok", "u", &[0], None, 0, 64),
            ],
            "",
        );
        assert_eq!(f.guests.len(), 1);
        assert!(f.unreadable_guests[0].contains("g0.xml"));
    }
}
