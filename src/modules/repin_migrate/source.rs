use super::{lv, M};
use crate::ansible::Failure;
use crate::io::libvirt::{self, consts, Domain, Host};
use crate::limits;
use crate::model::domain::Guest;
use anyhow::{anyhow, Result};
use std::path::Path;

/// `[DEFAULT] host` of a nova.conf.
pub(super) fn conf_host(path: Option<&Path>) -> Option<String> {
    let text = limits::read_text("nova.conf", path?, limits::MAX_FILE_BYTES).ok()?;
    let mut in_default = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_default = l.eq_ignore_ascii_case("[DEFAULT]");
            continue;
        }
        if in_default {
            if let Some((k, v)) = l.split_once('=') {
                if k.trim() == "host" && !v.trim().is_empty() {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The module.

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
                "{M}: cannot ask the source's libvirtd about {name}: {}; nothing was changed",
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
