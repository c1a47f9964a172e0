//! Rows the running Nova cannot load (the audit's Nova rows check), repaired where that needs
//! no guessing.

use super::plan::Plan;
use super::tx::{check_uuid, sql_err};
use crate::nova::db::DbCreds;
use crate::nova::numa_json::{self};
use anyhow::Result;
use mysql::prelude::Queryable;
use serde_json::{json, Value};

/// A DB row the running Nova could not load, as its own objects said (the audit's Nova rows
/// check): `table` and `key` (instance uuid, or compute node name) and Nova's error.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
pub struct UnloadableRow {
    pub table: String,
    pub key: String,
    #[serde(default)]
    pub error: String,
}

/// Plan the repair of a row the running Nova cannot load, or say why it is not repaired. Only
/// what can be repaired without guessing is: an instance's `numa_topology` whose InstanceNUMACell
/// is newer than the release supports ("Version 1.5 of InstanceNUMACell is not supported,
/// supported version is 1.4"), rewritten as Nova's own `obj_make_compatible` would. A compute
/// node row is rewritten by that host's nova-compute at its next periodic update.
pub fn plan_row_repair(
    tx: &mut mysql::Transaction,
    creds: &DbCreds,
    row: &UnloadableRow,
    lock: bool,
) -> Result<std::result::Result<Plan, String>> {
    if row.table != "instance_extra" {
        return Ok(Err(format!("{} rows are rewritten by the host's nova-compute at its next periodic update; not touched", row.table)));
    }
    let Some(target) = supported_cell_version(&row.error) else {
        return Ok(Err(format!(
            "not a version Nova can convert ({}); repair by hand",
            row.error
        )));
    };
    check_uuid(&row.key)?;
    let for_update = if lock { " FOR UPDATE" } else { "" };
    let text: Option<Option<String>> = tx
        .exec_first(
            format!("SELECT numa_topology FROM instance_extra WHERE instance_uuid = ? AND deleted = 0{for_update}"),
            (&row.key,),
        )
        .map_err(|e| sql_err(e, "reading instance_extra", creds))?;
    let Some(Some(text)) = text else {
        return Ok(Err("no numa_topology in instance_extra any more".into()));
    };
    let mut doc: Value = match serde_json::from_str(&text) {
        Ok(d) => d,
        Err(e) => return Ok(Err(format!("not JSON ({e}); repair by hand"))),
    };
    let before = doc.clone();
    match numa_json::downgrade_instance_cells(&mut doc, &target) {
        Ok(false) => {
            return Ok(Err(format!(
                "its cells are InstanceNUMACell {target} already"
            )))
        }
        Err(e) => return Ok(Err(e)),
        Ok(true) => {}
    }
    let mut p = Plan {
        changed: true,
        before: json!({"numa_topology": before}),
        after: json!({"numa_topology": doc}),
        steps: vec![format!("instance_extra.numa_topology of {} rewritten as InstanceNUMACell {target}, the version this Nova loads", row.key)],
        ..Plan::default()
    };
    p.writes.push((
        "UPDATE instance_extra SET numa_topology = ?, updated_at = UTC_TIMESTAMP() WHERE instance_uuid = ?".into(),
        (numa_json::to_nova_json(&doc), &row.key).into(),
    ));
    Ok(Ok(p))
}

/// The InstanceNUMACell version Nova says it supports, from its refusal of a newer one.
pub(super) fn supported_cell_version(error: &str) -> Option<String> {
    if !error.contains("of InstanceNUMACell is not supported") {
        return None;
    }
    let v = error.rsplit("supported version is ").next()?;
    let v: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let v = v.trim_end_matches('.').to_string();
    (v.split('.').count() == 2 && v.split('.').all(|x| !x.is_empty())).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_nova_supports_is_read_from_its_refusal() {
        let e = "IncompatibleObjectVersion: Version 1.5 of InstanceNUMACell is not supported, supported version is 1.4";
        assert_eq!(supported_cell_version(e).as_deref(), Some("1.4"));
        assert_eq!(
            supported_cell_version("ValueError: Expecting value: line 1"),
            None
        );
        assert_eq!(
            supported_cell_version(
                "Version 1.5 of InstanceNUMACell is not supported, supported version is 1."
            ),
            None
        );
    }
}
