//! An existing guest's CPU policies as Nova's database records them (libvirt's definition does
//! not say which thread policy a guest was placed with).
//!
//! Nova 19.3.2 stores them in three places, read here in this order:
//! - `instance_extra.numa_topology`: every InstanceNUMACell (1.3+) of a dedicated guest carries
//!   `cpu_policy: "dedicated"` and `cpu_thread_policy` (null: Nova's default, prefer), as
//!   `numa_get_constraints` set them when the guest was scheduled; the topology's
//!   `emulator_threads_policy` likewise. Rows written before 1.3, and shared guests, have none;
//! - `instance_extra.flavor`: `{"cur": <Flavor primitive>, "old": ..., "new": ...}`, the flavor
//!   the guest runs with, its `extra_specs` (`hw:cpu_policy`, `hw:cpu_thread_policy`,
//!   `hw:emulator_threads_policy`);
//! - `instance_system_metadata`: the image's properties, each as a row `image_<property>`
//!   (`image_hw_cpu_thread_policy`).
//!
//! The flavor and the image are combined by `fit::cpu_policies`, Nova's own rules (a flavor's
//! `prefer` or none lets the image choose; an image contradicting the flavor's other choice is
//! Nova's `ImageCPUThreadPolicyForbidden`).

use crate::fit::{cpu_policies, RequestError, ThreadPolicy};
use crate::nova::db::{scrub, DbCreds};
use mysql::prelude::Queryable;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Why a guest's rows do not tell its policies.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum PolicyError {
    #[error("instance_extra.{column} is not valid JSON ({why})")]
    NotJson { column: &'static str, why: String },
    #[error("instance_extra.{column} is not a Nova object as Nova writes it: {why}")]
    Shape {
        column: &'static str,
        why: &'static str,
    },
    #[error("instance_extra.numa_topology: cell {cell} has {field} {value:?}, not one Nova knows")]
    UnknownValue {
        cell: usize,
        field: &'static str,
        value: String,
    },
    #[error("instance_extra.numa_topology: its cells disagree on the CPU policies")]
    CellsDisagree,
    /// The flavor and image together are a request Nova refuses.
    #[error("the flavor and image properties: {0}")]
    Request(#[from] RequestError),
}

/// Where in Nova's DB the policies were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyOrigin {
    /// `instance_extra.numa_topology`'s cells: what the guest was placed with.
    NumaTopology,
    /// `instance_extra.flavor`'s extra specs with the image properties.
    FlavorImage,
}

/// A guest's CPU policies per Nova's DB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbPolicy {
    pub dedicated: bool,
    /// `None`: Nova's default, prefer (only meaningful when `dedicated`).
    pub thread_policy: Option<ThreadPolicy>,
    /// `None` when the row does not say (an old numa_topology row).
    pub emulator_isolate: Option<bool>,
    pub origin: PolicyOrigin,
}

fn parse(column: &'static str, text: &str) -> Result<Value, PolicyError> {
    serde_json::from_str(text).map_err(|e| PolicyError::NotJson {
        column,
        why: e.to_string(),
    })
}

fn data<'a>(v: &'a Value, column: &'static str) -> Result<&'a Map<String, Value>, PolicyError> {
    v.get("nova_object.data")
        .and_then(Value::as_object)
        .ok_or(PolicyError::Shape {
            column,
            why: "no nova_object.data",
        })
}

/// A string field, JSON null and absence alike `None`.
fn opt_str<'a>(d: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    d.get(k).and_then(Value::as_str)
}

/// The policies `instance_extra.numa_topology`'s cells record; `None` when they record none
/// (a shared guest, or cells written before InstanceNUMACell 1.3).
pub fn from_numa_topology(text: &str) -> Result<Option<DbPolicy>, PolicyError> {
    const COL: &str = "numa_topology";
    let doc = parse(COL, text)?;
    let top = data(&doc, COL)?;
    let cells = top
        .get("cells")
        .and_then(Value::as_array)
        .ok_or(PolicyError::Shape {
            column: COL,
            why: "InstanceNUMATopology without cells",
        })?;
    let mut seen: Option<(Option<&str>, Option<&str>)> = None;
    for (i, c) in cells.iter().enumerate() {
        let d = data(c, COL)?;
        let pair = (opt_str(d, "cpu_policy"), opt_str(d, "cpu_thread_policy"));
        if let Some(p) = pair.0.filter(|p| !["dedicated", "shared"].contains(p)) {
            return Err(PolicyError::UnknownValue {
                cell: i,
                field: "cpu_policy",
                value: p.into(),
            });
        }
        if let Some(t) = pair
            .1
            .filter(|t| !["prefer", "isolate", "require"].contains(t))
        {
            return Err(PolicyError::UnknownValue {
                cell: i,
                field: "cpu_thread_policy",
                value: t.into(),
            });
        }
        match seen {
            Some(s) if s != pair => return Err(PolicyError::CellsDisagree),
            _ => seen = Some(pair),
        }
    }
    let Some((Some(cpu_policy), thread)) = seen else {
        return Ok(None);
    };
    let dedicated = cpu_policy == "dedicated";
    Ok(Some(DbPolicy {
        dedicated,
        thread_policy: thread.filter(|_| dedicated).map(|t| match t {
            "isolate" => ThreadPolicy::Isolate,
            "require" => ThreadPolicy::Require,
            _ => ThreadPolicy::Prefer,
        }),
        // The field is there (null or a value) from InstanceNUMATopology 1.3 on.
        emulator_isolate: top
            .contains_key("emulator_threads_policy")
            .then(|| opt_str(top, "emulator_threads_policy") == Some("isolate")),
        origin: PolicyOrigin::NumaTopology,
    }))
}

/// The current flavor's extra specs from `instance_extra.flavor` (none: an empty map).
pub fn flavor_extra_specs(text: &str) -> Result<BTreeMap<String, Value>, PolicyError> {
    const COL: &str = "flavor";
    let doc = parse(COL, text)?;
    let cur = doc.get("cur").ok_or(PolicyError::Shape {
        column: COL,
        why: "no \"cur\" flavor",
    })?;
    Ok(data(cur, COL)?
        .get("extra_specs")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default())
}

/// The image properties from `instance_system_metadata` rows (key, value): `image_<property>`,
/// as Nova's `get_image_from_system_metadata` reads them (only the `hw_` ones matter here).
pub fn image_properties<'a>(
    rows: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> BTreeMap<String, Value> {
    rows.into_iter()
        .filter_map(|(k, v)| {
            let prop = k.strip_prefix("image_")?;
            prop.starts_with("hw_")
                .then(|| (prop.to_string(), v.map_or(Value::Null, |v| v.into())))
        })
        .collect()
}

/// A guest's policies from its rows: the numa_topology's cells first (what it was placed with),
/// else the flavor with the image. `None`: the rows do not say (no numa_topology policy and no
/// flavor).
pub fn guest_policy(
    numa_topology: Option<&str>,
    flavor: Option<&str>,
    image: &BTreeMap<String, Value>,
) -> Result<Option<DbPolicy>, PolicyError> {
    if let Some(p) = numa_topology.map(from_numa_topology).transpose()?.flatten() {
        return Ok(Some(p));
    }
    let Some(flavor) = flavor else {
        return Ok(None);
    };
    let p = cpu_policies(&flavor_extra_specs(flavor)?, image)?;
    Ok(Some(DbPolicy {
        dedicated: p.dedicated,
        thread_policy: p.thread_policy,
        emulator_isolate: Some(p.emulator_isolate),
        origin: PolicyOrigin::FlavorImage,
    }))
}

/// What Nova's DB says of each guest (by uuid) it has a live instance row for: its policies, or
/// why its rows do not tell them. A uuid Nova does not have is absent from the map.
pub type Policies = BTreeMap<String, Result<Option<DbPolicy>, PolicyError>>;

/// A query failed (the message scrubbed of the password).
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
#[error("reading {what} from Nova's database {who} failed: {why}")]
pub struct QueryError {
    pub what: &'static str,
    pub who: String,
    pub why: String,
}

/// Read the policies of these instances, in one read-only pass (a few queries per 500 guests).
pub fn read_policies(
    conn: &mut mysql::Conn,
    creds: &DbCreds,
    uuids: &[&str],
) -> Result<Policies, QueryError> {
    let err = |what: &'static str| {
        move |e: mysql::Error| QueryError {
            what,
            who: format!("{creds:?}"),
            why: scrub(&e.to_string(), &creds.password),
        }
    };
    let mut out = Policies::new();
    for chunk in uuids.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let rows: Vec<(String, Option<String>, Option<String>)> = conn
            .exec(
                format!("SELECT i.uuid, e.numa_topology, e.flavor FROM instances i JOIN instance_extra e ON e.instance_uuid = i.uuid WHERE i.deleted = 0 AND i.uuid IN ({marks})"),
                chunk.to_vec(),
            )
            .map_err(err("instance_extra"))?;
        // `_` in LIKE matches any character: `image_properties` checks the prefix exactly.
        let meta: Vec<(String, String, Option<String>)> = conn
            .exec(
                format!("SELECT instance_uuid, `key`, value FROM instance_system_metadata WHERE deleted = 0 AND `key` LIKE 'image_hw_%' AND instance_uuid IN ({marks})"),
                chunk.to_vec(),
            )
            .map_err(err("instance_system_metadata"))?;
        for (uuid, numa, flavor) in rows {
            let image = image_properties(
                meta.iter()
                    .filter(|(u, _, _)| *u == uuid)
                    .map(|(_, k, v)| (k.as_str(), v.as_deref())),
            );
            let p = guest_policy(numa.as_deref(), flavor.as_deref(), &image);
            out.insert(uuid, p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An InstanceNUMATopology row as Nova 19.3.2 writes it (InstanceNUMACell 1.4), with the
    /// cells' policies and the topology's emulator policy given.
    fn numa_row(cells: &[(Value, Value)], emulator: Value) -> String {
        let cells: Vec<Value> = cells
            .iter()
            .enumerate()
            .map(|(i, (pol, tp))| {
                json!({"nova_object.name": "InstanceNUMACell", "nova_object.namespace": "nova",
                    "nova_object.version": "1.4",
                    "nova_object.data": {"id": i, "cpuset": [0, 1], "memory": 1024, "pagesize": null,
                        "cpu_topology": null, "cpu_pinning_raw": {"0": 2, "1": 4},
                        "cpu_policy": pol, "cpu_thread_policy": tp, "cpuset_reserved": null},
                    "nova_object.changes": ["cpu_policy", "cpu_thread_policy"]})
            })
            .collect();
        json!({"nova_object.name": "InstanceNUMATopology", "nova_object.namespace": "nova",
            "nova_object.version": "1.3",
            "nova_object.data": {"cells": cells, "emulator_threads_policy": emulator},
            "nova_object.changes": ["cells", "emulator_threads_policy"]})
        .to_string()
    }

    /// A row written before InstanceNUMACell 1.3: no policy fields at all.
    fn old_numa_row() -> String {
        json!({"nova_object.name": "InstanceNUMATopology", "nova_object.namespace": "nova",
            "nova_object.version": "1.2",
            "nova_object.data": {"cells": [{"nova_object.name": "InstanceNUMACell",
                "nova_object.namespace": "nova", "nova_object.version": "1.2",
                "nova_object.data": {"id": 0, "cpuset": [0], "memory": 512, "pagesize": null,
                    "cpu_pinning_raw": {"0": 3}}}]}})
        .to_string()
    }

    /// `instance_extra.flavor` as Nova 19.3.2 saves it (`Instance._save_flavor`).
    fn flavor_row(extra_specs: Value) -> String {
        json!({"cur": {"nova_object.name": "Flavor", "nova_object.namespace": "nova",
                "nova_object.version": "1.2",
                "nova_object.data": {"id": 7, "name": "pinned.2c", "memory_mb": 1024, "vcpus": 2,
                    "root_gb": 1, "ephemeral_gb": 0, "flavorid": "p2", "swap": 0, "rxtx_factor": 1.0,
                    "vcpu_weight": 0, "disabled": false, "is_public": true,
                    "extra_specs": extra_specs, "description": null},
                "nova_object.changes": ["extra_specs"]},
            "old": null, "new": null})
        .to_string()
    }

    #[test]
    fn numa_topology_cells_tell_the_policy() {
        let row = numa_row(
            &[
                (json!("dedicated"), json!("isolate")),
                (json!("dedicated"), json!("isolate")),
            ],
            json!("isolate"),
        );
        assert_eq!(
            from_numa_topology(&row).unwrap(),
            Some(DbPolicy {
                dedicated: true,
                thread_policy: Some(ThreadPolicy::Isolate),
                emulator_isolate: Some(true),
                origin: PolicyOrigin::NumaTopology,
            })
        );
        // null thread policy: Nova's default, prefer; null emulator policy: share.
        let row = numa_row(&[(json!("dedicated"), Value::Null)], Value::Null);
        let p = from_numa_topology(&row).unwrap().unwrap();
        assert_eq!((p.thread_policy, p.emulator_isolate), (None, Some(false)));
        // A shared guest with a NUMA topology and an old row say nothing.
        let row = numa_row(&[(Value::Null, Value::Null)], Value::Null);
        assert_eq!(from_numa_topology(&row).unwrap(), None);
        assert_eq!(from_numa_topology(&old_numa_row()).unwrap(), None);
    }

    #[test]
    fn numa_topology_rows_nova_would_not_write_are_errors() {
        let row = numa_row(
            &[
                (json!("dedicated"), json!("isolate")),
                (json!("dedicated"), json!("require")),
            ],
            Value::Null,
        );
        assert_eq!(from_numa_topology(&row), Err(PolicyError::CellsDisagree));
        let row = numa_row(&[(json!("dedicated"), json!("sometimes"))], Value::Null);
        assert_eq!(
            from_numa_topology(&row).unwrap_err().to_string(),
            "instance_extra.numa_topology: cell 0 has cpu_thread_policy \"sometimes\", not one Nova knows"
        );
        assert!(matches!(
            from_numa_topology("{"),
            Err(PolicyError::NotJson { .. })
        ));
        assert!(matches!(
            from_numa_topology("{\"nova_object.name\": \"X\"}"),
            Err(PolicyError::Shape { .. })
        ));
    }

    #[test]
    fn flavor_and_image_when_the_cells_do_not_say() {
        let flavor = flavor_row(json!({"hw:cpu_policy": "dedicated"}));
        let image = image_properties([
            ("image_hw_cpu_thread_policy", Some("require")),
            ("image_min_ram", Some("0")),
            ("image_base_image_ref", Some("x")),
        ]);
        assert_eq!(image.len(), 1);
        let p = guest_policy(Some(&old_numa_row()), Some(&flavor), &image)
            .unwrap()
            .unwrap();
        assert_eq!(
            p,
            DbPolicy {
                dedicated: true,
                thread_policy: Some(ThreadPolicy::Require),
                emulator_isolate: Some(false),
                origin: PolicyOrigin::FlavorImage,
            }
        );
        // The cells win over the flavor: they are what the guest was placed with.
        let numa = numa_row(&[(json!("dedicated"), json!("isolate"))], Value::Null);
        let p = guest_policy(Some(&numa), Some(&flavor), &image)
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.thread_policy, p.origin),
            (Some(ThreadPolicy::Isolate), PolicyOrigin::NumaTopology)
        );
        // A flavor's isolate against the image's require: Nova's own refusal.
        let flavor = flavor_row(json!({"hw:cpu_policy": "dedicated",
            "hw:cpu_thread_policy": "isolate"}));
        let e = guest_policy(None, Some(&flavor), &image).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the flavor and image properties: ImageCPUThreadPolicyForbidden"),
            "{e}"
        );
        // No extra specs, no image: a shared guest.
        let p = guest_policy(None, Some(&flavor_row(json!({}))), &BTreeMap::new())
            .unwrap()
            .unwrap();
        assert!(!p.dedicated);
        assert_eq!(guest_policy(None, None, &BTreeMap::new()), Ok(None));
        assert!(matches!(
            flavor_extra_specs("{\"old\": null}"),
            Err(PolicyError::Shape { .. })
        ));
    }
}
