//! The result: per tree (or the one directory of `path`) what it holds and its status, and the
//! unified diff of each change for `--diff`.

use super::plan::{FilePlan, TreePlan};
use super::tree::NovaTree;
use super::Layout;
use crate::model::diff;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

impl TreePlan<'_> {
    pub(super) fn report(&self, restarted: bool) -> Map<String, Value> {
        let files: Map<String, Value> = self
            .files
            .iter()
            .map(|f| (f.rel.clone(), json!(f.status.to_string())))
            .collect();
        let mut m = Map::new();
        m.insert("nova_path".into(), json!(self.info.path));
        m.insert("python".into(), json!(self.info.interpreter));
        m.insert("python_version".into(), json!(self.info.python));
        m.insert("nova_version".into(), json!(self.info.version));
        m.insert("release".into(), json!(self.release));
        m.insert("files".into(), Value::Object(files));
        m.insert("status".into(), json!(self.status().to_string()));
        let hooks: Map<String, Value> = self
            .files
            .iter()
            .filter(|f| !f.hooks.is_empty())
            .map(|f| (f.rel.clone(), json!(f.hooks)))
            .collect();
        if !hooks.is_empty() {
            m.insert("hooks".into(), Value::Object(hooks));
        }
        if !self.refused.is_empty() {
            m.insert("refused".into(), json!(self.refused));
        }
        if self.tree.restartable() {
            m.insert("restarted".into(), json!(restarted));
        } else {
            m.insert("restart".into(), json!("not applicable"));
        }
        m
    }
}

pub(super) fn report_fields(
    layout: &Layout,
    plans: &[TreePlan],
    restarted: &BTreeSet<String>,
) -> Map<String, Value> {
    match layout {
        Layout::Containers { .. } => {
            let per: Map<String, Value> = plans
                .iter()
                .map(|p| {
                    (
                        p.name().to_string(),
                        Value::Object(p.report(restarted.contains(p.name()))),
                    )
                })
                .collect();
            let mut m = Map::new();
            m.insert("containers".into(), Value::Object(per));
            m
        }
        Layout::Path => plans
            .first()
            .map(|p| p.report(restarted.contains(p.name())))
            .unwrap_or_default(),
    }
}

/// A unified diff for `--diff` (`model::diff`); before/after texts when there is none.
pub(super) fn diff_of(tree: &dyn NovaTree, f: &FilePlan) -> Value {
    let before_h = tree.show(&f.path);
    let after_h = format!(
        "{} ({})",
        tree.show(&f.path),
        if f.target.is_some() {
            "after"
        } else {
            "removed"
        }
    );
    let before = String::from_utf8_lossy(f.current.as_deref().unwrap_or(b""));
    let after = String::from_utf8_lossy(f.target.as_deref().unwrap_or(b""));
    let text = diff::unified(&before, &after, &before_h, &after_h);
    if !text.is_empty() {
        return json!({"prepared": text});
    }
    json!({"before_header": before_h, "after_header": after_h,
           "before": before, "after": after})
}
