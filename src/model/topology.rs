//! Host NUMA model from libvirt's capabilities XML (`virsh capabilities`).
//!
//! The cells, their CPUs with socket/core/siblings, memory and page pools, and distances.
//! nova.conf's restrictions (which CPUs may be pinned, reserved pages) live in `nova::conf`;
//! `facts` combines both with the guests into what the fit engine consumes.

use crate::limits;
use crate::model::cpuset::{self, CpuSet};
use crate::model::units;
use crate::model::xml::{self, Element};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Cpu {
    pub id: u32,
    pub socket: u32,
    pub core: u32,
    /// All threads of this CPU's core, itself included (libvirt's `siblings`).
    pub siblings: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct PagePool {
    pub size_kb: u64,
    pub total: u64,
    /// Pages not used by guests nor reserved (filled in by `facts`; capabilities only give totals).
    #[serde(default)]
    pub free: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Cell {
    pub id: u32,
    pub memory_mb: u64,
    pub cpus: Vec<Cpu>,
    #[serde(default)]
    pub pages: Vec<PagePool>,
    /// Distance to each cell, keyed by cell id (JSON object keys are strings).
    #[serde(default)]
    pub distances: BTreeMap<String, u32>,
}

impl Cell {
    pub fn cpu_set(&self) -> CpuSet {
        self.cpus.iter().map(|c| c.id).collect()
    }
    /// The bounds of [`crate::limits`] on a cell handed in as JSON (facts from an earlier run):
    /// CPU ids, memory, page sizes and counts. `field` is where the cell sits (`host_facts.cells[0]`).
    pub fn check(&self, field: &str) -> Result<(), limits::Error> {
        for (i, c) in self.cpus.iter().enumerate() {
            limits::cpu_id(&format!("{field}.cpus[{i}].id"), c.id)?;
            for s in &c.siblings {
                limits::cpu_id(&format!("{field}.cpus[{i}].siblings"), *s)?;
            }
        }
        limits::memory_mib(&format!("{field}.memory_mb"), self.memory_mb)?;
        for (i, p) in self.pages.iter().enumerate() {
            let f = format!("{field}.pages[{i}]");
            limits::page_kib(&format!("{f}.size_kb"), p.size_kb)?;
            limits::pages(&format!("{f}.total"), p.size_kb, p.total)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Default)]
pub struct HostTopology {
    pub cells: Vec<Cell>,
    /// Host CPU model and vendor, for the mixed-generation check before a migration.
    #[serde(default)]
    pub cpu_model: Option<String>,
    #[serde(default)]
    pub cpu_vendor: Option<String>,
    #[serde(default)]
    pub arch: Option<String>,
}

impl HostTopology {
    pub fn all_cpus(&self) -> CpuSet {
        self.cells
            .iter()
            .flat_map(|c| c.cpus.iter().map(|p| p.id))
            .collect()
    }
    /// The cell a CPU belongs to.
    pub fn cell_of(&self, cpu: u32) -> Option<u32> {
        self.cells
            .iter()
            .find(|c| c.cpus.iter().any(|p| p.id == cpu))
            .map(|c| c.id)
    }
}

/// Parse `virsh capabilities` output. A host without `<topology><cells>` (some drivers) yields
/// zero cells; the caller may synthesize one from node info.
pub fn parse_capabilities(doc: &str) -> Result<HostTopology, String> {
    let root = xml::parse(doc).map_err(|e| format!("capabilities XML: {e}"))?;
    if root.name != "capabilities" {
        return Err(format!(
            "capabilities XML: root element is <{}>, expected <capabilities>",
            root.name
        ));
    }
    let host = root
        .child("host")
        .ok_or("capabilities XML: no <host> element")?;
    let mut topo = HostTopology::default();
    if let Some(cpu) = host.child("cpu") {
        topo.arch = cpu.child("arch").map(|e| e.text.clone());
        topo.cpu_model = cpu.child("model").map(|e| e.text.clone());
        topo.cpu_vendor = cpu.child("vendor").map(|e| e.text.clone());
    }
    let Some(cells) = host.path("topology/cells") else {
        return Ok(topo);
    };
    let n = cells.children("cell").count();
    limits::at_most(
        "capabilities XML: <cells>",
        n as u64,
        limits::MAX_HOST_CELLS as u64,
        "cells",
    )
    .map_err(|e| e.to_string())?;
    for cell in cells.children("cell") {
        topo.cells.push(parse_cell(cell)?);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut cpus_seen = CpuSet::new();
    for c in &topo.cells {
        if !seen.insert(c.id) {
            return Err(format!("capabilities XML: cell id {} appears twice", c.id));
        }
        let mine = c.cpu_set();
        if let Some(p) = mine.intersection(&cpus_seen).first() {
            return Err(format!(
                "capabilities XML: CPU {p} appears in more than one cell"
            ));
        }
        cpus_seen = cpus_seen.union(&mine);
    }
    Ok(topo)
}

fn parse_cell(cell: &Element) -> Result<Cell, String> {
    let id: u32 = cell
        .attr_num("id")?
        .ok_or("capabilities XML: <cell> without id")?;
    let ctx = |e: String| format!("capabilities XML, cell {id}: {e}");
    let memory_kib = match cell.child("memory") {
        Some(m) => units::to_kib(m.text_num::<u64>().map_err(ctx)?, m.attr("unit")).map_err(ctx)?,
        None => 0,
    };
    let mut pages = Vec::new();
    for p in cell.children("pages") {
        let size: u64 = p
            .attr_num("size")
            .map_err(ctx)?
            .ok_or_else(|| ctx("<pages> without size".into()))?;
        let size_kb = units::to_kib(size, p.attr("unit")).map_err(ctx)?;
        let field = format!("<pages size='{size}'>");
        limits::page_kib(&field, size_kb).map_err(|e| ctx(e.to_string()))?;
        let total = limits::pages(&field, size_kb, p.text_num().map_err(ctx)?)
            .map_err(|e| ctx(e.to_string()))?;
        pages.push(PagePool {
            size_kb,
            total,
            free: None,
        });
    }
    pages.sort_by_key(|p| p.size_kb);
    let mut distances = BTreeMap::new();
    if let Some(d) = cell.child("distances") {
        for s in d.children("sibling") {
            let sid: u32 = s
                .attr_num("id")
                .map_err(ctx)?
                .ok_or_else(|| ctx("distance sibling without id".into()))?;
            let val: u32 = s
                .attr_num("value")
                .map_err(ctx)?
                .ok_or_else(|| ctx("distance sibling without value".into()))?;
            distances.insert(sid.to_string(), val);
        }
    }
    let mut cpus = Vec::new();
    if let Some(list) = cell.child("cpus") {
        for c in list.children("cpu") {
            let cid: u32 = c
                .attr_num("id")
                .map_err(ctx)?
                .ok_or_else(|| ctx("<cpu> without id".into()))?;
            if cid > cpuset::MAX_CPU_ID {
                return Err(ctx(format!("CPU id {cid} is out of range")));
            }
            let socket = c.attr_num("socket_id").map_err(ctx)?.unwrap_or(0);
            let core = c.attr_num("core_id").map_err(ctx)?.unwrap_or(cid);
            // Offline CPUs have no siblings attribute: treat as a core of one.
            let siblings = match c.attr("siblings") {
                Some(s) => cpuset::parse_spec(s)
                    .map_err(|e| ctx(e.to_string()))?
                    .to_vec(),
                None => vec![cid],
            };
            cpus.push(Cpu {
                id: cid,
                socket,
                core,
                siblings,
            });
        }
    }
    cpus.sort_by_key(|c| c.id);
    Ok(Cell {
        id,
        memory_mb: memory_kib / 1024,
        cpus,
        pages,
        distances,
    })
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Capabilities documents for real layouts, generated so every test reads through the
    //! same parser a saved `virsh capabilities` would.

    /// `sockets` cells (one per socket), each `cores` x `threads`, Linux-style numbering:
    /// thread t of core c on socket s gets id `t*sockets*cores + s*cores + c`.
    pub fn caps(
        sockets: u32,
        cores: u32,
        threads: u32,
        mem_mb: u64,
        hugepages: &[(u64, u64)],
    ) -> String {
        let mut s = String::from("<capabilities><host><uuid>x</uuid><cpu><arch>x86_64</arch><model>Skylake-Server-IBRS</model><vendor>Intel</vendor></cpu><topology><cells num='");
        s += &format!("{sockets}'>");
        for sock in 0..sockets {
            s += &format!(
                "<cell id='{sock}'><memory unit='KiB'>{}</memory>",
                mem_mb * 1024
            );
            let huge_kb: u64 = hugepages.iter().map(|(size, n)| size * n).sum();
            s += &format!(
                "<pages unit='KiB' size='4'>{}</pages>",
                (mem_mb * 1024 - huge_kb) / 4
            );
            for (size, n) in hugepages {
                s += &format!("<pages unit='KiB' size='{size}'>{n}</pages>");
            }
            s += "<distances>";
            for o in 0..sockets {
                s += &format!(
                    "<sibling id='{o}' value='{}'/>",
                    if o == sock { 10 } else { 21 }
                );
            }
            s += &format!("</distances><cpus num='{}'>", cores * threads);
            for c in 0..cores {
                let ids: Vec<u32> = (0..threads)
                    .map(|t| t * sockets * cores + sock * cores + c)
                    .collect();
                let sib = ids
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                for id in &ids {
                    s += &format!("<cpu id='{id}' socket_id='{sock}' die_id='0' core_id='{c}' siblings='{sib}'/>");
                }
            }
            s += "</cpus></cell>";
        }
        s += "</cells></topology></host></capabilities>";
        s
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::caps;
    use super::*;

    #[test]
    fn one_cell_without_smt() {
        let t = parse_capabilities(&caps(1, 4, 1, 8192, &[])).unwrap();
        assert_eq!(t.cells.len(), 1);
        assert_eq!(t.cells[0].cpus.len(), 4);
        assert_eq!(t.cells[0].cpus[2].siblings, vec![2]);
        assert_eq!(t.cells[0].memory_mb, 8192);
        assert_eq!(
            t.cells[0].pages,
            vec![PagePool {
                size_kb: 4,
                total: 8192 * 256,
                free: None
            }]
        );
        assert_eq!(t.cpu_model.as_deref(), Some("Skylake-Server-IBRS"));
    }

    #[test]
    fn two_sockets_twelve_cores_two_threads() {
        let t = parse_capabilities(&caps(2, 12, 2, 65536, &[])).unwrap();
        assert_eq!(t.cells.len(), 2);
        let c1 = &t.cells[1];
        assert_eq!(c1.cpus.len(), 24);
        // CPU 12 is socket 1 core 0, its sibling thread is 12 + 24 = 36
        let cpu12 = c1.cpus.iter().find(|c| c.id == 12).unwrap();
        assert_eq!(
            (cpu12.socket, cpu12.core, cpu12.siblings.clone()),
            (1, 0, vec![12, 36])
        );
        assert_eq!(c1.distances.get("0"), Some(&21));
        assert_eq!(t.cell_of(36), Some(1));
        assert_eq!(t.all_cpus().len(), 48);
    }

    #[test]
    fn four_cells_and_hugepages() {
        let t = parse_capabilities(&caps(4, 4, 2, 16384, &[(2048, 1024), (1048576, 4)])).unwrap();
        assert_eq!(t.cells.len(), 4);
        let sizes: Vec<u64> = t.cells[3].pages.iter().map(|p| p.size_kb).collect();
        assert_eq!(sizes, vec![4, 2048, 1048576]);
        assert_eq!(t.cells[3].pages[2].total, 4);
        // 16 GiB minus 2 GiB of 2M pages and 4 GiB of 1G pages, in 4K pages
        assert_eq!(t.cells[3].pages[0].total, (16384 - 2048 - 4096) * 256);
    }

    #[test]
    fn zero_cells_is_not_an_error() {
        let t = parse_capabilities(
            "<capabilities><host><cpu><arch>x86_64</arch></cpu></host></capabilities>",
        )
        .unwrap();
        assert!(t.cells.is_empty());
    }

    #[test]
    fn bad_documents() {
        assert!(parse_capabilities("<domain/>")
            .unwrap_err()
            .contains("expected <capabilities>"));
        let full = caps(1, 2, 1, 1024, &[]);
        let cut = &full[..full.len() / 2];
        let e = parse_capabilities(cut).unwrap_err();
        assert!(e.contains("truncated") || e.contains("malformed"), "{e}");
        let bad = full.replace("<memory unit='KiB'>1048576", "<memory unit='KiB'>lots");
        assert!(parse_capabilities(&bad).unwrap_err().contains("cell 0"));
        let dup = full.replace("cpu id='1'", "cpu id='0'");
        assert!(parse_capabilities(&dup).is_ok()); // same cell: tolerated, ids dedup in sets
        let unit = full.replace("unit='KiB'>1048576", "unit='parsecs'>1048576");
        assert!(parse_capabilities(&unit)
            .unwrap_err()
            .contains("unknown memory unit"));
    }

    #[test]
    fn bounded_page_pools_and_memory() {
        let full = caps(1, 2, 1, 1024, &[(2048, 8)]);
        assert!(parse_capabilities(&full).is_ok());
        for (from, to, want) in [
            ("size='2048'", "size='0'", "page size of 0"),
            ("size='2048'", "size='3'", "not a power of two"),
            (
                ">8</pages>",
                ">18446744073709551615</pages>",
                "KiB of pages",
            ),
        ] {
            let bad = full.replace(from, to);
            assert_ne!(bad, full, "{from}");
            let e = parse_capabilities(&bad).unwrap_err();
            assert!(e.contains(want) && e.contains("<pages"), "{e}");
        }
        let big = full.replace(
            "<memory unit='KiB'>1048576",
            "<memory unit='KB'>18446744073709551615",
        );
        assert!(parse_capabilities(&big).unwrap_err().contains("cell 0"));
        let many = "<cell id='0'/>".repeat(crate::limits::MAX_HOST_CELLS + 1);
        let doc = format!(
            "<capabilities><host><topology><cells>{many}</cells></topology></host></capabilities>"
        );
        assert!(parse_capabilities(&doc).unwrap_err().contains("cells"));
    }
}
