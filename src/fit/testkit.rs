//! Hosts and requests built by hand for the engine's unit tests.

use super::*;
use std::collections::BTreeMap;

pub(super) fn cell(id: u32, cpus: &[u32], sib: &[&[u32]], pinned: &[u32], mem: u64) -> HostCell {
    HostCell {
        id,
        cpuset: cpus.iter().copied().collect(),
        siblings: sib.iter().map(|s| s.iter().copied().collect()).collect(),
        pinned_cpus: pinned.iter().copied().collect(),
        memory: mem,
        memory_usage: 0,
        mempages: vec![MemPages {
            size_kb: 4,
            total: mem * 256,
            used: 0,
            reserved: 0,
        }],
        cpu_usage: None,
    }
}
pub(super) fn nosmt(id: u32, cpus: &[u32], pinned: &[u32], mem: u64) -> HostCell {
    let sib: Vec<Vec<u32>> = cpus.iter().map(|c| vec![*c]).collect();
    let sib_ref: Vec<&[u32]> = sib.iter().map(|v| v.as_slice()).collect();
    cell(id, cpus, &sib_ref, pinned, mem)
}
pub(super) fn req(vcpus: u32, mem: u64, specs: serde_json::Value) -> Request {
    let extra_specs = specs
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Request {
        vcpus,
        memory_mb: mem,
        extra_specs,
        image_properties: BTreeMap::new(),
    }
}
pub(super) fn fits(host: &HostState, r: &Request) -> Placement {
    match fit_request(host, r, &FitOptions::default()).unwrap() {
        Decision::Fits(p) => {
            validate(host, &constraints(r).unwrap().unwrap(), &p).unwrap();
            p
        }
        other => panic!("expected a fit, got {other:?}"),
    }
}
pub(super) fn refused(host: &HostState, r: &Request) -> Refusal {
    match fit_request(host, r, &FitOptions::default()).unwrap() {
        Decision::NoFit(f) => f,
        other => panic!("expected a refusal, got {other:?}"),
    }
}
