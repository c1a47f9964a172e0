//! Thin layer over the `virt` crate: connect by URI, read capabilities and guests.
//! (Migration, job statistics and live pinning are added here by `repin_migrate`.)

use crate::domain::{self, Guest};
use crate::topology::{self, Cell, Cpu, HostTopology, PagePool};
use anyhow::{anyhow, Result};
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;

pub use virt::sys;

/// An open libvirt connection and the URI it was opened with (for messages).
pub struct Host {
    pub conn: Connect,
    pub uri: String,
}

/// libvirt prints every error to stderr by default; our errors go into the result instead.
fn quiet() {
    virt::error::clear_error_callback();
}

pub fn connect(uri: &str) -> Result<Host> {
    quiet();
    let conn = Connect::open(Some(uri)).map_err(|e| {
        anyhow!(
            "cannot connect to libvirt at {uri}: {}; check that libvirtd runs there and listens (libvirtd --listen with listen_tcp=1 for qemu+tcp://)",
            e.message()
        )
    })?;
    Ok(Host {
        conn,
        uri: uri.to_string(),
    })
}

pub fn state_name(s: &Enum<DomainState, sys::virDomainState>) -> &'static str {
    match s {
        Enum::Known(DomainState::Running) => "running",
        Enum::Known(DomainState::Blocked) => "blocked",
        Enum::Known(DomainState::Paused) => "paused",
        Enum::Known(DomainState::Shutdown) => "shutdown",
        Enum::Known(DomainState::Shutoff) => "shutoff",
        Enum::Known(DomainState::Crashed) => "crashed",
        Enum::Known(DomainState::PMSuspended) => "pmsuspended",
        _ => "nostate",
    }
}

impl Host {
    pub fn hostname(&self) -> String {
        self.conn.hostname().unwrap_or_else(|_| self.uri.clone())
    }

    pub fn capabilities_xml(&self) -> Result<String> {
        self.conn.capabilities().map_err(|e| {
            anyhow!(
                "libvirt at {}: cannot read capabilities: {}",
                self.uri,
                e.message()
            )
        })
    }

    /// The host topology; where capabilities list no NUMA cells (some drivers), one cell is
    /// synthesized from node info, and the second value says so.
    pub fn topology(&self) -> Result<(HostTopology, &'static str)> {
        let mut topo = topology::parse_capabilities(&self.capabilities_xml()?)
            .map_err(|e| anyhow!("libvirt at {}: {e}", self.uri))?;
        if !topo.cells.is_empty() {
            return Ok((topo, "capabilities"));
        }
        let info = self.conn.node_info().map_err(|e| {
            anyhow!(
                "libvirt at {}: cannot read node info: {}",
                self.uri,
                e.message()
            )
        })?;
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
        Ok((topo, "nodeinfo"))
    }

    /// Every defined or running guest, parsed. A guest whose XML cannot be read is returned in
    /// the second list with the reason, so one odd domain does not hide the others.
    pub fn guests(&self) -> Result<(Vec<Guest>, Vec<String>)> {
        let doms = self.conn.list_all_domains(0).map_err(|e| {
            anyhow!(
                "libvirt at {}: cannot list domains: {}",
                self.uri,
                e.message()
            )
        })?;
        let mut guests = Vec::new();
        let mut bad = Vec::new();
        for d in doms {
            match guest_of(&d) {
                Ok(g) => guests.push(g),
                Err(e) => bad.push(format!("{e:#}")),
            }
        }
        guests.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((guests, bad))
    }

    pub fn lookup(&self, name_or_uuid: &str) -> Result<Domain> {
        self.conn
            .lookup_domain_by_name(name_or_uuid)
            .or_else(|_| self.conn.lookup_domain_by_uuid_string(name_or_uuid))
            .map_err(|_| {
                anyhow!(
                    "no guest named or with uuid '{name_or_uuid}' on {}",
                    self.uri
                )
            })
    }
}

pub fn guest_of(d: &Domain) -> Result<Guest> {
    let name = d.name().unwrap_or_else(|_| "?".into());
    let xml = d
        .xml_desc(0)
        .map_err(|e| anyhow!("guest {name}: cannot read its XML: {}", e.message()))?;
    let mut g = domain::parse_guest(&xml).map_err(|e| anyhow!(e))?;
    g.state = d
        .state()
        .map(|(s, _)| state_name(&s))
        .unwrap_or("nostate")
        .to_string();
    Ok(g)
}
