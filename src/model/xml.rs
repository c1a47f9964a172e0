//! A small, hostile-input-safe XML tree for the read paths (capabilities, domain XML).
//!
//! libvirt's XML never carries a DTD, so any `<!DOCTYPE` (the vehicle of entity bombs and
//! external entities) is refused outright; quick-xml expands no entities besides the five
//! predefined ones and character references, so an undeclared `&x;` is an error too.
//! Depth and size are bounded so a crafted document cannot exhaust the stack or memory.

use quick_xml::events::Event;
use quick_xml::Reader;

pub const MAX_DEPTH: usize = 128;
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Element {
    /// The qualified name as written (`vcpupin`, `nova:instance`).
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// Concatenated text content directly inside this element, trimmed.
    pub text: String,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
    /// Follow a `/`-separated path of child names.
    pub fn path(&self, path: &str) -> Option<&Element> {
        path.split('/').try_fold(self, |e, n| e.child(n))
    }
    /// Local name without a namespace prefix (`nova:instance` -> `instance`).
    pub fn local_name(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or(&self.name)
    }
    /// The attribute parsed as a number, with an error naming element and attribute.
    pub fn attr_num<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        match self.attr(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| format!("<{} {}='{}'>: not a valid number", self.name, name, v)),
        }
    }
    pub fn text_num<T: std::str::FromStr>(&self) -> Result<T, String> {
        self.text.trim().parse().map_err(|_| {
            format!(
                "<{}>{}</{}>: not a valid number",
                self.name, self.text, self.name
            )
        })
    }
}

/// Parse a whole document into its root element.
pub fn parse(doc: &str) -> Result<Element, String> {
    if doc.len() > MAX_BYTES {
        return Err(format!(
            "XML document is {} bytes, more than the {} accepted",
            doc.len(),
            MAX_BYTES
        ));
    }
    let mut reader = Reader::from_str(doc);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| format!("malformed XML at byte {}: {e}", reader.buffer_position()))?;
        match ev {
            Event::DocType(_) => return Err(
                "XML with a DOCTYPE (DTD/entity declarations) is refused: libvirt never emits one"
                    .into(),
            ),
            Event::Start(s) | Event::Empty(s) if root.is_some() => {
                let _ = s;
                return Err("malformed XML: content after the root element".into());
            }
            Event::Start(s) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!(
                        "XML nested deeper than {MAX_DEPTH} levels is refused"
                    ));
                }
                stack.push(element_of(&s)?);
            }
            Event::Empty(s) => {
                let el = element_of(&s)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or("malformed XML: unexpected closing tag")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let txt = t.unescape().map_err(|e| format!("XML text cannot be decoded ({e}); entities other than the predefined five are refused"))?;
                if let Some(cur) = stack.last_mut() {
                    let trimmed = txt.trim();
                    if !trimmed.is_empty() {
                        cur.text.push_str(trimmed);
                    }
                } else if !txt.trim().is_empty() {
                    return Err("malformed XML: text outside the root element".into());
                }
            }
            Event::CData(c) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&String::from_utf8_lossy(&c));
                }
            }
            Event::Eof => break,
            _ => {} // declarations, comments, processing instructions carry nothing we read
        }
    }
    if !stack.is_empty() {
        return Err(format!(
            "truncated XML: <{}> is never closed",
            stack.last().map(|e| e.name.as_str()).unwrap_or("?")
        ));
    }
    root.ok_or_else(|| "empty XML document".to_string())
}

fn element_of(s: &quick_xml::events::BytesStart) -> Result<Element, String> {
    let name = String::from_utf8_lossy(s.name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for a in s.attributes() {
        let a = a.map_err(|e| format!("malformed attribute in <{name}>: {e}"))?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let val = a
            .unescape_value()
            .map_err(|e| format!("attribute {key} of <{name}> cannot be decoded ({e}); only predefined entities are accepted"))?
            .into_owned();
        attrs.push((key, val));
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
        text: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_and_accessors() {
        let e = parse(
            r#"<?xml version="1.0"?><a x="1"><b>t &amp; u</b><b/><!-- c --><n:c y="&lt;"/></a>"#,
        )
        .unwrap();
        assert_eq!(e.attr("x"), Some("1"));
        assert_eq!(e.children("b").count(), 2);
        assert_eq!(e.child("b").unwrap().text, "t & u");
        assert_eq!(e.child("n:c").unwrap().local_name(), "c");
        assert_eq!(e.child("n:c").unwrap().attr("y"), Some("<"));
    }

    #[test]
    fn hostile_documents_are_refused() {
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><l>&b;</l>"#;
        assert!(parse(bomb).unwrap_err().contains("DOCTYPE"));
        let xxe = r#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>"#;
        assert!(parse(xxe).is_err());
        assert!(parse("<x>&undeclared;</x>")
            .unwrap_err()
            .contains("entities"));
        let deep = "<a>".repeat(1000) + &"</a>".repeat(1000);
        assert!(parse(&deep).unwrap_err().contains("deeper"));
    }

    #[test]
    fn truncated_and_empty() {
        assert!(parse("<capabilities><host>")
            .unwrap_err()
            .contains("truncated"));
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("<a></b>").is_err());
        assert!(parse("<a/><b/>").is_err());
    }
}
