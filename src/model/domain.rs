//! Guest domain XML, read side: what a guest is pinned to and how its memory is placed.
//!
//! The rewrite for a new placement (issue 5) goes in `domain::rewrite`, working on the event
//! stream so every byte we do not own survives.

use crate::limits;
use crate::model::cpuset::{self, CpuSet};
use crate::model::units::to_kib;
use crate::model::xml::{self, Element};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct GuestCell {
    pub id: u32,
    pub vcpus: Vec<u32>,
    pub memory_mb: u64,
    /// Host cells its memory is bound to (`<numatune><memnode>`, else `<memory nodeset>`).
    pub host_nodes: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Default)]
pub struct NovaMeta {
    pub name: Option<String>,
    pub flavor: Option<String>,
    pub flavor_vcpus: Option<u32>,
    pub flavor_memory_mb: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Guest {
    pub name: String,
    /// libvirt's uuid; Nova uses the instance uuid as the domain uuid.
    pub uuid: String,
    /// running, paused, shutoff, … (from libvirt; `unknown` for a saved XML).
    pub state: String,
    pub vcpus: u32,
    pub memory_mb: u64,
    /// vCPU -> pCPUs it may run on. A dedicated (pinned) vCPU has exactly one.
    pub vcpu_pins: BTreeMap<String, Vec<u32>>,
    pub emulator_pins: Vec<u32>,
    pub numa_cells: Vec<GuestCell>,
    /// Host cells of `<numatune><memory nodeset>` (guests without guest NUMA cells).
    #[serde(default)]
    pub memory_nodes: Vec<u32>,
    pub hugepage_kb: Option<u64>,
    #[serde(default)]
    pub nova: Option<NovaMeta>,
}

impl Guest {
    /// True when every vCPU is pinned to exactly one pCPU: Nova's `hw:cpu_policy=dedicated`.
    pub fn is_dedicated(&self) -> bool {
        self.vcpus > 0
            && (0..self.vcpus).all(|v| {
                self.vcpu_pins
                    .get(&v.to_string())
                    .is_some_and(|p| p.len() == 1)
            })
    }
    /// The pCPUs this guest holds exclusively: its vCPUs' single pins, plus an emulator pin that
    /// lies outside them (emulator threads `isolate`: Nova's `cpuset_reserved`).
    pub fn exclusive_cpus(&self) -> CpuSet {
        let mut s: CpuSet = self
            .vcpu_pins
            .values()
            .filter(|p| p.len() == 1)
            .map(|p| p[0])
            .collect();
        if let Some(r) = self.reserved_cpus() {
            s = s.union(&r);
        }
        s
    }
    /// The isolated emulator pCPUs, when the emulator pin is disjoint from the vCPU pins.
    pub fn reserved_cpus(&self) -> Option<CpuSet> {
        if !self.is_dedicated() || self.emulator_pins.is_empty() {
            return None;
        }
        let vcpu: CpuSet = self.vcpu_pins.values().flatten().copied().collect();
        let emu: CpuSet = self.emulator_pins.iter().copied().collect();
        (emu.intersection(&vcpu).is_empty()).then_some(emu)
    }
    /// The bounds of [`crate::limits`] on a guest handed in as JSON (facts from an earlier run):
    /// vCPUs, memory, pCPU ids of pins and cells, page size. `field` names where it sits.
    pub fn check(&self, field: &str) -> Result<(), limits::Error> {
        limits::vcpus(&format!("{field}.vcpus"), self.vcpus)?;
        limits::memory_mib(&format!("{field}.memory_mb"), self.memory_mb)?;
        limits::at_most(
            &format!("{field}.vcpu_pins"),
            self.vcpu_pins.len() as u64,
            limits::MAX_VCPUS as u64,
            "vCPU pins",
        )?;
        for (v, pins) in &self.vcpu_pins {
            for p in pins {
                limits::cpu_id(&format!("{field}.vcpu_pins.{v}"), *p)?;
            }
        }
        for p in &self.emulator_pins {
            limits::cpu_id(&format!("{field}.emulator_pins"), *p)?;
        }
        limits::at_most(
            &format!("{field}.numa_cells"),
            self.numa_cells.len() as u64,
            limits::MAX_NUMA_NODES as u64,
            "guest NUMA cells",
        )?;
        for (i, c) in self.numa_cells.iter().enumerate() {
            let f = format!("{field}.numa_cells[{i}]");
            limits::memory_mib(&format!("{f}.memory_mb"), c.memory_mb)?;
            limits::at_most(
                &format!("{f}.vcpus"),
                c.vcpus.len() as u64,
                limits::MAX_VCPUS as u64,
                "vCPUs",
            )?;
            for v in &c.vcpus {
                limits::at_most(
                    &format!("{f}.vcpus"),
                    *v as u64,
                    limits::MAX_VCPUS as u64 - 1,
                    "(vCPU id)",
                )?;
            }
        }
        if let Some(k) = self.hugepage_kb {
            limits::page_kib(&format!("{field}.hugepage_kb"), k)?;
        }
        Ok(())
    }
    /// Every pCPU named by any pin.
    pub fn all_pinned_cpus(&self) -> CpuSet {
        self.vcpu_pins
            .values()
            .flatten()
            .chain(self.emulator_pins.iter())
            .copied()
            .collect()
    }

    /// The host cell the memory of guest cell `cell` is bound to: its `<memnode>`, else the
    /// guest's `<memory nodeset>`, the first node where several are named; on a host of
    /// one cell (`only_cell`), that cell. None when nothing binds it.
    pub fn memory_cell(&self, cell: u32, only_cell: Option<u32>) -> Option<u32> {
        let nodes = match self.numa_cells.iter().find(|c| c.id == cell) {
            Some(c) if !c.host_nodes.is_empty() => &c.host_nodes,
            _ => &self.memory_nodes,
        };
        nodes.first().copied().or(only_cell)
    }

    /// The host cell guest cell `cell` lives on, the one rule of every module: where its memory
    /// is bound ([`Guest::memory_cell`]), else the one host cell all its pinned vCPUs are on
    /// (`cell_of_cpu`: a pCPU's host cell). None when neither says.
    pub fn host_cell(
        &self,
        cell: u32,
        only_cell: Option<u32>,
        cell_of_cpu: impl Fn(u32) -> Option<u32>,
    ) -> Option<u32> {
        if let Some(c) = self.memory_cell(cell, only_cell) {
            return Some(c);
        }
        let vcpus: Vec<u32> = match self.numa_cells.iter().find(|c| c.id == cell) {
            Some(c) => c.vcpus.clone(),
            None => (0..self.vcpus).collect(),
        };
        let mut cells = vcpus
            .iter()
            .filter_map(|v| self.vcpu_pins.get(&v.to_string()))
            .flatten()
            .map(|p| cell_of_cpu(*p));
        let first = cells.next()??;
        cells.all(|c| c == Some(first)).then_some(first)
    }
}

const NOVA_NS: &str = "http://openstack.org/xmlns/libvirt/nova/";

/// Parse a domain XML (`virsh dumpxml`). `state` is filled by the caller when known.
pub fn parse_guest(doc: &str) -> Result<Guest, String> {
    let root = xml::parse(doc).map_err(|e| format!("domain XML: {e}"))?;
    if root.name != "domain" {
        return Err(format!(
            "domain XML: root element is <{}>, expected <domain>",
            root.name
        ));
    }
    let name = root
        .child("name")
        .map(|e| e.text.clone())
        .ok_or("domain XML: no <name>")?;
    let ctx = |e: String| format!("domain {name}: {e}");
    let uuid = root
        .child("uuid")
        .map(|e| e.text.clone())
        .unwrap_or_default();
    let vcpu_el = root
        .child("vcpu")
        .ok_or_else(|| ctx("no <vcpu> element".into()))?;
    let vcpus: u32 = match vcpu_el.attr_num::<u32>("current").map_err(ctx)? {
        Some(cur) => cur,
        None => vcpu_el.text_num().map_err(ctx)?,
    };
    limits::vcpus("<vcpu>", vcpus).map_err(|e| ctx(e.to_string()))?;
    let memory_mb = match root.child("currentMemory").or_else(|| root.child("memory")) {
        Some(m) => to_kib(m.text_num().map_err(ctx)?, m.attr("unit")).map_err(ctx)? / 1024,
        None => return Err(ctx("no <memory> element".into())),
    };

    let (vcpu_pins, emulator_pins) = read_pins(&root, vcpu_el, vcpus, &ctx)?;
    let (memory_nodes, memnodes) = read_numatune(&root, &ctx)?;
    let numa_cells = read_numa_cells(&root, &memnodes, &memory_nodes, &ctx)?;
    let hugepage_kb = read_hugepages(&root, &ctx)?;
    let nova = root
        .child("metadata")
        .and_then(|m| m.children.iter().find(|c| is_nova_instance(c)))
        .map(nova_meta);

    Ok(Guest {
        name,
        uuid,
        state: "unknown".into(),
        vcpus,
        memory_mb,
        vcpu_pins,
        emulator_pins,
        numa_cells,
        memory_nodes,
        hugepage_kb,
        nova,
    })
}

/// vCPU id (as a string, like Nova's keys) -> pCPUs.
type VcpuPins = BTreeMap<String, Vec<u32>>;
/// Guest cell id -> host NUMA nodes (`<memnode>`).
type MemNodes = BTreeMap<u32, Vec<u32>>;

/// vCPU pins: explicit <vcpupin>, else the <vcpu cpuset> default applies to every vCPU;
/// and the emulator's pins.
fn read_pins(
    root: &Element,
    vcpu_el: &Element,
    vcpus: u32,
    ctx: &impl Fn(String) -> String,
) -> Result<(VcpuPins, Vec<u32>), String> {
    let spec = |s: &str| cpu_list(s, ctx);
    let mut vcpu_pins = BTreeMap::new();
    if let Some(default) = vcpu_el.attr("cpuset") {
        let d = spec(default)?;
        for v in 0..vcpus {
            vcpu_pins.insert(v.to_string(), d.clone());
        }
    }
    let mut emulator_pins = Vec::new();
    if let Some(ct) = root.child("cputune") {
        for p in ct.children("vcpupin") {
            let v: u32 = p
                .attr_num("vcpu")
                .map_err(ctx)?
                .ok_or_else(|| ctx("<vcpupin> without vcpu".into()))?;
            if v >= vcpus {
                return Err(ctx(format!(
                    "<vcpupin vcpu='{v}'> but the guest has {vcpus} vCPUs"
                )));
            }
            let set = p
                .attr("cpuset")
                .ok_or_else(|| ctx("<vcpupin> without cpuset".into()))?;
            vcpu_pins.insert(v.to_string(), spec(set)?);
        }
        if let Some(e) = ct.child("emulatorpin") {
            emulator_pins = spec(
                e.attr("cpuset")
                    .ok_or_else(|| ctx("<emulatorpin> without cpuset".into()))?,
            )?;
        }
    }
    Ok((vcpu_pins, emulator_pins))
}

/// numatune: the guest-wide nodeset and per guest cell memnodes.
fn read_numatune(
    root: &Element,
    ctx: &impl Fn(String) -> String,
) -> Result<(Vec<u32>, MemNodes), String> {
    let spec = |s: &str| cpu_list(s, ctx);
    let mut memory_nodes = Vec::new();
    let mut memnodes: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Some(nt) = root.child("numatune") {
        if let Some(m) = nt.child("memory") {
            if let Some(ns) = m.attr("nodeset") {
                memory_nodes = spec(ns)?;
            }
        }
        for mn in nt.children("memnode") {
            let cid: u32 = mn
                .attr_num("cellid")
                .map_err(ctx)?
                .ok_or_else(|| ctx("<memnode> without cellid".into()))?;
            memnodes.insert(
                cid,
                spec(
                    mn.attr("nodeset")
                        .ok_or_else(|| ctx("<memnode> without nodeset".into()))?,
                )?,
            );
        }
    }
    Ok((memory_nodes, memnodes))
}

/// The guest NUMA cells (`<cpu><numa>`), each with the host nodes its memory is bound to.
fn read_numa_cells(
    root: &Element,
    memnodes: &MemNodes,
    memory_nodes: &[u32],
    ctx: &impl Fn(String) -> String,
) -> Result<Vec<GuestCell>, String> {
    let spec = |s: &str| cpu_list(s, ctx);
    let mut numa_cells = Vec::new();
    if let Some(numa) = root.path("cpu/numa") {
        let n = numa.children("cell").count() as u64;
        limits::at_most("<cpu><numa>", n, limits::MAX_NUMA_NODES as u64, "cells")
            .map_err(|e| ctx(e.to_string()))?;
        for c in numa.children("cell") {
            let id: u32 = match c.attr_num("id").map_err(ctx)? {
                Some(i) => i,
                None => numa_cells.len() as u32,
            };
            let cpus = spec(
                c.attr("cpus")
                    .ok_or_else(|| ctx(format!("guest NUMA cell {id} without cpus")))?,
            )?;
            let mem: u64 = c
                .attr_num("memory")
                .map_err(ctx)?
                .ok_or_else(|| ctx(format!("guest NUMA cell {id} without memory")))?;
            let mem_mb = to_kib(mem, c.attr("unit")).map_err(ctx)? / 1024;
            let host_nodes = memnodes
                .get(&id)
                .cloned()
                .unwrap_or_else(|| memory_nodes.to_vec());
            numa_cells.push(GuestCell {
                id,
                vcpus: cpus,
                memory_mb: mem_mb,
                host_nodes,
            });
        }
    }
    Ok(numa_cells)
}

/// The huge page size the guest's memory is backed by, KiB.
fn read_hugepages(root: &Element, ctx: &impl Fn(String) -> String) -> Result<Option<u64>, String> {
    let mut hugepage_kb = None;
    if let Some(hp) = root.path("memoryBacking/hugepages") {
        // <hugepages/> alone means the host's default huge page size: 2 MiB on x86.
        hugepage_kb = Some(2048);
        if let Some(page) = hp.child("page") {
            let size: u64 = page
                .attr_num("size")
                .map_err(ctx)?
                .ok_or_else(|| ctx("<page> without size".into()))?;
            let kib = to_kib(size, page.attr("unit")).map_err(ctx)?;
            limits::page_kib(&format!("<page size='{size}'>"), kib)
                .map_err(|e| ctx(e.to_string()))?;
            hugepage_kb = Some(kib);
        }
    }
    Ok(hugepage_kb)
}

fn is_nova_instance(e: &Element) -> bool {
    e.local_name() == "instance"
        && e.attrs
            .iter()
            .any(|(k, v)| k.starts_with("xmlns") && v.starts_with(NOVA_NS))
}

fn nova_meta(e: &Element) -> NovaMeta {
    let child = |n: &str| e.children.iter().find(|c| c.local_name() == n);
    let flavor = child("flavor");
    let fchild = |n: &str| flavor.and_then(|f| f.children.iter().find(|c| c.local_name() == n));
    NovaMeta {
        name: child("name").map(|n| n.text.clone()),
        flavor: flavor.and_then(|f| f.attr("name").map(str::to_string)),
        flavor_vcpus: fchild("vcpus").and_then(|v| v.text.parse().ok()),
        flavor_memory_mb: fchild("memory").and_then(|v| v.text.parse().ok()),
    }
}

/// A CPU spec attribute (`cpuset`, `nodeset`) as a sorted list, its error in the guest's context.
fn cpu_list(s: &str, ctx: &impl Fn(String) -> String) -> Result<Vec<u32>, String> {
    cpuset::parse_spec(s)
        .map(|c| c.to_vec())
        .map_err(|e| ctx(e.to_string()))
}

/// A guest's CPU as its XML states it, for the CPU compatibility check before a migration.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestCpu {
    /// Domain type `qemu` (TCG): QEMU emulates the CPU, the host's does not matter.
    pub tcg: bool,
    /// `custom`, `host-model`, `host-passthrough`, `maximum`, or empty (hypervisor default).
    pub mode: String,
    /// The `<cpu>` element as written (for `virConnectCompareCPU` with mode custom).
    pub element: Option<String>,
}

/// The guest's CPU from its domain XML.
pub fn guest_cpu(xml: &str) -> Result<GuestCpu, xml::XmlError> {
    let root = xml::parse(xml)?;
    let cpu = root.child("cpu");
    let mode = match cpu.and_then(|c| c.attr("mode")) {
        Some(m) => m,
        None if cpu.and_then(|c| c.child("model")).is_some() => "custom",
        None => "",
    };
    Ok(GuestCpu {
        tcg: root.attr("type") == Some("qemu"),
        mode: mode.to_string(),
        element: crate::model::rewrite::child_element(xml, "cpu"),
    })
}

/// A disk in a local file, which a block migration copies.
#[derive(Debug, Clone, PartialEq)]
pub struct FileDisk {
    pub target: String,
    pub path: String,
    pub format: String,
    /// It has a backing file (a chain this project does not copy).
    pub backing: bool,
}

/// The guest's writable, unshared disks in local files (cdroms, read-only and shareable disks and
/// network disks are not copied).
pub fn file_disks(xml: &str) -> Result<Vec<FileDisk>, xml::XmlError> {
    let root = xml::parse(xml)?;
    let Some(devs) = root.child("devices") else {
        return Ok(Vec::new());
    };
    let copied = |d: &&xml::Element| {
        d.attr("type") == Some("file")
            && d.attr("device").unwrap_or("disk") == "disk"
            && d.child("readonly").is_none()
            && d.child("shareable").is_none()
    };
    Ok(devs
        .children("disk")
        .filter(copied)
        .filter_map(|d| {
            let path = d.child("source")?.attr("file")?;
            let attr = |child: &str, name: &str| d.child(child).and_then(|c| c.attr(name));
            Some(FileDisk {
                target: attr("target", "dev").unwrap_or("").to_string(),
                path: path.to_string(),
                format: attr("driver", "type").unwrap_or("raw").to_string(),
                backing: d
                    .child("backingStore")
                    .is_some_and(|b| b.child("source").is_some()),
            })
        })
        .collect())
}

#[cfg(test)]
pub(crate) mod fixtures {
    /// A Nova-style pinned guest: `pins[v]` is vCPU v's pCPU, memory on host `node`.
    pub fn pinned(
        name: &str,
        uuid: &str,
        pins: &[u32],
        emulator: Option<&str>,
        node: u32,
        mem_mb: u64,
    ) -> String {
        let n = pins.len();
        let mut s = format!(
            "<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid><metadata><nova:instance xmlns:nova=\"http://openstack.org/xmlns/libvirt/nova/1.0\"><nova:name>{name}</nova:name><nova:flavor name=\"pinned.{n}\"><nova:memory>{mem_mb}</nova:memory><nova:vcpus>{n}</nova:vcpus></nova:flavor></nova:instance></metadata><memory unit='KiB'>{}</memory><vcpu placement='static'>{n}</vcpu><cputune>",
            mem_mb * 1024
        );
        for (v, p) in pins.iter().enumerate() {
            s += &format!("<vcpupin vcpu='{v}' cpuset='{p}'/>");
        }
        let all = pins
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        s += &format!(
            "<emulatorpin cpuset='{}'/></cputune>",
            emulator.unwrap_or(&all)
        );
        s += &format!("<numatune><memory mode='strict' nodeset='{node}'/><memnode cellid='0' mode='strict' nodeset='{node}'/></numatune>");
        s += &format!("<os><type arch='x86_64' machine='pc'>hvm</type></os><cpu><topology sockets='1' cores='{n}' threads='1'/><numa><cell id='0' cpus='0-{}' memory='{}' unit='KiB'/></numa></cpu><devices/></domain>", n - 1, mem_mb * 1024);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_copied_disks_of_a_guest() {
        let x = "<domain type='kvm'><cpu mode='custom'><model>Haswell</model></cpu><devices>\
            <disk type='file' device='disk'><driver type='qcow2'/><source file='/i/disk'/><target dev='vda'/></disk>\
            <disk type='file' device='cdrom'><source file='/i/cd'/><target dev='hdc'/></disk>\
            <disk type='file' device='disk'><source file='/i/ro'/><target dev='vdb'/><readonly/></disk>\
            <disk type='file' device='disk'><source file='/i/b'/><target dev='vdc'/><backingStore type='file'><source file='/base'/></backingStore></disk>\
            </devices></domain>";
        let c = guest_cpu(x).unwrap();
        assert!(!c.tcg && c.mode == "custom" && c.element.unwrap().contains("Haswell"));
        let d = file_disks(x).unwrap();
        let seen: Vec<_> = d
            .iter()
            .map(|d| (d.target.as_str(), d.format.as_str(), d.backing))
            .collect();
        assert_eq!(seen, [("vda", "qcow2", false), ("vdc", "raw", true)]);
        let tcg = guest_cpu("<domain type='qemu'><devices/></domain>").unwrap();
        assert!(tcg.tcg && tcg.mode.is_empty() && tcg.element.is_none());
    }

    #[test]
    fn host_cell_of_a_guest_cell_memory_first_then_pins() {
        // pCPUs 0-3 on host cell 0, 4-7 on host cell 1.
        let cell_of = |c: u32| (c < 8).then_some(c / 4);
        let mut g = parse_guest(&fixtures::pinned("vm1", "u-1", &[4, 5], None, 1, 2048)).unwrap();
        assert_eq!(g.memory_cell(0, None), Some(1));
        assert_eq!(g.host_cell(0, None, cell_of), Some(1));
        // Memory binding wins over the pins (repin never moves memory).
        g.vcpu_pins.insert("0".into(), vec![0]);
        g.vcpu_pins.insert("1".into(), vec![1]);
        assert_eq!(g.host_cell(0, None, cell_of), Some(1));
        // No binding: the pins' one cell; pins over two cells: none; one host cell: that one.
        g.numa_cells[0].host_nodes.clear();
        g.memory_nodes.clear();
        assert_eq!(g.memory_cell(0, None), None);
        assert_eq!(g.host_cell(0, None, cell_of), Some(0));
        g.vcpu_pins.insert("1".into(), vec![5]);
        assert_eq!(g.host_cell(0, None, cell_of), None);
        assert_eq!(g.host_cell(0, Some(0), cell_of), Some(0));
        // A guest cell without memnode takes `<memory nodeset>`.
        g.memory_nodes = vec![1];
        assert_eq!(g.memory_cell(0, None), Some(1));
    }

    #[test]
    fn nova_pinned_guest() {
        let g = parse_guest(&fixtures::pinned("vm1", "u-1", &[2, 3], None, 1, 2048)).unwrap();
        assert_eq!(g.vcpus, 2);
        assert_eq!(g.memory_mb, 2048);
        assert_eq!(g.vcpu_pins["0"], vec![2]);
        assert_eq!(g.vcpu_pins["1"], vec![3]);
        assert_eq!(g.emulator_pins, vec![2, 3]);
        assert!(g.is_dedicated());
        assert!(g.reserved_cpus().is_none());
        assert_eq!(
            g.numa_cells,
            vec![GuestCell {
                id: 0,
                vcpus: vec![0, 1],
                memory_mb: 2048,
                host_nodes: vec![1]
            }]
        );
        let nova = g.nova.unwrap();
        assert_eq!(
            (
                nova.flavor.as_deref(),
                nova.flavor_vcpus,
                nova.flavor_memory_mb
            ),
            (Some("pinned.2"), Some(2), Some(2048))
        );
    }

    #[test]
    fn emulator_isolate_is_reserved() {
        let g = parse_guest(&fixtures::pinned("vm2", "u-2", &[4, 5], Some("6"), 0, 64)).unwrap();
        assert_eq!(g.reserved_cpus().unwrap().to_vec(), vec![6]);
        assert_eq!(g.exclusive_cpus().to_vec(), vec![4, 5, 6]);
    }

    #[test]
    fn floating_guest_and_hugepages() {
        let xml = "<domain type='kvm'><name>f</name><uuid>u</uuid><memory unit='GiB'>4</memory><vcpu cpuset='0-3'>2</vcpu><memoryBacking><hugepages><page size='1' unit='G' nodeset='0'/></hugepages></memoryBacking></domain>";
        let g = parse_guest(xml).unwrap();
        assert_eq!(g.vcpu_pins["1"], vec![0, 1, 2, 3]);
        assert!(!g.is_dedicated());
        assert!(g.exclusive_cpus().is_empty());
        assert_eq!(g.memory_mb, 4096);
        assert_eq!(g.hugepage_kb, Some(1048576));
        assert!(g.nova.is_none());
    }

    #[test]
    fn bad_guests() {
        assert!(parse_guest("<domain><name>x</name></domain>")
            .unwrap_err()
            .contains("<vcpu>"));
        assert!(parse_guest("<capabilities/>")
            .unwrap_err()
            .contains("expected <domain>"));
        let x = fixtures::pinned("vm1", "u", &[2], None, 0, 64)
            .replace("vcpu='0' cpuset='2'", "vcpu='7' cpuset='2'");
        assert!(parse_guest(&x).unwrap_err().contains("vcpu='7'"));
        let x =
            fixtures::pinned("vm1", "u", &[2], None, 0, 64).replace("cpuset='2'", "cpuset='two'");
        assert!(parse_guest(&x).unwrap_err().starts_with("domain vm1"));
        let bomb = "<!DOCTYPE d [<!ENTITY a 'x'>]><domain><name>&a;</name></domain>";
        assert!(parse_guest(bomb).unwrap_err().contains("DOCTYPE"));
    }

    #[test]
    fn sizes_are_bounded_and_checked() {
        let base = "<domain><name>b</name><memory unit='GiB'>4</memory><vcpu>2</vcpu><memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages></memoryBacking></domain>";
        assert_eq!(parse_guest(base).unwrap().hugepage_kb, Some(2048));
        for (from, to, want) in [
            (
                "size='2048'",
                "size='0'",
                "<page size='0'>: a page size of 0",
            ),
            ("size='2048'", "size='1000'", "not a power of two"),
            (
                "<memory unit='GiB'>4",
                "<memory unit='KB'>18446744073709551615",
                "memory value 18446744073709551615 KB: ",
            ),
            (
                "<memory unit='GiB'>4",
                "<memory unit='EB'>18446744073709551615",
                "overflows",
            ),
            ("<memory unit='GiB'>4", "<memory unit='TiB'>65", "more than"),
            ("<vcpu>2", "<vcpu>4294967295", "4294967295 vCPUs"),
        ] {
            let bad = base.replace(from, to);
            let e = parse_guest(&bad).unwrap_err();
            assert!(e.starts_with("domain b: ") && e.contains(want), "{e}");
        }
        let cells = "<cell cpus='0' memory='1'/>".repeat(129);
        let x = base.replace(
            "</domain>",
            &format!("<cpu><numa>{cells}</numa></cpu></domain>"),
        );
        assert!(parse_guest(&x).unwrap_err().contains("128"));
    }

    #[test]
    fn guests_from_json_are_checked() {
        let mut g = parse_guest(&fixtures::pinned("vm1", "u", &[2, 3], None, 0, 64)).unwrap();
        assert!(g.check("g").is_ok());
        g.hugepage_kb = Some(0);
        assert_eq!(g.check("g").unwrap_err().field, "g.hugepage_kb");
        g.hugepage_kb = None;
        g.vcpu_pins.insert("0".into(), vec![u32::MAX]);
        assert_eq!(g.check("g").unwrap_err().field, "g.vcpu_pins.0");
        g.vcpus = u32::MAX;
        assert_eq!(g.check("g").unwrap_err().field, "g.vcpus");
    }
}
