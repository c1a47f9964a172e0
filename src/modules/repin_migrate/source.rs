//! What a migration starts from: both hosts (their libvirtd and their Nova names) and the
//! guest as the source runs it.

use super::args::Args;
use super::lv;
use crate::ansible::Failure;
use crate::io::libvirt::{self, consts, Domain, Host};
use crate::model::domain::Guest;
use crate::nova::conf;
use anyhow::{anyhow, Result};
use std::path::Path;

/// `[DEFAULT] host` of a nova.conf (unreadable or absent: None, the caller falls back).
pub(super) fn conf_host(path: Option<&Path>) -> Option<String> {
    let ini = conf::load_ini("nova.conf", path?).ok()?;
    conf::ini_get(&ini, "DEFAULT", "host")
}

pub(super) struct SourceGuest {
    pub(super) dom: Domain,
    pub(super) guest: Guest,
    pub(super) live_xml: String,
    pub(super) inactive_xml: String,
    pub(super) persistent: bool,
}

pub(super) fn read_source(src: &Host, name: &str) -> Result<Option<SourceGuest>> {
    let dom = match src.find(name) {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(Failure::new(format!(
                "cannot ask the source's libvirtd about {name}: {}; nothing was changed",
                lv(e)
            ))
            .into())
        }
    };
    let guest = libvirt::guest_of(&dom)?;
    let live_xml = dom
        .xml_desc(consts::VIR_DOMAIN_XML_MIGRATABLE)
        .map_err(|e| anyhow!("guest {name}: cannot read its XML: {}", lv(e)))?;
    let persistent = dom.is_persistent().unwrap_or(false);
    let inactive_xml = if persistent {
        dom.xml_desc(consts::VIR_DOMAIN_XML_INACTIVE | consts::VIR_DOMAIN_XML_MIGRATABLE)
            .map_err(|e| anyhow!("guest {name}: cannot read its inactive XML: {}", lv(e)))?
    } else {
        live_xml.clone()
    };
    Ok(Some(SourceGuest {
        dom,
        guest,
        live_xml,
        inactive_xml,
        persistent,
    }))
}

/// Both ends of a migration: connections, URIs and the names Nova knows them by.
pub(super) struct Hosts {
    pub src: Host,
    pub dst: Host,
    pub source_uri: String,
    pub dest_uri: String,
    /// Nova's compute host names (the args, else `[DEFAULT] host` of their nova.conf, else
    /// libvirt's hostname) and the destination's node (hypervisor_hostname).
    pub source_host: String,
    pub dest_host: String,
    pub dest_node: String,
}

impl Hosts {
    pub(super) fn connect(a: &Args) -> Result<Hosts> {
        let dest_uri = a.dest_uri.clone().unwrap_or_default();
        let src = libvirt::connect(&a.source_uri)?;
        let dst = libvirt::connect(&dest_uri)?;
        let source_host = a
            .source_host
            .clone()
            .or_else(|| conf_host(a.source_nova_conf.as_deref()))
            .unwrap_or_else(|| src.hostname());
        let dest_host = a
            .dest_host
            .clone()
            .or_else(|| conf_host(a.dest_nova_conf.as_deref()))
            .unwrap_or_else(|| dst.hostname());
        let dest_node = a.dest_node.clone().unwrap_or_else(|| dest_host.clone());
        Ok(Hosts {
            src,
            dst,
            source_uri: a.source_uri.clone(),
            dest_uri,
            source_host,
            dest_host,
            dest_node,
        })
    }
}
