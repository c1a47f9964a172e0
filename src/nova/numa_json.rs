//! Nova's stored `numa_topology` JSON (docs/design.md §5, Nova's stored formats), edited in place.
//!
//! The documents are Nova object primitives (`nova_object.name/namespace/version/data`, and
//! `nova_object.changes`). We work on `serde_json::Value` and touch only the fields a repin
//! changes, so object versions, unknown fields and field order survive byte-for-byte in meaning.
//! - `instance_extra.numa_topology`: InstanceNUMATopology 1.3 with InstanceNUMACell cells;
//!   1.4 (Queens..Ussuri) keeps pinned vCPUs in `cpuset` and `cpu_pinning_raw` (string keys);
//!   1.5/1.6 (Victoria+; Victoria writes 1.6) keep them in `pcpuset`, and `cpuset` holds only
//!   the shared vCPUs, the only ones Victoria's accounting counts in the node's `cpu_usage`.
//! - `compute_nodes.numa_topology`: NUMATopology with NUMACell cells (`pinned_cpus`,
//!   `cpu_usage`, `memory_usage`, `mempages[].used`).

use crate::fit::CellPlacement;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Serialize the way Nova's `jsonutils.dumps` (Python's json) does: `", "` and `": "`
/// separators, so a rewritten row looks like the ones Nova writes.
pub fn to_nova_json(v: &Value) -> String {
    struct PyStyle;
    // Python puts ", " between items and keys alike.
    fn comma<W: ?Sized + std::io::Write>(w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    impl serde_json::ser::Formatter for PyStyle {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            comma(w, first)
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            comma(w, first)
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
        ) -> std::io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyStyle);
    // Serializing a Value into memory cannot fail.
    let _ = serde::Serialize::serialize(v, &mut ser);
    String::from_utf8(out).unwrap_or_default()
}

/// The pinning an instance cell records: host cell id, vCPU -> pCPU, reserved pCPUs, memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellPins {
    pub host_cell: u32,
    pub pins: BTreeMap<u32, u32>,
    pub reserved: BTreeSet<u32>,
    pub memory_mb: u64,
    pub pagesize_kb: Option<u64>,
    /// vCPUs of the cell (`cpuset` plus Victoria's `pcpuset`).
    pub vcpus: usize,
    /// Victoria+ layout (InstanceNUMACell 1.5+, the cell has `pcpuset`): `cpuset` holds only the
    /// shared (unpinned) vCPUs, and only those count in the node's `cpu_usage`
    /// (`shared_cpus_usage` in Victoria's `numa_usage_from_instance_numa`); a pinned vCPU, an
    /// isolated sibling or an emulator thread's pCPU is in `pinned_cpus` alone.
    /// `None`: Stein..Ussuri layout, where every vCPU (times the siblings with `isolate`) and the
    /// reserved emulator pCPUs count.
    pub shared_vcpus: Option<usize>,
    /// `cpu_thread_policy: isolate`: Nova pins (and counts) each pCPU's whole sibling set.
    pub isolate: bool,
}

fn data<'a>(obj: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    obj.get("nova_object.data")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{what}: not a Nova object primitive (no nova_object.data)"))
}

fn data_mut<'a>(obj: &'a mut Value, what: &str) -> Result<&'a mut Map<String, Value>, String> {
    obj.get_mut("nova_object.data")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("{what}: not a Nova object primitive (no nova_object.data)"))
}

fn ints(v: Option<&Value>) -> BTreeSet<u32> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// Parse an `instance_extra.numa_topology` text into its cells' pinning.
pub fn instance_cells(text: &str) -> Result<(Value, Vec<CellPins>), String> {
    let doc: Value = serde_json::from_str(text)
        .map_err(|e| format!("instance numa_topology is not valid JSON ({e})"))?;
    if doc.get("nova_object.name").and_then(Value::as_str) != Some("InstanceNUMATopology") {
        return Err("instance numa_topology is not an InstanceNUMATopology object".into());
    }
    let cells = data(&doc, "InstanceNUMATopology")?
        .get("cells")
        .and_then(Value::as_array)
        .ok_or("InstanceNUMATopology without cells")?;
    let mut out = Vec::new();
    for (i, c) in cells.iter().enumerate() {
        let d = data(c, &format!("InstanceNUMACell {i}"))?;
        let host_cell = d
            .get("id")
            .and_then(Value::as_u64)
            .ok_or(format!("InstanceNUMACell {i} without id"))? as u32;
        let mut pins = BTreeMap::new();
        if let Some(raw) = d.get("cpu_pinning_raw").and_then(Value::as_object) {
            for (k, v) in raw {
                let vcpu: u32 = k.parse().map_err(|_| {
                    format!("InstanceNUMACell {i}: cpu_pinning_raw key {k:?} is not a vCPU number")
                })?;
                let pcpu = v.as_u64().ok_or(format!(
                    "InstanceNUMACell {i}: cpu_pinning_raw value for {k} is not a pCPU number"
                ))? as u32;
                pins.insert(vcpu, pcpu);
            }
        }
        out.push(CellPins {
            host_cell,
            pins,
            reserved: ints(d.get("cpuset_reserved")),
            memory_mb: d.get("memory").and_then(Value::as_u64).unwrap_or(0),
            pagesize_kb: d.get("pagesize").and_then(Value::as_u64),
            vcpus: ints(d.get("cpuset")).len() + ints(d.get("pcpuset")).len(),
            shared_vcpus: d
                .contains_key("pcpuset")
                .then(|| ints(d.get("cpuset")).len()),
            isolate: d.get("cpu_thread_policy").and_then(Value::as_str) == Some("isolate"),
        });
    }
    Ok((doc, out))
}

/// Rewrite the cells of an instance topology for a placement (guest cell i <- placement cell
/// with guest_cell == i, else the i-th). Only `id`, `cpu_pinning_raw` and `cpuset_reserved`
/// change; a cell's vCPU sets (`cpuset` / `pcpuset`) stay as they are.
pub fn set_instance_cells(doc: &mut Value, cells: &[CellPlacement]) -> Result<(), String> {
    let arr = data_mut(doc, "InstanceNUMATopology")?
        .get_mut("cells")
        .and_then(Value::as_array_mut)
        .ok_or("InstanceNUMATopology without cells")?;
    if arr.len() != cells.len() {
        return Err(format!(
            "the instance has {} NUMA cells in Nova's DB, the placement {}",
            arr.len(),
            cells.len()
        ));
    }
    for (i, c) in arr.iter_mut().enumerate() {
        let p = cells
            .iter()
            .find(|p| p.guest_cell as usize == i)
            .unwrap_or(&cells[i]);
        let d = data_mut(c, &format!("InstanceNUMACell {i}"))?;
        d.insert("id".into(), json!(p.host_cell));
        if d.contains_key("cpu_pinning_raw") || !p.vcpu_pins.is_empty() {
            let raw: Map<String, Value> = p
                .vcpu_pins
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            d.insert(
                "cpu_pinning_raw".into(),
                if raw.is_empty() {
                    Value::Null
                } else {
                    Value::Object(raw)
                },
            );
        }
        if d.contains_key("cpuset_reserved") || !p.cpuset_reserved.is_empty() {
            d.insert(
                "cpuset_reserved".into(),
                if p.cpuset_reserved.is_empty() {
                    Value::Null
                } else {
                    json!(p.cpuset_reserved)
                },
            );
        }
    }
    Ok(())
}

/// Recompute a compute node's usage from every instance on it, as Nova's resource tracker
/// does (`hardware.numa_usage_from_instances` over a fresh host topology): `pinned_cpus`,
/// `cpu_usage`, `memory_usage` and the used pages of page-sized cells, from zero. Subtracting
/// one guest's pins instead would drop a pCPU another guest still holds.
///
/// Returns what Nova's own accounting would refuse (a pCPU pinned twice: `CPUPinningInvalid`;
/// a pCPU outside its cell: `CPUPinningUnknown`; an instance cell on no node cell). The usage is
/// still written as the union of the pins, so the caller decides whether to go on.
pub fn usage_from_instances(
    doc: &mut Value,
    instances: &[(String, Vec<CellPins>)],
) -> Result<Vec<String>, String> {
    let node_cells = data_mut(doc, "NUMATopology")?
        .get_mut("cells")
        .and_then(Value::as_array_mut)
        .ok_or("NUMATopology without cells")?;
    let mut problems = Vec::new();
    for (uuid, cells) in instances {
        for c in cells {
            let known = node_cells.iter().any(|nc| cell_id(nc) == Some(c.host_cell));
            if !known {
                problems.push(format!(
                    "instance {uuid} is on NUMA cell {}, which the compute node does not have",
                    c.host_cell
                ));
            }
        }
    }
    for nc in node_cells.iter_mut() {
        let id = cell_id(nc);
        recount_cell(data_mut(nc, "NUMACell")?, id, instances, &mut problems);
    }
    Ok(problems)
}

/// One node cell's `pinned_cpus`, `cpu_usage`, `memory_usage` and used pages, from zero, from the
/// instance cells on it; what Nova would refuse goes to `problems`.
fn recount_cell(
    d: &mut serde_json::Map<String, Value>,
    id: Option<u32>,
    instances: &[(String, Vec<CellPins>)],
    problems: &mut Vec<String>,
) {
    let cpuset = ints(d.get("cpuset"))
        .union(&ints(d.get("pcpuset")))
        .copied()
        .collect::<BTreeSet<u32>>();
    let siblings: Vec<BTreeSet<u32>> = d
        .get("siblings")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|s| ints(Some(s))).collect())
        .unwrap_or_default();
    let widest = siblings.iter().map(BTreeSet::len).max().unwrap_or(1).max(1);
    let smallest = d.get("mempages").and_then(Value::as_array).and_then(|a| {
        a.iter()
            .filter_map(|p| p.get("nova_object.data")?.get("size_kb")?.as_u64())
            .filter(|s| *s > 0)
            .min()
    });
    let mut pinned = BTreeSet::new();
    let (mut cpu_usage, mut memory_usage) = (0u64, 0u64);
    let mut pages: BTreeMap<u64, u64> = BTreeMap::new();
    for (uuid, cells) in instances {
        for c in cells.iter().filter(|c| Some(c.host_cell) == id) {
            if let Some(shared) = c.shared_vcpus {
                cpu_usage += shared as u64;
            } else {
                let vcpus = c.vcpus.max(c.pins.len()) as u64;
                cpu_usage += if c.isolate && !siblings.is_empty() {
                    vcpus * widest as u64
                } else {
                    vcpus
                };
                cpu_usage += c.reserved.len() as u64;
            }
            memory_usage = memory_usage.saturating_add(c.memory_mb);
            // A cell without a page size takes the smallest pages (Nova's
            // `_numa_pagesize_usage_from_cell`).
            if let Some(size) = c.pagesize_kb.filter(|s| *s > 0).or(smallest) {
                *pages.entry(size).or_default() += c.memory_mb.saturating_mul(1024) / size;
            }
            let mut want: BTreeSet<u32> = c.pins.values().chain(&c.reserved).copied().collect();
            if c.isolate {
                for cpu in want.clone() {
                    if let Some(s) = siblings.iter().find(|s| s.contains(&cpu)) {
                        want.extend(s);
                    }
                }
            }
            let id = c.host_cell;
            let unknown: Vec<u32> = want.difference(&cpuset).copied().collect();
            if !unknown.is_empty() {
                problems.push(format!(
                    "instance {uuid} pins pCPUs {unknown:?}, which are not in NUMA cell {id}"
                ));
            }
            let twice: Vec<u32> = want.intersection(&pinned).copied().collect();
            if !twice.is_empty() {
                problems.push(format!("instance {uuid} pins pCPUs {twice:?} of NUMA cell {id}, which another instance on the node already pins"));
            }
            pinned.extend(want);
        }
    }
    d.insert("pinned_cpus".into(), json!(pinned));
    d.insert("cpu_usage".into(), json!(cpu_usage));
    d.insert("memory_usage".into(), json!(memory_usage));
    if let Some(mp) = d.get_mut("mempages").and_then(Value::as_array_mut) {
        for p in mp.iter_mut() {
            if let Some(pd) = p.get_mut("nova_object.data").and_then(Value::as_object_mut) {
                let size = pd.get("size_kb").and_then(Value::as_u64).unwrap_or(0);
                pd.insert("used".into(), json!(pages.get(&size).copied().unwrap_or(0)));
            }
        }
    }
}

fn cell_id(nc: &Value) -> Option<u32> {
    nc.get("nova_object.data")
        .and_then(|d| d.get("id"))
        .and_then(Value::as_u64)
        .map(|x| x as u32)
}

/// `(major, minor)` of an object version string ("1.5").
fn version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Rewrite an instance's `numa_topology` so that an older release loads it: every
/// InstanceNUMACell newer than `target` ("1.4" for Queens..Ussuri) becomes that version the way
/// Nova's own `InstanceNUMACell.obj_make_compatible` (Victoria) does it: below 1.6 a `mixed`
/// policy cell cannot be represented (refused); below 1.5 a dedicated cell's `pcpuset` becomes
/// its `cpuset` and `pcpuset` goes; below 1.4 `cpuset_reserved` goes; below 1.3 the CPU
/// policies go. Returns whether anything changed; on an error nothing is.
pub fn downgrade_instance_cells(doc: &mut Value, target: &str) -> Result<bool, String> {
    let t = version(target).ok_or_else(|| format!("{target:?} is not an object version"))?;
    let mut out = doc.clone();
    let mut changed = false;
    let cells = data_mut(&mut out, "InstanceNUMATopology")?
        .get_mut("cells")
        .and_then(Value::as_array_mut)
        .ok_or("InstanceNUMATopology has no cells")?;
    for (i, cell) in cells.iter_mut().enumerate() {
        let v = cell
            .get("nova_object.version")
            .and_then(Value::as_str)
            .and_then(version)
            .ok_or(format!("cell {i} has no object version"))?;
        if v <= t {
            continue;
        }
        let d = data_mut(cell, "InstanceNUMACell")?;
        let policy = d
            .get("cpu_policy")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if t < (1, 6) && policy == "mixed" {
            return Err(format!(
                "cell {i} has cpu_policy mixed, which InstanceNUMACell {target} cannot hold"
            ));
        }
        if t < (1, 5) {
            let pcpus = d.remove("pcpuset");
            if policy == "dedicated" {
                d.insert("cpuset".into(), pcpus.unwrap_or(Value::Array(vec![])));
            }
        }
        if t < (1, 4) {
            d.remove("cpuset_reserved");
        }
        if t < (1, 3) {
            d.remove("cpu_policy");
            d.remove("cpu_thread_policy");
        }
        cell["nova_object.version"] = Value::String(target.to_string());
        changed = true;
    }
    *doc = out;
    Ok(changed)
}

/// The pinning a placement asks for, in the shape stored pinning is read into.
pub fn cells_of_placement(cells: &[CellPlacement]) -> Vec<CellPins> {
    cells
        .iter()
        .map(|c| CellPins {
            host_cell: c.host_cell,
            pins: c
                .vcpu_pins
                .iter()
                .filter_map(|(k, v)| k.parse().ok().map(|k| (k, *v)))
                .collect(),
            reserved: c.cpuset_reserved.iter().copied().collect(),
            memory_mb: c.memory_mb,
            pagesize_kb: c.pagesize_kb,
            vcpus: c.vcpus.len(),
            shared_vcpus: None,
            isolate: c.thread_policy == Some(crate::fit::ThreadPolicy::Isolate),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEIN: &str = r#"{"nova_object.name":"InstanceNUMATopology","nova_object.namespace":"nova","nova_object.version":"1.3","nova_object.data":{"cells":[{"nova_object.name":"InstanceNUMACell","nova_object.namespace":"nova","nova_object.version":"1.4","nova_object.data":{"id":0,"cpuset":[0,1],"cpuset_reserved":null,"memory":2048,"pagesize":null,"cpu_topology":{"nova_object.name":"VirtCPUTopology","nova_object.namespace":"nova","nova_object.version":"1.0","nova_object.data":{"sockets":1,"cores":2,"threads":1}},"cpu_pinning_raw":{"0":2,"1":3},"cpu_policy":"dedicated","cpu_thread_policy":null,"future_field":"kept"}}],"emulator_threads_policy":null}}"#;
    const VICTORIA: &str = r#"{"nova_object.name":"InstanceNUMATopology","nova_object.namespace":"nova","nova_object.version":"1.3","nova_object.data":{"cells":[{"nova_object.name":"InstanceNUMACell","nova_object.namespace":"nova","nova_object.version":"1.5","nova_object.data":{"id":1,"cpuset":[],"pcpuset":[0],"cpuset_reserved":[9],"memory":64,"pagesize":2048,"cpu_pinning_raw":{"0":8},"cpu_policy":"dedicated","cpu_thread_policy":null}}],"emulator_threads_policy":"isolate"},"nova_object.changes":["cells"]}"#;
    const NODE: &str = r#"{"nova_object.name":"NUMATopology","nova_object.namespace":"nova","nova_object.version":"1.2","nova_object.data":{"cells":[{"nova_object.name":"NUMACell","nova_object.namespace":"nova","nova_object.version":"1.3","nova_object.data":{"id":0,"cpuset":[0,1,2,3],"memory":4096,"cpu_usage":2,"memory_usage":2048,"pinned_cpus":[2,3],"siblings":[[0],[1],[2],[3]],"mempages":[{"nova_object.name":"NUMAPagesTopology","nova_object.namespace":"nova","nova_object.version":"1.1","nova_object.data":{"size_kb":4,"total":1048576,"used":0,"reserved":0}}],"network_metadata":{"nova_object.name":"NetworkMetadata","nova_object.namespace":"nova","nova_object.version":"1.0","nova_object.data":{"physnets":[],"tunneled":false}}}}]}}"#;

    fn place(host_cell: u32, pins: &[(u32, u32)], reserved: &[u32], mem: u64) -> CellPlacement {
        CellPlacement {
            guest_cell: 0,
            host_cell,
            vcpus: pins.iter().map(|p| p.0).collect(),
            vcpu_pins: pins.iter().map(|(v, p)| (v.to_string(), *p)).collect(),
            memory_mb: mem,
            pagesize_kb: None,
            cpuset_reserved: reserved.to_vec(),
            thread_policy: None,
        }
    }

    #[test]
    fn stein_round_trip_changes_only_pinning() {
        let (mut doc, cells) = instance_cells(STEIN).unwrap();
        assert_eq!(cells[0].pins, [(0, 2), (1, 3)].into_iter().collect());
        let orig = doc.clone();
        set_instance_cells(&mut doc, &[place(1, &[(0, 0), (1, 1)], &[], 2048)]).unwrap();
        let d = &doc["nova_object.data"]["cells"][0]["nova_object.data"];
        assert_eq!(d["id"], 1);
        assert_eq!(d["cpu_pinning_raw"], json!({"0": 0, "1": 1}));
        assert_eq!(d["cpuset"], json!([0, 1]));
        assert_eq!(d["future_field"], "kept");
        assert_eq!(
            doc["nova_object.data"]["cells"][0]["nova_object.version"],
            "1.4"
        );
        // everything else equal
        let mut back = doc.clone();
        set_instance_cells(&mut back, &[place(0, &[(0, 2), (1, 3)], &[], 2048)]).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn victoria_keeps_pcpuset_and_reserved() {
        let (mut doc, cells) = instance_cells(VICTORIA).unwrap();
        assert_eq!(cells[0].reserved, [9].into_iter().collect());
        assert_eq!(cells[0].pagesize_kb, Some(2048));
        set_instance_cells(&mut doc, &[place(0, &[(0, 1)], &[2], 64)]).unwrap();
        let d = &doc["nova_object.data"]["cells"][0]["nova_object.data"];
        assert_eq!(
            (
                d["id"].clone(),
                d["pcpuset"].clone(),
                d["cpuset_reserved"].clone()
            ),
            (json!(0), json!([0]), json!([2]))
        );
        assert_eq!(doc["nova_object.changes"], json!(["cells"]));
    }

    #[test]
    fn victoria_cells_count_only_shared_vcpus_in_cpu_usage() {
        // Victoria's numa_usage_from_instance_numa: cpu_usage += len(cpuset) (the shared vCPUs);
        // pinned vCPUs (pcpuset) and the emulator's reserved pCPU only go to pinned_cpus.
        let text = NODE.replace(
            r#""cpuset":[0,1,2,3],"#,
            r#""cpuset":[],"pcpuset":[0,1,2,3],"#,
        );
        let mut node: Value = serde_json::from_str(&text).unwrap();
        let mut victoria = VICTORIA.replace(r#""pcpuset":[0]"#, r#""pcpuset":[0,1]"#);
        victoria = victoria.replace(
            r#""cpu_pinning_raw":{"0":8}"#,
            r#""cpu_pinning_raw":{"0":0,"1":1}"#,
        );
        victoria = victoria
            .replace(r#""id":1,"#, r#""id":0,"#)
            .replace(r#""cpuset_reserved":[9]"#, r#""cpuset_reserved":[2]"#);
        let (_, cells) = instance_cells(&victoria).unwrap();
        assert_eq!(cells[0].shared_vcpus, Some(0));
        let (_, stein) = instance_cells(STEIN).unwrap();
        assert_eq!(stein[0].shared_vcpus, None);
        assert!(usage_from_instances(&mut node, &[("v".into(), cells)])
            .unwrap()
            .is_empty());
        let d = node_cell(&node);
        assert_eq!(d["pinned_cpus"], json!([0, 1, 2]));
        assert_eq!(
            (d["cpu_usage"].clone(), d["memory_usage"].clone()),
            (json!(0), json!(64))
        );
        // a mixed-policy cell (InstanceNUMACell 1.6): its shared vCPUs in cpuset count
        let mixed = victoria.replace(r#""cpuset":[]"#, r#""cpuset":[2,3]"#);
        let (_, cells) = instance_cells(&mixed).unwrap();
        usage_from_instances(&mut node, &[("m".into(), cells)]).unwrap();
        assert_eq!(node_cell(&node)["cpu_usage"], json!(2));
    }

    #[test]
    fn victoria_cells_downgrade_as_novas_obj_make_compatible() {
        let mut doc: Value = serde_json::from_str(VICTORIA).unwrap();
        assert!(downgrade_instance_cells(&mut doc, "1.4").unwrap());
        let cell = &doc["nova_object.data"]["cells"][0];
        assert_eq!(cell["nova_object.version"], "1.4");
        let d = &cell["nova_object.data"];
        assert_eq!(d["cpuset"], serde_json::json!([0]));
        assert!(d.get("pcpuset").is_none());
        assert_eq!(d["cpuset_reserved"], serde_json::json!([9]));
        assert_eq!(d["cpu_pinning_raw"], serde_json::json!({"0": 8}));
        // Read back as the Stein layout, with the same pins; a second pass changes nothing.
        let (_, cells) = instance_cells(&to_nova_json(&doc)).unwrap();
        assert_eq!(cells[0].shared_vcpus, None);
        assert_eq!(cells[0].pins, [(0, 8)].into_iter().collect());
        assert!(!downgrade_instance_cells(&mut doc, "1.4").unwrap());
        // A Stein row is left as it is.
        let mut stein: Value = serde_json::from_str(STEIN).unwrap();
        assert!(!downgrade_instance_cells(&mut stein, "1.4").unwrap());
    }

    #[test]
    fn a_mixed_cell_cannot_be_downgraded_and_nothing_changes() {
        let text = VICTORIA.replace(r#""cpu_policy":"dedicated""#, r#""cpu_policy":"mixed""#);
        let mut doc: Value = serde_json::from_str(&text).unwrap();
        let before = doc.clone();
        let e = downgrade_instance_cells(&mut doc, "1.4").unwrap_err();
        assert!(e.contains("mixed"), "{e}");
        assert_eq!(doc, before);
        assert!(downgrade_instance_cells(&mut doc, "x").is_err());
    }

    fn node_cell(node: &Value) -> &Value {
        &node["nova_object.data"]["cells"][0]["nova_object.data"]
    }

    #[test]
    fn usage_is_recomputed_from_every_instance_on_the_node() {
        let mut node: Value = serde_json::from_str(NODE).unwrap();
        let (_, stein) = instance_cells(STEIN).unwrap(); // pCPUs 2,3, 2048 MB
                                                         // An older guest also pinning pCPU 3 (an overlap Nova would refuse): releasing the
                                                         // Stein guest must keep 3 pinned, which subtracting its pins would drop.
        let other = cells_of_placement(&[place(0, &[(0, 3)], &[], 64)]);
        let problems = usage_from_instances(
            &mut node,
            &[("a".into(), stein.clone()), ("b".into(), other.clone())],
        )
        .unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("instance b pins pCPUs [3]"),
            "{problems:?}"
        );
        let d = node_cell(&node);
        assert_eq!(d["pinned_cpus"], json!([2, 3]));
        assert_eq!(
            (d["cpu_usage"].clone(), d["memory_usage"].clone()),
            (json!(3), json!(2112))
        );
        // a leaves: b keeps pCPU 3.
        let problems = usage_from_instances(&mut node, &[("b".into(), other)]).unwrap();
        assert!(problems.is_empty());
        let d = node_cell(&node);
        assert_eq!(d["pinned_cpus"], json!([3]));
        assert_eq!(
            (d["cpu_usage"].clone(), d["memory_usage"].clone()),
            (json!(1), json!(64))
        );
        assert_eq!(d["network_metadata"]["nova_object.data"]["tunneled"], false);
        // No instances: nothing used.
        usage_from_instances(&mut node, &[]).unwrap();
        assert_eq!(node_cell(&node)["pinned_cpus"], json!([]));
    }

    #[test]
    fn unknown_cells_and_cpus_are_what_nova_refuses() {
        let mut node: Value = serde_json::from_str(NODE).unwrap();
        let p = usage_from_instances(
            &mut node,
            &[
                (
                    "x".into(),
                    cells_of_placement(&[place(5, &[(0, 0)], &[], 1)]),
                ),
                (
                    "y".into(),
                    cells_of_placement(&[place(0, &[(0, 9)], &[], 1)]),
                ),
            ],
        )
        .unwrap();
        assert!(
            p[0].contains("NUMA cell 5, which the compute node does not have"),
            "{p:?}"
        );
        assert!(
            p[1].contains("pins pCPUs [9], which are not in NUMA cell 0"),
            "{p:?}"
        );
    }

    #[test]
    fn isolate_pins_siblings_and_pages_are_counted() {
        let text = NODE
            .replace(r#""siblings":[[0],[1],[2],[3]]"#, r#""siblings":[[0,1],[2,3]]"#)
            .replace(
                r#"{"size_kb":4,"total":1048576,"used":0,"reserved":0}}"#,
                r#"{"size_kb":4,"total":1048576,"used":7,"reserved":0}},{"nova_object.name":"NUMAPagesTopology","nova_object.namespace":"nova","nova_object.version":"1.1","nova_object.data":{"size_kb":2048,"total":512,"used":9,"reserved":0}}"#,
            );
        let mut node: Value = serde_json::from_str(&text).unwrap();
        let mut c = place(0, &[(0, 0)], &[], 64);
        c.thread_policy = Some(crate::fit::ThreadPolicy::Isolate);
        c.pagesize_kb = Some(2048);
        usage_from_instances(&mut node, &[("i".into(), cells_of_placement(&[c]))]).unwrap();
        let d = node_cell(&node);
        assert_eq!(d["pinned_cpus"], json!([0, 1]));
        assert_eq!(d["cpu_usage"], json!(2));
        let used: Vec<Value> = d["mempages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["nova_object.data"]["used"].clone())
            .collect();
        assert_eq!(used, vec![json!(0), json!(32)]);
    }

    #[test]
    fn node_cell_versions_queens_to_wallaby() {
        // NUMACell 1.2 (Queens: no network_metadata), 1.4 (Train: pcpuset), 1.5 (Wallaby: socket):
        // the accounting touches the same fields and keeps the rest.
        for (ver, extra) in [
            ("1.2", ""),
            ("1.4", r#","pcpuset":[2,3]"#),
            ("1.5", r#","pcpuset":[2,3],"socket":0"#),
        ] {
            let text = format!(
                r#"{{"nova_object.name":"NUMATopology","nova_object.namespace":"nova","nova_object.version":"1.2","nova_object.data":{{"cells":[{{"nova_object.name":"NUMACell","nova_object.namespace":"nova","nova_object.version":"{ver}","nova_object.data":{{"id":0,"cpuset":[0,1],"memory":4096,"cpu_usage":2,"memory_usage":2048,"pinned_cpus":[2,3],"siblings":[[2],[3]],"mempages":[]{extra}}}}}]}}}}"#
            );
            let mut node: Value = serde_json::from_str(&text).unwrap();
            usage_from_instances(&mut node, &[]).unwrap();
            let d = &node["nova_object.data"]["cells"][0];
            assert_eq!(d["nova_object.version"], ver);
            assert_eq!(d["nova_object.data"]["pinned_cpus"], json!([]));
            if !extra.is_empty() {
                assert_eq!(d["nova_object.data"]["pcpuset"], json!([2, 3]));
            }
        }
    }

    #[test]
    fn written_like_nova_writes() {
        let v: Value = serde_json::from_str(r#"{"a": [1, 2], "b": {"c": null}}"#).unwrap();
        assert_eq!(to_nova_json(&v), r#"{"a": [1, 2], "b": {"c": null}}"#);
    }

    #[test]
    fn malformed_rows_are_refused() {
        assert!(instance_cells("{").unwrap_err().contains("not valid JSON"));
        assert!(instance_cells(r#"{"nova_object.name":"X"}"#)
            .unwrap_err()
            .contains("not an InstanceNUMATopology"));
        let bad = STEIN.replace(r#""0":2"#, r#""zero":2"#);
        assert!(instance_cells(&bad)
            .unwrap_err()
            .contains("not a vCPU number"));
    }
}
