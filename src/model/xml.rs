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

/// Why a document is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum XmlError {
    #[error("XML document is {0} bytes, more than the {MAX_BYTES} accepted")]
    TooLarge(usize),
    #[error("malformed XML at byte {at}: {why}")]
    Malformed { at: u64, why: String },
    #[error("XML with a DOCTYPE (DTD/entity declarations) is refused: libvirt never emits one")]
    Doctype,
    #[error("XML nested deeper than {MAX_DEPTH} levels is refused")]
    TooDeep,
    #[error("malformed XML: {0}")]
    Structure(&'static str),
    #[error(
        "XML text cannot be decoded ({0}); entities other than the predefined five are refused"
    )]
    Text(String),
    #[error("malformed attribute in <{element}>: {why}")]
    Attribute { element: String, why: String },
    #[error("attribute {key} of <{element}> cannot be decoded ({why}); only predefined entities are accepted")]
    AttributeValue {
        element: String,
        key: String,
        why: String,
    },
    #[error("truncated XML: <{0}> is never closed")]
    Truncated(String),
    #[error("empty XML document")]
    Empty,
}

/// Parse a whole document into its root element.
pub fn parse(doc: &str) -> Result<Element, XmlError> {
    if doc.len() > MAX_BYTES {
        return Err(XmlError::TooLarge(doc.len()));
    }
    let mut reader = Reader::from_str(doc);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let ev = reader.read_event().map_err(|e| XmlError::Malformed {
            at: reader.buffer_position(),
            why: e.to_string(),
        })?;
        match ev {
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(XmlError::Structure("content after the root element"));
            }
            Event::Start(s) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
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
                let el = stack
                    .pop()
                    .ok_or(XmlError::Structure("unexpected closing tag"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let txt = t.unescape().map_err(|e| XmlError::Text(e.to_string()))?;
                if let Some(cur) = stack.last_mut() {
                    let trimmed = txt.trim();
                    if !trimmed.is_empty() {
                        cur.text.push_str(trimmed);
                    }
                } else if !txt.trim().is_empty() {
                    return Err(XmlError::Structure("text outside the root element"));
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
    if let Some(open) = stack.last() {
        return Err(XmlError::Truncated(open.name.clone()));
    }
    root.ok_or(XmlError::Empty)
}

fn element_of(s: &quick_xml::events::BytesStart) -> Result<Element, XmlError> {
    let name = String::from_utf8_lossy(s.name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for a in s.attributes() {
        let a = a.map_err(|e| XmlError::Attribute {
            element: name.clone(),
            why: e.to_string(),
        })?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let val = a
            .unescape_value()
            .map_err(|e| XmlError::AttributeValue {
                element: name.clone(),
                key: key.clone(),
                why: e.to_string(),
            })?
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
        assert_eq!(parse(bomb).unwrap_err(), XmlError::Doctype);
        let xxe = r#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>"#;
        assert!(parse(xxe).is_err());
        let e = parse("<x>&undeclared;</x>").unwrap_err();
        assert!(
            matches!(e, XmlError::Text(_)) && e.to_string().contains("entities"),
            "{e}"
        );
        let deep = "<a>".repeat(1000) + &"</a>".repeat(1000);
        assert_eq!(parse(&deep).unwrap_err(), XmlError::TooDeep);
    }

    #[test]
    fn truncated_and_empty() {
        assert_eq!(
            parse("<capabilities><host>").unwrap_err(),
            XmlError::Truncated("host".into())
        );
        assert_eq!(parse("").unwrap_err(), XmlError::Empty);
        assert!(parse("<a></b>").is_err());
        assert!(parse("<a/><b/>").is_err());
    }
}
