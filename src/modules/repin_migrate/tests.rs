//! Unit tests of repin_migrate's phases.

use super::args::Args;
use super::monitor::downtime_steps;
use super::plan::placement_of;
use super::repin::cpumap;
use super::source::conf_host;
use super::verify::libvirt_pins_match;
use super::verify::pins_match;
use crate::facts::{self};
use crate::fit::{self, FitOptions, GuestTopology};
use crate::io::libvirt::{self};
use crate::model::rewrite;

#[test]
fn timing_and_paths_are_bounded_in_the_args() {
    let parse = |extra: &str| {
        crate::ansible::parse_args::<Args>(
            "repin_migrate",
            &format!(r#"{{"guest": "g", "source_uri": "qemu:///system"{extra}}}"#),
        )
        .map(|_| ())
        .map_err(|f| f.msg)
    };
    assert!(parse("").is_ok());
    assert!(parse(r#", "downtime_steps": 1000"#).is_ok());
    for (extra, field) in [
        (r#", "downtime_steps": 1099511627776"#, "downtime_steps"),
        (
            r#", "downtime_steps": 18446744073709551615"#,
            "downtime_steps",
        ),
        (
            r#", "max_downtime_ms": 18446744073709551615"#,
            "max_downtime_ms",
        ),
        (
            r#", "downtime_delay_s": 18446744073709551615"#,
            "downtime_delay_s",
        ),
        (r#", "lock_dir": "run/lock""#, "lock_dir"),
        (r#", "lock_dir": "/run/../etc""#, "lock_dir"),
        (r#", "dest_uri": "qemu+tcp://a\u0000b/system""#, "dest_uri"),
    ] {
        let e = parse(extra).unwrap_err();
        assert!(
            e.starts_with(&format!("repin_migrate: argument '{field}': ")),
            "{e}"
        );
    }
    // The step list is never larger than the bound, whatever the library caller passes.
    assert_eq!(downtime_steps(500, u64::MAX, u64::MAX, 1e30).len(), 1001);
}

#[test]
fn nova_downtime_steps() {
    // Nova: downtime 500, steps 10, delay 75, 2 GiB -> (0,50), (150,95), ..., (1500,500)
    let s = downtime_steps(500, 10, 75, 2.0);
    assert_eq!(s.len(), 11);
    assert_eq!(s[0], (0, 50));
    assert_eq!(s[1], (150, 95));
    assert_eq!(s[10], (1500, 500));
}

#[test]
fn libvirt_live_pins_against_the_plan() {
    let x = crate::model::domain::fixtures::pinned("vm1", "u-1", &[2, 3], None, 1, 2048);
    let g = crate::model::domain::parse_guest(&x).unwrap();
    let p = placement_of(&g, &GuestTopology::from_guest(&g, None));
    let mut lp = libvirt::LivePins::default();
    for (v, pc) in [("0", 2), ("1", 3)] {
        lp.vcpu_pins.insert(v.into(), vec![pc]);
        lp.vcpu_threads.insert(v.into(), vec![pc]);
    }
    lp.emulator_pins = p.emulator_pins.iter().rev().copied().collect();
    assert_eq!(libvirt_pins_match(&lp, &p), Ok(()));
    // A thread whose affinity was not applied (pin info alone would look fine).
    lp.vcpu_threads.insert("1".into(), vec![0, 1, 2, 3]);
    let e = libvirt_pins_match(&lp, &p).unwrap_err();
    assert!(
        e.contains("vCPU 1 thread may run on [0, 1, 2, 3], plan 3"),
        "{e}"
    );
    lp.vcpu_pins.remove("0");
    assert!(libvirt_pins_match(&lp, &p)
        .unwrap_err()
        .contains("vCPU 0: libvirt reports no pinning"));
}

#[test]
fn cpumaps() {
    assert_eq!(cpumap(&[0].into_iter().collect()), vec![1]);
    assert_eq!(cpumap(&[1, 9].into_iter().collect()), vec![2, 2]);
}

#[test]
fn placement_of_a_guest_and_pin_match() {
    let x = crate::model::domain::fixtures::pinned("vm1", "u-1", &[2, 3], None, 1, 2048);
    let g = crate::model::domain::parse_guest(&x).unwrap();
    let t = GuestTopology::from_guest(&g, None);
    let p = placement_of(&g, &t);
    assert_eq!(p.cells[0].host_cell, 1);
    assert_eq!(p.cells[0].vcpu_pins["1"], 3);
    assert!(pins_match(&g, &p).is_ok());
    let mut q = p.clone();
    q.cells[0].vcpu_pins.insert("0".into(), 5);
    assert!(pins_match(&g, &q).unwrap_err().contains("vCPU 0"));
}

/// Field case 3 on a two-cell host (the lab has one cell): 2 free pCPUs in total, one per cell,
/// so a 2-vCPU guest is refused with the in-band message; the same guest split in two guest
/// cells fits, and the rewrite binds each guest cell's memory to its own host cell.
#[test]
fn split_free_cpus_refused_and_two_cell_rewrite() {
    use crate::model::domain::fixtures::pinned;
    let caps = crate::model::topology::fixtures::caps(2, 2, 1, 1024, &[]);
    let residents = vec![
        ("a.xml".to_string(), pinned("a", "u-a", &[0], None, 0, 64)),
        ("b.xml".to_string(), pinned("b", "u-b", &[2], None, 1, 64)),
    ];
    let f = facts::from_saved("h", &caps, &residents, &Default::default()).unwrap();
    let state = f.host_state(None);
    let g = crate::model::domain::parse_guest(&pinned("vm", "u-vm", &[5, 6], None, 0, 64)).unwrap();
    let topo = GuestTopology::from_guest(&g, None);
    let r = fit::fit_topology(&state, &topo, &FitOptions::default()).unwrap_err();
    assert_eq!(r.msg, "No numa available with 2 vcpu and 64 memory");
    // The same guest with two guest NUMA cells of one vCPU each.
    let two = pinned("vm", "u-vm", &[5, 6], None, 0, 64)
        .replace("<numa><cell id='0' cpus='0-1' memory='65536' unit='KiB'/></numa>", "<numa><cell id='0' cpus='0' memory='32768' unit='KiB'/><cell id='1' cpus='1' memory='32768' unit='KiB'/></numa>")
        .replace("<memnode cellid='0' mode='strict' nodeset='0'/>", "<memnode cellid='0' mode='strict' nodeset='0'/><memnode cellid='1' mode='strict' nodeset='0'/>");
    let g2 = crate::model::domain::parse_guest(&two).unwrap();
    let topo2 = GuestTopology::from_guest(&g2, None);
    let p = fit::fit_topology(&state, &topo2, &FitOptions::default()).unwrap();
    let out = rewrite::rewrite(&two, &p).unwrap();
    let after = crate::model::domain::parse_guest(&out).unwrap();
    assert!(pins_match(&after, &p).is_ok(), "{out}");
    let nodes: Vec<Vec<u32>> = after
        .numa_cells
        .iter()
        .map(|c| c.host_nodes.clone())
        .collect();
    assert_eq!(nodes, vec![vec![0], vec![1]]);
    assert!(
        out.contains("<memory mode='strict' nodeset='0-1'/>"),
        "{out}"
    );
    assert_eq!(after.vcpu_pins["0"], vec![1]);
    assert_eq!(after.vcpu_pins["1"], vec![3]);
}

#[test]
fn conf_host_name() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("nova.conf");
    std::fs::write(&p, "[DEFAULT]\nhost = cmp2\n[libvirt]\nhost = x\n").unwrap();
    assert_eq!(conf_host(Some(&p)).as_deref(), Some("cmp2"));
}
