//! Domain XML, write side: rewrite a guest's definition for a new [`Placement`].
//!
//! Owned, and only these: `<vcpupin vcpu cpuset>` (one per vCPU), `<emulatorpin cpuset>`,
//! `<vcpu cpuset>` (only when already present, on a dedicated guest), `<numatune><memory
//! nodeset>` and `<numatune><memnode cellid nodeset>`. Everything else (elements, attributes
//! and their quoting, namespaces, comments, metadata, whitespace) is copied byte for byte from
//! the input: the rewrite works on quick-xml's event stream and copies the raw span of every
//! event it does not own; inside an owned tag only the owned attribute value changes.
//!
//! Not rewritten, on purpose: `<memoryBacking><hugepages><page nodeset>` names *guest* NUMA
//! nodes (libvirt: "ties the page size to the guest NUMA nodes"), which a repin keeps; the page
//! size is checked against the placement's instead. `<cpu><numa><cell>` (guest cells) stays.
//!
//! Like `xml.rs`, a DOCTYPE (entity declarations) is refused and only the predefined entities
//! are accepted. A rewrite is idempotent: rewriting its output for the same placement is a no-op.

use crate::model::cpuset::{format_spec, CpuSet};
use crate::model::placement::Placement;
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, Writer};
use std::collections::{BTreeMap, BTreeSet};

/// What the rewrite writes: per-vCPU pins, emulator pins, per guest cell host node.
#[derive(Debug, Clone, PartialEq)]
pub struct PinPlan {
    pub vcpu_pins: BTreeMap<u32, CpuSet>,
    pub emulator: CpuSet,
    /// guest cell id -> host cell id
    pub memnodes: BTreeMap<u32, u32>,
    pub dedicated: bool,
    /// Page size per guest cell as placed (KiB), to check against the XML's `<page size>`.
    pub pagesize_kb: Option<u64>,
}

impl PinPlan {
    pub fn from_placement(p: &Placement) -> PinPlan {
        let mut vcpu_pins = BTreeMap::new();
        let mut memnodes = BTreeMap::new();
        for c in &p.cells {
            for (v, pc) in &c.vcpu_pins {
                if let Ok(v) = v.parse::<u32>() {
                    vcpu_pins.insert(v, std::iter::once(*pc).collect::<CpuSet>());
                }
            }
            memnodes.insert(c.guest_cell, c.host_cell);
        }
        PinPlan {
            vcpu_pins,
            emulator: p.emulator_pins.iter().copied().collect(),
            memnodes,
            dedicated: p.dedicated,
            pagesize_kb: p.cells.iter().find_map(|c| c.pagesize_kb),
        }
    }
    fn nodeset(&self) -> String {
        let all: CpuSet = self.memnodes.values().copied().collect();
        format_spec(&all)
    }
}

/// Rewrite `xml` (a `virsh dumpxml` output, live, inactive or migratable) for `placement`.
pub fn rewrite(xml: &str, placement: &Placement) -> Result<String, String> {
    rewrite_plan(xml, &PinPlan::from_placement(placement))
}

#[derive(Default)]
struct Scope {
    /// Whitespace text seen right before the last child start (child indentation).
    child_indent: Option<String>,
    seen_vcpus: BTreeSet<u32>,
    seen_emulator: bool,
    seen_memory: bool,
    seen_memnodes: BTreeSet<u32>,
}

/// Rewrite `xml` for a [`PinPlan`]: one pass over quick-xml's events, raw spans copied, owned
/// tags edited (see the module docs).
pub fn rewrite_plan(xml: &str, plan: &PinPlan) -> Result<String, String> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(false);
    let mut rw = Rewriter {
        plan,
        numa: !plan.memnodes.is_empty(),
        out: Writer::new(Vec::with_capacity(xml.len() + 256)),
        path: Vec::new(),
        scopes: Vec::new(),
        pending_ws: None,
        seen_cputune: false,
        seen_numatune: false,
        domain_child_indent: None,
    };
    let mut pos = 0usize;
    loop {
        let ev = reader.read_event().map_err(|e| {
            format!(
                "domain XML: malformed at byte {}: {e}",
                reader.error_position()
            )
        })?;
        let end = reader.buffer_position() as usize;
        let raw = &xml[pos..end];
        pos = end;
        match ev {
            Event::DocType(_) => return Err("domain XML: a DOCTYPE is not accepted (libvirt XML never has one; entity declarations are refused)".into()),
            Event::Eof => break,
            Event::Text(t) => {
                t.unescape().map_err(|e| format!("domain XML: text cannot be decoded ({e}); entities other than the predefined five are refused"))?;
                raw_out(&mut rw.out, raw);
                rw.pending_ws = if raw.trim().is_empty() { Some(raw.to_string()) } else { None };
                continue;
            }
            Event::Start(ref s) => rw.start(s, false, raw)?,
            Event::Empty(ref s) => rw.start(s, true, raw)?,
            Event::End(ref e) => rw.end(e, raw),
            _ => raw_out(&mut rw.out, raw), // declaration, comments, PIs, CDATA: as they were
        }
        rw.pending_ws = None;
    }
    if !rw.path.is_empty() {
        return Err(format!(
            "domain XML: truncated, <{}> is never closed",
            rw.path.last().map(String::as_str).unwrap_or("?")
        ));
    }
    String::from_utf8(rw.out.into_inner()).map_err(|e| format!("cannot write XML: {e}"))
}

/// The rewrite's state while it walks the document once.
struct Rewriter<'p> {
    plan: &'p PinPlan,
    numa: bool,
    out: Writer<Vec<u8>>,
    path: Vec<String>,
    scopes: Vec<Scope>,
    /// Whitespace text just written.
    pending_ws: Option<String>,
    seen_cputune: bool,
    seen_numatune: bool,
    domain_child_indent: Option<String>,
}

impl Rewriter<'_> {
    /// A start (or empty) tag: edited when owned, `<cputune/>`/`<numatune/>` expanded,
    /// else copied.
    fn start(&mut self, s: &BytesStart, is_empty: bool, raw: &str) -> Result<(), String> {
        let plan = self.plan;
        let depth = self.path.len();
        let name = String::from_utf8_lossy(s.name().as_ref()).into_owned();
        check_attrs(s)?;
        if let Some(sc) = self.scopes.last_mut() {
            if let Some(ws) = &self.pending_ws {
                sc.child_indent = Some(ws.clone());
            }
        }
        if depth == 1 && self.path[0] == "domain" {
            if let Some(ws) = &self.pending_ws {
                self.domain_child_indent = Some(ws.clone());
            }
        }
        let in_domain = depth == 1 && self.path[0] == "domain";
        let (content, changed) = self.edit(&name, depth, tag_content(raw, is_empty))?;
        let owns_children = in_domain && (name == "cputune" || (name == "numatune" && self.numa));
        if in_domain && name == "cputune" {
            self.seen_cputune = true;
        }
        if in_domain && name == "numatune" {
            self.seen_numatune = true;
        }
        if is_empty && owns_children {
            // <cputune/> or <numatune/>: expand it to hold what we own.
            let indent = self.pending_ws.clone().unwrap_or_default();
            let child = format!("{indent}  ");
            let body = if name == "cputune" {
                cputune_body(plan, &Scope::default(), &child)
            } else {
                numatune_body(plan, &Scope::default(), &child)
            };
            raw_out(
                &mut self.out,
                &format!("<{content}>{body}{indent}</{name}>"),
            );
        } else if changed {
            let bs = BytesStart::from_content(content.as_str(), name.len());
            let e = if is_empty {
                Event::Empty(bs)
            } else {
                Event::Start(bs)
            };
            self.out
                .write_event(e)
                .map_err(|e| format!("cannot write XML: {e}"))?;
        } else {
            raw_out(&mut self.out, raw);
        }
        if !is_empty {
            self.path.push(name);
            self.scopes.push(Scope::default());
        }
        Ok(())
    }

    /// The owned attribute of an owned tag set from the plan: the tag's new content and
    /// whether it changed; the page size checked.
    // Long because it is one match arm per owned tag: the table of what the rewrite owns.
    fn edit(
        &mut self,
        name: &str,
        depth: usize,
        mut content: String,
    ) -> Result<(String, bool), String> {
        let (plan, numa, path) = (self.plan, self.numa, &self.path);
        let parent = path.last().map(String::as_str);
        let mut changed = false;
        #[allow(clippy::collapsible_match)] // a guard would fall through to the other arms
        match (parent, name) {
            (Some("domain"), "vcpu") if depth == 1 && plan.dedicated => {
                if attr_value(&content, "cpuset").is_some() {
                    let all: CpuSet = plan
                        .vcpu_pins
                        .values()
                        .fold(CpuSet::new(), |a, s| a.union(s));
                    content = set_attr(&content, "cpuset", &format_spec(&all));
                    changed = true;
                }
            }
            (Some("cputune"), "vcpupin") if depth == 2 && path[0] == "domain" => {
                let v: u32 = attr_value(&content, "vcpu")
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or("domain XML: <vcpupin> without a numeric vcpu attribute")?;
                if let Some(sc) = self.scopes.last_mut() {
                    sc.seen_vcpus.insert(v);
                }
                if let Some(set) = plan.vcpu_pins.get(&v) {
                    content = set_attr(&content, "cpuset", &format_spec(set));
                    changed = true;
                } else if plan.dedicated {
                    return Err(format!("domain XML: <vcpupin vcpu='{v}'> but the placement has no pin for vCPU {v}"));
                }
            }
            (Some("cputune"), "emulatorpin") if depth == 2 && path[0] == "domain" => {
                if let Some(sc) = self.scopes.last_mut() {
                    sc.seen_emulator = true;
                }
                if !plan.emulator.is_empty() {
                    content = set_attr(&content, "cpuset", &format_spec(&plan.emulator));
                    changed = true;
                }
            }
            (Some("numatune"), "memory") if depth == 2 && path[0] == "domain" && numa => {
                if let Some(sc) = self.scopes.last_mut() {
                    sc.seen_memory = true;
                }
                if attr_value(&content, "placement").as_deref() != Some("auto") {
                    content = set_attr(&content, "nodeset", &plan.nodeset());
                    changed = true;
                }
            }
            (Some("numatune"), "memnode") if depth == 2 && path[0] == "domain" && numa => {
                let c: u32 = attr_value(&content, "cellid")
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or("domain XML: <memnode> without a numeric cellid")?;
                if let Some(sc) = self.scopes.last_mut() {
                    sc.seen_memnodes.insert(c);
                }
                let h = plan.memnodes.get(&c).ok_or_else(|| format!("domain XML: <memnode cellid='{c}'> but the placement has no guest cell {c}"))?;
                content = set_attr(&content, "nodeset", &h.to_string());
                changed = true;
            }
            (Some("hugepages"), "page") if depth == 3 && path[1] == "memoryBacking" => {
                if let (Some(want), Some(size)) = (plan.pagesize_kb, attr_value(&content, "size")) {
                    let unit = attr_value(&content, "unit");
                    let kb = size
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .and_then(|s| crate::model::units::to_kib(s, unit.as_deref()).ok());
                    if kb.is_some_and(|k| k != want) {
                        return Err(format!("domain XML: <page size='{size}'> differs from the placement's page size {want} KiB; the guest would need another page size on the destination"));
                    }
                }
            }
            _ => {}
        }
        Ok((content, changed))
    }

    /// An end tag: what we own and did not meet goes in before `</cputune>`, `</numatune>`,
    /// or (missing sections) `</domain>`.
    fn end(&mut self, e: &quick_xml::events::BytesEnd, raw: &str) {
        let (plan, numa) = (self.plan, self.numa);
        let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        let sc = self.scopes.pop().unwrap_or_default();
        self.path.pop();
        let depth = self.path.len();
        let closing = self.pending_ws.clone().unwrap_or_default();
        let child_indent = sc.child_indent.clone().unwrap_or_else(|| {
            if closing.is_empty() {
                String::new()
            } else {
                format!("{closing}  ")
            }
        });
        // Text to put before new children so they sit on their own lines: the closing
        // whitespace was already written, so add the child indentation's extra part.
        let lead = extra_indent(&child_indent, &closing);
        if depth == 1 && self.path[0] == "domain" && name == "cputune" {
            let body = cputune_body(plan, &sc, &child_indent);
            if !body.is_empty() {
                raw_out(
                    &mut self.out,
                    &format!(
                        "{lead}{}{closing}",
                        body.trim_start_matches(child_indent.as_str())
                    ),
                );
            }
        } else if depth == 1 && self.path[0] == "domain" && name == "numatune" && numa {
            let body = numatune_body(plan, &sc, &child_indent);
            if !body.is_empty() {
                raw_out(
                    &mut self.out,
                    &format!(
                        "{lead}{}{closing}",
                        body.trim_start_matches(child_indent.as_str())
                    ),
                );
            }
        } else if depth == 0 && name == "domain" {
            let ci = self.domain_child_indent.clone().unwrap_or_default();
            let lead = extra_indent(&ci, &closing);
            let mut add = String::new();
            let inner = format!("{ci}  ");
            if !self.seen_cputune && (plan.dedicated || !plan.emulator.is_empty()) {
                add += &format!(
                    "{ci}<cputune>{}{ci}</cputune>",
                    cputune_body(plan, &Scope::default(), &inner)
                );
            }
            if !self.seen_numatune && numa {
                add += &format!(
                    "{ci}<numatune>{}{ci}</numatune>",
                    numatune_body(plan, &Scope::default(), &inner)
                );
            }
            if !add.is_empty() {
                raw_out(
                    &mut self.out,
                    &format!("{lead}{}{closing}", add.trim_start_matches(ci.as_str())),
                );
            }
        }
        raw_out(&mut self.out, raw);
    }
}

fn raw_out(w: &mut Writer<Vec<u8>>, s: &str) {
    w.get_mut().extend_from_slice(s.as_bytes());
}

/// The part of `child` whitespace beyond the `closing` whitespace already written (e.g. child
/// "\n    ", closing "\n  " -> "  "); when they do not nest, the whole child indentation.
fn extra_indent(child: &str, closing: &str) -> String {
    match child.strip_prefix(closing) {
        Some(rest) => rest.to_string(),
        None => child.to_string(),
    }
}

fn cputune_body(plan: &PinPlan, seen: &Scope, indent: &str) -> String {
    let mut s = String::new();
    if plan.dedicated {
        for (v, set) in &plan.vcpu_pins {
            if !seen.seen_vcpus.contains(v) {
                s += &format!(
                    "{indent}<vcpupin vcpu='{v}' cpuset='{}'/>",
                    format_spec(set)
                );
            }
        }
    }
    if !seen.seen_emulator && !plan.emulator.is_empty() {
        s += &format!(
            "{indent}<emulatorpin cpuset='{}'/>",
            format_spec(&plan.emulator)
        );
    }
    s
}

fn numatune_body(plan: &PinPlan, seen: &Scope, indent: &str) -> String {
    let mut s = String::new();
    if !seen.seen_memory {
        s += &format!(
            "{indent}<memory mode='strict' nodeset='{}'/>",
            plan.nodeset()
        );
    }
    for (c, h) in &plan.memnodes {
        if !seen.seen_memnodes.contains(c) {
            s += &format!("{indent}<memnode cellid='{c}' mode='strict' nodeset='{h}'/>");
        }
    }
    s
}

fn check_attrs(s: &BytesStart) -> Result<(), String> {
    for a in s.attributes() {
        let a = a.map_err(|e| format!("domain XML: malformed attribute: {e}"))?;
        a.unescape_value().map_err(|e| format!("domain XML: attribute cannot be decoded ({e}); only predefined entities are accepted"))?;
    }
    Ok(())
}

/// The text between `<` and `>` (or `/>`) of a start or empty tag.
fn tag_content(raw: &str, empty: bool) -> String {
    let inner = raw.strip_prefix('<').unwrap_or(raw);
    let inner = inner.strip_suffix('>').unwrap_or(inner);
    let inner = if empty {
        inner.strip_suffix('/').unwrap_or(inner)
    } else {
        inner
    };
    inner.to_string()
}

/// Attribute spans in a tag's content: (name, value start, value end) byte offsets, value
/// between its quotes. The name comes first, then `key = "value"` pairs.
fn attr_spans(content: &str) -> Vec<(String, usize, usize)> {
    let b = content.as_bytes();
    let mut i = 0;
    while i < b.len() && !b[i].is_ascii_whitespace() {
        i += 1;
    }
    let mut out = Vec::new();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = content[ks..i].to_string();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            break;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || (b[i] != b'"' && b[i] != b'\'') {
            break;
        }
        let q = b[i];
        i += 1;
        let vs = i;
        while i < b.len() && b[i] != q {
            i += 1;
        }
        out.push((key, vs, i));
        i += 1;
    }
    out
}

fn attr_value(content: &str, name: &str) -> Option<String> {
    attr_spans(content)
        .into_iter()
        .find(|(k, _, _)| k == name)
        .map(|(_, s, e)| content[s..e].to_string())
}

/// Replace an attribute's value in place (quotes and the rest untouched), or append it.
fn set_attr(content: &str, name: &str, value: &str) -> String {
    match attr_spans(content).into_iter().find(|(k, _, _)| k == name) {
        Some((_, s, e)) => format!("{}{}{}", &content[..s], value, &content[e..]),
        None => {
            let trimmed = content.trim_end();
            let tail = &content[trimmed.len()..];
            format!("{trimmed} {name}='{value}'{tail}")
        }
    }
}

/// The raw text of the first element at `path` (e.g. `["domain", "cpu"]`), tags included.
pub fn element_at(xml: &str, path: &[&str]) -> Option<String> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0usize;
    loop {
        let ev = reader.read_event().ok()?;
        let end = reader.buffer_position() as usize;
        let here = pos;
        pos = end;
        match ev {
            Event::Start(s) => {
                stack.push(String::from_utf8_lossy(s.name().as_ref()).into_owned());
                if start.is_none()
                    && stack.len() == path.len()
                    && stack.iter().zip(path).all(|(a, b)| a == b)
                {
                    start = Some(here);
                }
            }
            Event::Empty(s) => {
                let name = String::from_utf8_lossy(s.name().as_ref()).into_owned();
                if start.is_none()
                    && stack.len() + 1 == path.len()
                    && stack.iter().zip(path).all(|(a, b)| a == b)
                    && name == path[path.len() - 1]
                {
                    return Some(xml[here..end].to_string());
                }
            }
            Event::End(_) => {
                if stack.len() == path.len() {
                    if let Some(s0) = start {
                        return Some(xml[s0..end].to_string());
                    }
                }
                stack.pop();
            }
            Event::DocType(_) | Event::Eof => return None,
            _ => {}
        }
    }
}

/// The guest's `<cpu>` element (for `virConnectCompareCPU`).
pub fn child_element(domain_xml: &str, name: &str) -> Option<String> {
    element_at(domain_xml, &["domain", name])
}

/// The host's `<cpu>` from capabilities.
pub fn host_cpu_element(caps_xml: &str) -> Option<String> {
    element_at(caps_xml, &["capabilities", "host", "cpu"])
}

/// The changed lines of two XML texts, `-old`/`+new` (for messages and logs; Ansible renders its
/// own diff from `before`/`after`). Made by `model::diff`.
pub fn line_diff(before: &str, after: &str) -> Vec<String> {
    crate::model::diff::changed_lines(before, after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::domain::{fixtures::pinned, parse_guest};
    use crate::model::placement::{CellPlacement, Placement};

    fn placement(pins: &[u32], host_cell: u32, emulator: &[u32]) -> Placement {
        Placement {
            cells: vec![CellPlacement {
                guest_cell: 0,
                host_cell,
                vcpus: (0..pins.len() as u32).collect(),
                vcpu_pins: pins
                    .iter()
                    .enumerate()
                    .map(|(v, p)| (v.to_string(), *p))
                    .collect(),
                memory_mb: 64,
                pagesize_kb: None,
                cpuset_reserved: vec![],
                thread_policy: None,
            }],
            emulator_pins: emulator.to_vec(),
            dedicated: true,
        }
    }

    /// Remove every element/attribute the rewrite owns, by plain string surgery (independent of
    /// the code under test): what is left must be identical before and after.
    fn strip_owned(xml: &str) -> String {
        let mut s = xml.to_string();
        for tag in ["<vcpupin ", "<emulatorpin ", "<memnode ", "<memory mode="] {
            while let Some(i) = s.find(tag) {
                let j = s[i..].find("/>").map(|j| i + j + 2).unwrap();
                s.replace_range(i..j, "");
            }
        }
        s
    }

    const LAB_GUEST: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- a comment before the root -->
<domain type='qemu' xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">
  <name>vm-disk</name>
  <uuid>6c1a9e10-0000-4000-8000-000000000005</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.0">
      <nova:name>vm &amp; disk</nova:name>
      <nova:flavor name="pinned.2c64m"><nova:memory>64</nova:memory><nova:vcpus>2</nova:vcpus></nova:flavor>
    </nova:instance>
  </metadata>
  <memory unit='KiB'>65536</memory>
  <vcpu placement='static'>2</vcpu>
  <cputune>
    <shares>2048</shares>
    <vcpupin vcpu='0' cpuset='1'/>
    <vcpupin  vcpu="1"   cpuset="0" />
    <emulatorpin cpuset='0-1'/>
    <!-- keep me -->
    <vcpusched vcpus='0' scheduler='fifo' priority='1'/>
  </cputune>
  <numatune>
    <memory mode='strict' nodeset='0'/>
    <memnode cellid='0' mode='strict' nodeset='0'/>
  </numatune>
  <cpu mode='custom' match='exact' check='full'>
    <model fallback='forbid'>qemu64</model>
    <numa>
      <cell id='0' cpus='0-1' memory='65536' unit='KiB'/>
    </numa>
  </cpu>
  <devices>
    <disk type='file' device='disk'><source file='/var/lib/nova/instances/x/disk'/><target dev='vda'/></disk>
    <qemu:commandline><qemu:arg value='-S'/></qemu:commandline>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'><label><![CDATA[+0:+0]]></label></seclabel>
</domain>
"#;

    #[test]
    fn only_pinning_changes_byte_for_byte() {
        let p = placement(&[5, 7], 1, &[5, 7]);
        let out = rewrite(LAB_GUEST, &p).unwrap();
        assert_eq!(strip_owned(&out), strip_owned(LAB_GUEST));
        assert!(out.contains("<vcpupin vcpu='0' cpuset='5'/>"), "{out}");
        assert!(
            out.contains(r#"<vcpupin  vcpu="1"   cpuset="7" />"#),
            "{out}"
        );
        assert!(out.contains("<emulatorpin cpuset='5,7'/>"));
        assert!(out.contains("<memory mode='strict' nodeset='1'/>"));
        assert!(out.contains("<memnode cellid='0' mode='strict' nodeset='1'/>"));
        assert!(
            out.contains("<!-- keep me -->")
                && out.contains("<![CDATA[+0:+0]]>")
                && out.contains("vm &amp; disk")
        );
        let g = parse_guest(&out).unwrap();
        assert_eq!(g.vcpu_pins["0"], vec![5]);
        assert_eq!(g.vcpu_pins["1"], vec![7]);
        assert_eq!(g.emulator_pins, vec![5, 7]);
        assert_eq!(g.numa_cells[0].host_nodes, vec![1]);
        // line count unchanged, only the pinning lines differ
        let d = line_diff(LAB_GUEST, &out);
        assert_eq!(d.len(), 10, "{d:#?}");
        assert!(d.iter().all(|l| l.contains("pin") || l.contains("nodeset")));
    }

    #[test]
    fn idempotent() {
        let p = placement(&[5, 7], 1, &[5, 7]);
        let once = rewrite(LAB_GUEST, &p).unwrap();
        let twice = rewrite(&once, &p).unwrap();
        assert_eq!(once, twice);
        // and rewriting to the original pins gives back the original exactly
        let back = placement(&[1, 0], 0, &[0, 1]);
        assert_eq!(rewrite(&once, &back).unwrap(), LAB_GUEST);
    }

    #[test]
    fn nova_fixture_and_emulator_isolate() {
        let x = pinned("vm1", "u-1", &[2, 3], None, 1, 2048);
        let mut p = placement(&[0, 1], 0, &[6]);
        p.cells[0].cpuset_reserved = vec![6];
        let out = rewrite(&x, &p).unwrap();
        let g = parse_guest(&out).unwrap();
        assert_eq!(g.vcpu_pins["0"], vec![0]);
        assert_eq!(g.emulator_pins, vec![6]);
        assert_eq!(g.numa_cells[0].host_nodes, vec![0]);
        assert_eq!(strip_owned(&out), strip_owned(&x));
    }

    #[test]
    fn missing_elements_are_added() {
        let x = "<domain type='qemu'>\n  <name>n</name>\n  <memory unit='KiB'>65536</memory>\n  <vcpu placement='static'>2</vcpu>\n  <cputune>\n    <vcpupin vcpu='0' cpuset='1'/>\n  </cputune>\n  <cpu><numa><cell id='0' cpus='0-1' memory='65536' unit='KiB'/></numa></cpu>\n</domain>\n";
        let p = placement(&[3, 4], 0, &[3, 4]);
        let out = rewrite(x, &p).unwrap();
        assert!(out.contains("  <cputune>\n    <vcpupin vcpu='0' cpuset='3'/>\n    <vcpupin vcpu='1' cpuset='4'/>\n    <emulatorpin cpuset='3-4'/>\n  </cputune>\n"), "{out}");
        assert!(out.contains("  <numatune>\n    <memory mode='strict' nodeset='0'/>\n    <memnode cellid='0' mode='strict' nodeset='0'/>\n  </numatune>\n</domain>"), "{out}");
        let g = parse_guest(&out).unwrap();
        assert!(g.is_dedicated());
        assert_eq!(rewrite(&out, &p).unwrap(), out);
        // an empty <cputune/>
        let y = "<domain><name>n</name><memory>1024</memory><vcpu>1</vcpu><cputune/></domain>";
        let out = rewrite(y, &placement(&[2], 0, &[2])).unwrap();
        assert_eq!(parse_guest(&out).unwrap().vcpu_pins["0"], vec![2]);
        assert_eq!(rewrite(&out, &placement(&[2], 0, &[2])).unwrap(), out);
    }

    #[test]
    fn vcpu_cpuset_and_hugepages() {
        let x = "<domain><name>n</name><memory>1048576</memory><vcpu cpuset='0-3'>1</vcpu><memoryBacking><hugepages><page size='2048' unit='KiB' nodeset='0'/></hugepages></memoryBacking><cputune><vcpupin vcpu='0' cpuset='2'/></cputune></domain>";
        let mut p = placement(&[9], 0, &[9]);
        p.cells[0].pagesize_kb = Some(2048);
        let out = rewrite(x, &p).unwrap();
        assert!(out.contains("<vcpu cpuset='9'>1</vcpu>"));
        assert!(
            out.contains("<page size='2048' unit='KiB' nodeset='0'/>"),
            "guest-node nodeset stays"
        );
        p.cells[0].pagesize_kb = Some(1048576);
        assert!(rewrite(x, &p).unwrap_err().contains("page size"));
    }

    #[test]
    fn hostile_or_broken_input_is_refused() {
        let p = placement(&[1], 0, &[1]);
        assert!(rewrite(
            "<!DOCTYPE d [<!ENTITY a 'x'>]><domain><name>&a;</name></domain>",
            &p
        )
        .unwrap_err()
        .contains("DOCTYPE"));
        assert!(rewrite("<domain><name>&x;</name></domain>", &p)
            .unwrap_err()
            .contains("entities"));
        assert!(rewrite("<domain><cputune>", &p)
            .unwrap_err()
            .contains("truncated"));
        assert!(rewrite(
            "<domain><cputune><vcpupin vcpu='3' cpuset='1'/></cputune></domain>",
            &p
        )
        .unwrap_err()
        .contains("vCPU 3"));
    }

    #[test]
    fn element_extraction() {
        let cpu = child_element(LAB_GUEST, "cpu").unwrap();
        assert!(
            cpu.starts_with("<cpu mode='custom'") && cpu.ends_with("</cpu>"),
            "{cpu}"
        );
        assert_eq!(
            element_at("<a><b x='1'/></a>", &["a", "b"]).as_deref(),
            Some("<b x='1'/>")
        );
        assert!(child_element(LAB_GUEST, "nothere").is_none());
    }

    #[test]
    fn attr_scanner() {
        assert_eq!(
            set_attr("a x=\"cpuset='1'\" cpuset='2'", "cpuset", "9"),
            "a x=\"cpuset='1'\" cpuset='9'"
        );
        assert_eq!(set_attr("a x='1' ", "cpuset", "9"), "a x='1' cpuset='9' ");
        assert_eq!(attr_value("a  k = \"v\"", "k").as_deref(), Some("v"));
    }
}
