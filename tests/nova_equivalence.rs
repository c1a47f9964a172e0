//! Equivalence with Nova 19.3.2 (Stein): the committed fixture holds generated and hand-written
//! cases (tests/nova_equiv/fixtures/cases.jsonl) and Nova's own answers for them
//! (fixtures/nova-19.3.2.jsonl, made by tests/nova_equiv/make_fixture.sh with Nova's
//! `numa_get_constraints` + `numa_fit_instance_to_host`). For every case our engine must agree
//! with Nova on the outcome: request error (same exception class), no NUMA topology, fit or no
//! fit; and every placement we return must be valid (rules ported from
//! tests/nova_equiv/check_placement.py, independent of the engine's own `validate`).
//!
//! One documented exception: where Nova's search is path-dependent (its permutation loop reuses
//! the instance cells and `_numa_fit_instance_cell` overwrites a requested small/large/any page
//! size with the size it picked on the previous host cell, so a later permutation can miss a
//! cell that fits), the fixture carries `fits_fresh` (Nova's own cell fit with a fresh request
//! per permutation) and we must agree with that instead; such cases are counted and printed.
//!
//! Cases where Nova itself crashed (the fixture's `crash`, e.g. a host cell without sibling
//! information: `max()` of an empty list in `_pack_instance_onto_cores`) have no answer to agree
//! with; there only the validity of ours is checked.
//!
//! A live run against Nova over fresh cases: tests/nova_equiv/test_equiv.py (pytest) and
//! bench/fit_vs_nova.sh (also times both), both need the Nova venv.

use numa_repin::fit::{self, Decision, FitOptions, HostState, Placement, Request};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const CASES: &str = "tests/nova_equiv/fixtures/cases.jsonl";
const NOVA: &str = "tests/nova_equiv/fixtures/nova-19.3.2.jsonl";

// ---------------------------------------------------------------------------------------------
// Fixture reading

fn read_lines(rel: &str) -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line is JSON"))
        .collect()
}

/// The checker's own view of a host cell (parsed independently of the engine's types).
#[derive(Deserialize, Clone)]
struct CHostCell {
    id: u32,
    cpuset: Vec<u32>,
    #[serde(default)]
    siblings: Vec<Vec<u32>>,
    #[serde(default)]
    pinned_cpus: Vec<u32>,
    memory: i64,
    #[serde(default)]
    memory_usage: i64,
    #[serde(default)]
    mempages: Vec<CPages>,
}

#[derive(Deserialize, Clone)]
struct CPages {
    size_kb: u64,
    total: u64,
    #[serde(default)]
    used: u64,
    #[serde(default)]
    reserved: u64,
}

#[derive(Deserialize)]
struct CHost {
    cells: Vec<CHostCell>,
}

/// A placement in the checker's terms: from Nova's JSON or from our `Placement`.
#[derive(Debug, Clone)]
struct PCell {
    guest_cell: u32,
    host_cell: u32,
    vcpus: Vec<u32>,
    pins: Option<BTreeMap<u32, u32>>,
    reserved: Vec<u32>,
    pagesize: Option<u64>,
    memory: u64,
}

fn from_nova(res: &Value) -> Vec<PCell> {
    res["cells"]
        .as_array()
        .map(|cells| {
            cells
                .iter()
                .map(|c| PCell {
                    guest_cell: c["guest_cell"].as_u64().unwrap() as u32,
                    host_cell: c["host_cell"].as_u64().unwrap() as u32,
                    vcpus: c["vcpus"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap() as u32)
                        .collect(),
                    pins: c["pins"].as_object().map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.parse().unwrap(), v.as_u64().unwrap() as u32))
                            .collect()
                    }),
                    reserved: c["cpuset_reserved"]
                        .as_array()
                        .map(|a| a.iter().map(|v| v.as_u64().unwrap() as u32).collect())
                        .unwrap_or_default(),
                    pagesize: c["pagesize"].as_u64(),
                    memory: c["memory"].as_u64().unwrap(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn from_ours(p: &Placement) -> Vec<PCell> {
    p.cells
        .iter()
        .map(|c| PCell {
            guest_cell: c.guest_cell,
            host_cell: c.host_cell,
            vcpus: c.vcpus.clone(),
            pins: if p.dedicated {
                Some(
                    c.vcpu_pins
                        .iter()
                        .map(|(k, v)| (k.parse().expect("vCPU key is a number"), *v))
                        .collect(),
                )
            } else {
                None
            },
            reserved: c.cpuset_reserved.clone(),
            pagesize: c.pagesize_kb,
            memory: c.memory_mb,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Request policies as Nova resolves them (for the validity rules only; assumes an accepted request)

fn sval(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum PageReq {
    Small,
    Large,
    Any,
    Kb(u64),
}

fn parse_page(v: &str) -> Option<PageReq> {
    match v {
        "small" => return Some(PageReq::Small),
        "large" => return Some(PageReq::Large),
        "any" => return Some(PageReq::Any),
        _ => {}
    }
    if let Ok(n) = v.parse::<u64>() {
        return Some(PageReq::Kb(n));
    }
    let digits: String = v.chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u64 = digits.parse().ok()?;
    let unit = v[digits.len()..].trim().to_ascii_uppercase();
    let mult = match unit.trim_end_matches('B').trim_end_matches('I') {
        "K" => 1,
        "M" => 1024,
        "G" => 1024 * 1024,
        _ => return None,
    };
    Some(PageReq::Kb(n * mult))
}

struct Policies {
    dedicated: bool,
    thread: Option<String>,
    emu_isolate: bool,
    page: Option<PageReq>,
}

fn policies(req: &Value) -> Policies {
    let spec = &req["extra_specs"];
    let img = &req["image_properties"];
    let (fp, ip) = (
        sval(spec.get("hw:cpu_policy")),
        sval(img.get("hw_cpu_policy")),
    );
    let dedicated = fp.as_deref() == Some("dedicated")
        || (fp.as_deref() != Some("shared") && ip.as_deref() == Some("dedicated"));
    let (ft, it) = (
        sval(spec.get("hw:cpu_thread_policy")),
        sval(img.get("hw_cpu_thread_policy")),
    );
    let thread = match ft.as_deref() {
        None | Some("prefer") => ft.clone().or(it),
        _ => ft,
    };
    let emu_isolate = sval(spec.get("hw:emulator_threads_policy")).as_deref() == Some("isolate");
    let (fpage, ipage) = (
        sval(spec.get("hw:mem_page_size")),
        sval(img.get("hw_mem_page_size")),
    );
    let page = match fpage {
        None => None,
        Some(f) => {
            let p = parse_page(&f);
            match (p, ipage) {
                (Some(PageReq::Any | PageReq::Large), Some(i)) => parse_page(&i),
                (p, _) => p,
            }
        }
    };
    Policies {
        dedicated,
        thread,
        emu_isolate,
        page,
    }
}

// ---------------------------------------------------------------------------------------------
// Validity rules (port of tests/nova_equiv/check_placement.py)

fn check_placement(case: &Value, cells: &[PCell]) -> Vec<String> {
    let mut errs = Vec::new();
    let host: CHost = serde_json::from_value(case["host"].clone()).expect("host JSON");
    let hosts: HashMap<u32, &CHostCell> = host.cells.iter().map(|c| (c.id, c)).collect();
    let req = &case["request"];
    let pol = policies(req);
    let vcpus = req["vcpus"].as_u64().unwrap() as u32;
    let memory_mb = req["memory_mb"].as_u64().unwrap();

    let mut seen = BTreeSet::new();
    let mut all_vcpus = Vec::new();
    let mut total_mem = 0;
    for c in cells {
        if !hosts.contains_key(&c.host_cell) {
            errs.push(format!("cells: host cell {} does not exist", c.host_cell));
            return errs;
        }
        if !seen.insert(c.host_cell) {
            errs.push(format!(
                "cells: two guest cells on host cell {}",
                c.host_cell
            ));
        }
        all_vcpus.extend(c.vcpus.iter().copied());
        total_mem += c.memory;
    }
    all_vcpus.sort_unstable();
    if all_vcpus != (0..vcpus).collect::<Vec<_>>() {
        errs.push(format!(
            "cells: guest cells cover vCPUs {all_vcpus:?}, not 0..{}",
            vcpus.saturating_sub(1)
        ));
    }
    if total_mem != memory_mb {
        errs.push(format!(
            "cells: guest cell memory sums to {total_mem}, not {memory_mb}"
        ));
    }

    let mut reserved_total: Vec<(u32, u32)> = Vec::new();
    for c in cells {
        let h = hosts[&c.host_cell];
        let tag = format!("guest cell {} on host cell {}", c.guest_cell, c.host_cell);
        let cpuset: BTreeSet<u32> = h.cpuset.iter().copied().collect();
        let pinned: BTreeSet<u32> = h.pinned_cpus.iter().copied().collect();
        let siblings: Vec<BTreeSet<u32>> = h
            .siblings
            .iter()
            .map(|s| s.iter().copied().collect())
            .collect();
        let tpc = siblings.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
        reserved_total.extend(c.reserved.iter().map(|r| (c.guest_cell, *r)));

        if pol.dedicated && c.pins.is_none() {
            errs.push(format!("policy: {tag}: dedicated but not pinned"));
        }
        if !pol.dedicated && c.pins.as_ref().is_some_and(|p| !p.is_empty()) {
            errs.push(format!("policy: {tag}: shared but pinned"));
        }
        let mut pcpus: Vec<u32> = Vec::new();
        if let Some(pins) = &c.pins {
            let mut keys: Vec<u32> = pins.keys().copied().collect();
            let mut want = c.vcpus.clone();
            keys.sort_unstable();
            want.sort_unstable();
            if keys != want {
                errs.push(format!(
                    "cpus: {tag}: pins {pins:?} do not map vCPUs {:?}",
                    c.vcpus
                ));
            }
            pcpus = pins.values().copied().collect();
            let distinct: BTreeSet<u32> = pcpus.iter().copied().collect();
            if distinct.len() != pcpus.len() {
                errs.push(format!("cpus: {tag}: a pCPU is pinned twice: {pins:?}"));
            }
            for p in &pcpus {
                if !cpuset.contains(p) {
                    errs.push(format!("cpus: {tag}: pCPU {p} not in cpuset"));
                } else if pinned.contains(p) {
                    errs.push(format!("cpus: {tag}: pCPU {p} already pinned"));
                }
            }
        }
        for r in &c.reserved {
            if !cpuset.contains(r) {
                errs.push(format!("cpus: {tag}: reserved pCPU {r} not in cpuset"));
            } else if pinned.contains(r) {
                errs.push(format!("cpus: {tag}: reserved pCPU {r} already pinned"));
            }
            if pcpus.contains(r) {
                errs.push(format!("cpus: {tag}: reserved pCPU {r} is also a vCPU pin"));
            }
        }
        if c.vcpus.len() + c.reserved.len() > cpuset.len() {
            errs.push(format!(
                "cpus: {tag}: {} vCPUs + {} reserved > {} pCPUs",
                c.vcpus.len(),
                c.reserved.len(),
                cpuset.len()
            ));
        }

        // memory
        let mem = c.memory;
        if c.pins.is_some() && mem as i64 > h.memory - h.memory_usage {
            errs.push(format!(
                "memory: {tag}: pinned {mem} MiB > {} MiB available",
                h.memory - h.memory_usage
            ));
        }
        let pools: BTreeMap<u64, &CPages> = h.mempages.iter().map(|p| (p.size_kb, p)).collect();
        match c.pagesize {
            Some(ps) => match pools.get(&ps) {
                None => errs.push(format!("memory: {tag}: no {ps} KiB page pool")),
                Some(p) => {
                    let free = p.total.saturating_sub(p.used).saturating_sub(p.reserved);
                    if (mem * 1024) % ps != 0 {
                        errs.push(format!(
                            "memory: {tag}: {mem} MiB is not a multiple of {ps} KiB pages"
                        ));
                    }
                    if mem * 1024 > free * ps {
                        errs.push(format!(
                            "memory: {tag}: {mem} MiB > {free} free {ps} KiB pages"
                        ));
                    }
                }
            },
            None => {
                if let Some((_, small)) = pools.iter().next() {
                    if mem * 1024 > small.total * small.size_kb {
                        errs.push(format!("memory: {tag}: {mem} MiB > small page total"));
                    }
                } else if mem as i64 > h.memory {
                    errs.push(format!(
                        "memory: {tag}: {mem} MiB > cell memory {}",
                        h.memory
                    ));
                }
            }
        }
        // pagesize honours the request
        let smallest = pools.keys().next().copied();
        let ok = match pol.page {
            None => c.pagesize.is_none(),
            Some(PageReq::Small) => smallest.is_some() && c.pagesize == smallest,
            Some(PageReq::Large) => c.pagesize.is_some() && c.pagesize != smallest,
            Some(PageReq::Any) => c.pagesize.is_some(),
            Some(PageReq::Kb(k)) => c.pagesize == Some(k),
        };
        if !ok {
            errs.push(format!(
                "pagesize: {tag}: requested {:?}, got {:?}",
                pol.page, c.pagesize
            ));
        }

        // thread policies
        if c.pins.is_some() && pol.thread.as_deref() == Some("isolate") {
            let mut used: BTreeMap<Vec<u32>, usize> = BTreeMap::new();
            for p in &pcpus {
                match siblings.iter().find(|s| s.contains(p)) {
                    None => errs.push(format!("isolate: {tag}: pCPU {p} has no sibling set")),
                    Some(core) => {
                        *used.entry(core.iter().copied().collect()).or_default() += 1;
                        if core.len() != tpc {
                            errs.push(format!(
                                "isolate: {tag}: pCPU {p} is on a partial core {core:?}"
                            ));
                        }
                        if core.iter().any(|x| pinned.contains(x)) {
                            errs.push(format!(
                                "isolate: {tag}: core {core:?} of pCPU {p} is partly pinned"
                            ));
                        }
                    }
                }
            }
            for (core, n) in &used {
                if *n > 1 {
                    errs.push(format!("isolate: {tag}: {n} vCPUs share core {core:?}"));
                }
            }
            for r in &c.reserved {
                if used.keys().any(|core| core.contains(r)) {
                    errs.push(format!(
                        "isolate: {tag}: reserved pCPU {r} shares a core with a vCPU"
                    ));
                }
            }
        }
        if c.pins.is_some() && pol.thread.as_deref() == Some("require") {
            if tpc <= 1 {
                errs.push(format!("require: {tag}: require on a host without SMT"));
            } else {
                let mut per_core: BTreeMap<Vec<u32>, usize> = BTreeMap::new();
                for p in &pcpus {
                    let core: Vec<u32> = siblings
                        .iter()
                        .find(|s| s.contains(p))
                        .map(|s| s.iter().copied().collect())
                        .unwrap_or_else(|| vec![*p]);
                    *per_core.entry(core).or_default() += 1;
                }
                let singles = per_core.values().filter(|n| **n == 1).count();
                if singles > 1
                    || (singles > 0 && pcpus.len() > 1 && tpc == 2 && pcpus.len().is_multiple_of(2))
                {
                    errs.push(format!(
                        "require: {tag}: {singles} cores hold a single vCPU ({:?})",
                        c.pins
                    ));
                }
            }
        }
    }
    if pol.dedicated && pol.emu_isolate {
        if reserved_total.len() != 1 {
            errs.push(format!(
                "emulator: isolate: {} reserved pCPUs, expected 1",
                reserved_total.len()
            ));
        } else if reserved_total[0].0 != 0 {
            errs.push(format!(
                "emulator: isolate: reserved pCPU on the cell of guest cell {}",
                reserved_total[0].0
            ));
        }
    } else if !reserved_total.is_empty() {
        errs.push(format!(
            "emulator: reserved pCPUs {reserved_total:?} without emulator isolate"
        ));
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// Outcomes

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Error(String),
    NoNuma,
    Fit,
    NoFit,
}

fn nova_outcome(r: &Value) -> Outcome {
    if let Some(e) = r["error"].as_str() {
        return Outcome::Error(e.split(':').next().unwrap_or(e).to_string());
    }
    if !r["numa"].as_bool().unwrap_or(false) {
        return Outcome::NoNuma;
    }
    if r["fits"].as_bool().unwrap_or(false) {
        Outcome::Fit
    } else {
        Outcome::NoFit
    }
}

fn our_outcome(d: &Result<Decision, fit::RequestError>) -> Outcome {
    match d {
        Err(e) => Outcome::Error(e.exception.to_string()),
        Ok(Decision::NotNuma) => Outcome::NoNuma,
        Ok(Decision::Fits(_)) => Outcome::Fit,
        Ok(Decision::NoFit(_)) => Outcome::NoFit,
    }
}

fn short(case: &Value) -> String {
    let mut c = case.clone();
    if let Some(o) = c.as_object_mut() {
        o.remove("tags");
    }
    c.to_string()
}

fn fixture() -> Vec<(Value, Value)> {
    let cases = read_lines(CASES);
    let nova: HashMap<u64, Value> = read_lines(NOVA)
        .into_iter()
        .map(|r| (r["id"].as_u64().unwrap(), r))
        .collect();
    assert!(
        cases.len() >= 100,
        "fixture too small: {} cases",
        cases.len()
    );
    cases
        .into_iter()
        .map(|c| {
            let id = c["id"].as_u64().unwrap();
            let n = nova
                .get(&id)
                .unwrap_or_else(|| panic!("no Nova answer for case {id}"))
                .clone();
            (c, n)
        })
        .collect()
}

#[test]
fn nova_placements_in_the_fixture_are_valid() {
    // The ported rules must accept Nova's own placements (tests the port, and would flag a Nova
    // placement that oversubscribes or breaks a policy: none in this fixture).
    let mut bad = Vec::new();
    let mut checked = 0;
    for (case, nova) in fixture() {
        if nova_outcome(&nova) == Outcome::Fit {
            checked += 1;
            let errs = check_placement(&case, &from_nova(&nova));
            if !errs.is_empty() {
                bad.push(format!("case {}: {}", case["id"], errs.join("; ")));
            }
        }
    }
    assert!(
        checked > 30,
        "only {checked} Nova placements in the fixture"
    );
    assert!(
        bad.is_empty(),
        "Nova placements the rules reject:\n{}",
        bad.join("\n")
    );
}

#[test]
fn agrees_with_nova_19_3_2_on_every_fixture_case() {
    let opts = FitOptions {
        strict_memory: false,
    }; // Nova without limits lets unpinned NUMA guests overcommit
    let mut failures = Vec::new();
    let mut path_dependent = Vec::new();
    let mut nova_crashes: Vec<String> = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut n = 0;
    for (case, nova) in fixture() {
        n += 1;
        let id = case["id"].as_u64().unwrap();
        let host: HostState = match serde_json::from_value(case["host"].clone()) {
            Ok(h) => h,
            Err(e) => {
                failures.push(format!(
                    "case {id}: our HostState does not read the host: {e}"
                ));
                continue;
            }
        };
        let req: Request = match serde_json::from_value(case["request"].clone()) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!(
                    "case {id}: our Request does not read the request: {e}"
                ));
                continue;
            }
        };
        let d = fit::fit_request(&host, &req, &opts);
        let ours = our_outcome(&d);
        if let Some(crash) = nova["crash"].as_str() {
            // Nova itself raised inside numa_fit_instance_to_host: no answer to agree with (a Nova
            // finding); our answer must still be a valid one.
            nova_crashes.push(format!("{id} ({crash})"));
            if let Ok(Decision::Fits(p)) = &d {
                let errs = check_placement(&case, &from_ours(p));
                if !errs.is_empty() {
                    failures.push(format!(
                        "case {id}: our placement is invalid: {}\n    {}",
                        errs.join("; "),
                        short(&case)
                    ));
                }
            }
            continue;
        }
        let mut want = nova_outcome(&nova);
        let fresh = nova["fits_fresh"].as_bool();
        if want == Outcome::NoFit && fresh == Some(true) {
            // Nova misses this fit only because of its path-dependent search (module docs).
            want = Outcome::Fit;
            path_dependent.push(id);
        }
        *counts
            .entry(format!("{want:?}").split('(').next().unwrap().to_string())
            .or_default() += 1;
        if ours != want {
            let detail = match &d {
                Err(e) => format!("error {e}"),
                Ok(Decision::NoFit(r)) => format!("no fit: {}", r.reasons.join(" | ")),
                Ok(Decision::Fits(p)) => format!("fits: {:?}", from_ours(p)),
                Ok(Decision::NotNuma) => "no NUMA topology".into(),
            };
            failures.push(format!(
                "case {id}: nova {:?} (error {:?}), ours {:?} ({detail})\n    {}",
                want,
                nova["error"].as_str(),
                ours,
                short(&case)
            ));
            continue;
        }
        if let Ok(Decision::Fits(p)) = &d {
            let errs = check_placement(&case, &from_ours(p));
            if !errs.is_empty() {
                failures.push(format!(
                    "case {id}: our placement is invalid: {}\n    {}",
                    errs.join("; "),
                    short(&case)
                ));
            }
            // and the engine's own validator agrees
            if let Ok(Some(topo)) = fit::constraints(&req) {
                if let Err(e) = fit::validate(&host, &topo, p) {
                    failures.push(format!(
                        "case {id}: fit::validate rejects our own placement: {e}"
                    ));
                }
            }
        }
    }
    eprintln!(
        "nova_equivalence: {n} cases {counts:?}; {} where Nova's search is path-dependent (ours must fit): {path_dependent:?}; Nova crashed on {nova_crashes:?}; {} failures",
        path_dependent.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {n} cases disagree with Nova 19.3.2 or give invalid placements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
