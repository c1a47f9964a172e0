use super::*;
use crate::fit::{validate, GuestCellReq, MemPages, PolicySource, ThreadPolicy};
use crate::model::cpuset::CpuSet;

/// A host cell: `cpus` pCPUs from `first`, cores of `smt` threads, the first `pinned` pinned.
fn cell(id: u32, first: u32, cpus: u32, smt: u32, pinned: u32, mem: u64) -> HostCell {
    let ids: Vec<u32> = (first..first + cpus).collect();
    HostCell {
        id,
        cpuset: ids.iter().copied().collect(),
        siblings: ids
            .chunks(smt as usize)
            .map(|c| c.iter().copied().collect())
            .collect(),
        pinned_cpus: ids.iter().copied().take(pinned as usize).collect(),
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

fn host(name: &str, cells: Vec<HostCell>) -> HostState {
    HostState {
        name: name.into(),
        cells,
    }
}

fn topo(vcpus: u32, mem: u64) -> GuestTopology {
    GuestTopology {
        cells: vec![GuestCellReq {
            id: 0,
            vcpus: (0..vcpus).collect(),
            memory_mb: mem,
            pagesize: None,
        }],
        dedicated: true,
        thread_policy: None,
        emulator_isolate: false,
    }
}

fn guest(name: &str, source: &str, topology: GuestTopology) -> DrainGuest {
    DrainGuest {
        name: name.into(),
        uuid: String::new(),
        source: source.into(),
        topology,
        policy_source: Default::default(),
    }
}

/// Replay the plan move by move: every placement validates on the host as the earlier moves
/// left it, no guest goes to its source, every guest is moved or refused exactly once.
fn check_valid(hosts: &[HostState], guests: &[DrainGuest], plan: &DrainPlan) {
    let mut state = hosts.to_vec();
    let mut seen = BTreeSet::new();
    for m in &plan.moves {
        let g = guests.iter().find(|g| g.name == m.guest).unwrap();
        assert_ne!(m.dest, g.source, "{} planned onto its source", g.name);
        assert!(seen.insert(m.guest.clone()), "{} moved twice", m.guest);
        let h = state.iter_mut().find(|h| h.name == m.dest).unwrap();
        validate(h, &g.topology, &m.placement)
            .unwrap_or_else(|e| panic!("{} on {}: {e}", g.name, m.dest));
        claim(h, &m.placement);
    }
    for u in &plan.unplaced {
        assert!(
            seen.insert(u.guest.clone()),
            "{} both moved and refused",
            u.guest
        );
    }
    assert_eq!(seen.len(), guests.len());
    assert!(plan.upper_bound >= plan.moves.len());
    if plan.optimal {
        assert_eq!(plan.upper_bound, plan.moves.len());
    }
}

/// The most guests any assignment places: every guest, in the planning order, left behind or
/// put on every other host with every set of host cells (`place` on those cells), no pruning.
fn brute_force(hosts: &mut [HostState], gs: &[Guest], opts: &FitOptions) -> usize {
    let Some((g, rest)) = gs.split_first() else {
        return 0;
    };
    let mut best = brute_force(hosts, rest, opts);
    let k = g.g.topology.cells.len();
    for hi in 0..hosts.len() {
        if hosts[hi].name == g.g.source {
            continue;
        }
        let n = hosts[hi].cells.len();
        for mask in 1u64..(1 << n) {
            if mask.count_ones() as usize != k {
                continue;
            }
            let view = HostState {
                name: String::new(),
                cells: (0..n)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| hosts[hi].cells[i].clone())
                    .collect(),
            };
            if let Some(p) = place(&view, &g.g.topology, opts) {
                let saved = hosts[hi].clone();
                claim(&mut hosts[hi], &p);
                best = best.max(1 + brute_force(hosts, rest, opts));
                hosts[hi] = saved;
            }
        }
    }
    best
}

/// Greedy's best fit puts the first 3-vCPU guest on the 4-pCPU host; the other 3-vCPU guest
/// then takes 3 of the 6 and one 2-vCPU guest is left with 1 + 1 free pCPUs. The optimum puts
/// both 3-vCPU guests on the 6 and both 2-vCPU guests on the 4.
fn best_fit_trap() -> (Vec<HostState>, Vec<DrainGuest>) {
    let hosts = vec![
        host(
            "six",
            vec![cell(0, 0, 6, 1, 0, 8192), cell(1, 6, 6, 1, 6, 8192)],
        ),
        host(
            "four",
            vec![cell(0, 0, 4, 1, 0, 8192), cell(1, 4, 4, 1, 4, 8192)],
        ),
    ];
    let guests = vec![
        guest("a3", "src", topo(3, 1024)),
        guest("b3", "src", topo(3, 1024)),
        guest("c2", "src", topo(2, 1024)),
        guest("d2", "src", topo(2, 1024)),
    ];
    (hosts, guests)
}

#[test]
fn the_search_places_what_best_fit_leaves_behind() {
    let (hosts, guests) = best_fit_trap();
    let opts = FitOptions::default();
    let greedy = plan_drain_with_budget(hosts.clone(), &guests, &opts, 0);
    check_valid(&hosts, &guests, &greedy);
    assert_eq!(greedy.moves.len(), 3);
    assert_eq!(greedy.unplaced.len(), 1);
    let plan = plan_drain(hosts.clone(), &guests, &opts);
    check_valid(&hosts, &guests, &plan);
    assert_eq!(plan.moves.len(), 4);
    assert!(plan.unplaced.is_empty());
    assert!(plan.optimal);
    assert_eq!(plan.upper_bound, 4);
    let dest = |g: &str| {
        plan.moves
            .iter()
            .find(|m| m.guest == g)
            .unwrap()
            .dest
            .clone()
    };
    assert_eq!(dest("a3"), "six");
    assert_eq!(dest("b3"), "six");
    assert_eq!(dest("c2"), "four");
    // Same input, same plan.
    assert_eq!(plan_drain(hosts, &guests, &opts), plan);
}

#[test]
fn the_search_chooses_the_host_cell_too() {
    // One host: cell 0 has 4 free pCPUs but 1 GiB free memory, cell 1 3 free pCPUs and 8 GiB.
    // Best fit puts the 3-vCPU guest on cell 1 and leaves the memory-hungry one nowhere to go.
    let mut c0 = cell(0, 0, 4, 1, 0, 8192);
    c0.memory_usage = 7168;
    let hosts = vec![host("h", vec![c0, cell(1, 4, 4, 1, 1, 8192)])];
    let guests = vec![
        guest("wide", "src", topo(3, 512)),
        guest("heavy", "src", topo(2, 4096)),
    ];
    let opts = FitOptions::default();
    let greedy = plan_drain_with_budget(hosts.clone(), &guests, &opts, 0);
    assert_eq!(greedy.moves.len(), 1);
    let plan = plan_drain(hosts.clone(), &guests, &opts);
    check_valid(&hosts, &guests, &plan);
    assert_eq!(plan.moves.len(), 2);
    assert!(plan.optimal);
    assert_eq!(plan.moves[0].guest, "wide");
    assert_eq!(plan.moves[0].placement.cells[0].host_cell, 0);
}

#[test]
fn the_greedy_case_still_never_double_books() {
    let hosts: Vec<HostState> = (0..3)
        .map(|i| {
            host(
                &format!("h{i}"),
                vec![cell(0, 0, 4, 1, 0, 4096), cell(1, 4, 4, 1, 0, 4096)],
            )
        })
        .collect();
    let mut guests: Vec<DrainGuest> = (0..10)
        .map(|i| guest(&format!("g{i}"), "h0", topo(2, 512)))
        .collect();
    guests.push(guest("big", "h0", topo(5, 512)));
    let plan = plan_drain(hosts.clone(), &guests, &FitOptions::default());
    check_valid(&hosts, &guests, &plan);
    assert_eq!(plan.moves.len(), 8); // h1 and h2 hold 4 two-vCPU guests each
    assert!(plan.optimal);
    assert_eq!(plan.unplaced.len(), 3);
    let big = plan.unplaced.iter().find(|u| u.guest == "big").unwrap();
    assert_eq!(big.msg, "No numa available with 5 vcpu and 512 memory");
    assert_eq!(
        big.reasons[0],
        "h2: cell 0: 4 pCPUs usable for pinning, needs 5"
    );
}

#[test]
fn an_exhausted_budget_says_so_with_a_true_bound() {
    let (hosts, guests) = best_fit_trap();
    let opts = FitOptions::default();
    for budget in [0, 1, 3] {
        let plan = plan_drain_with_budget(hosts.clone(), &guests, &opts, budget);
        check_valid(&hosts, &guests, &plan);
        assert_eq!(plan.moves.len(), 3, "budget {budget}");
        assert!(!plan.optimal, "budget {budget}");
        // 4 guests fit alone and 10 free pCPUs hold all 10 vCPUs: the bound is 4, which the
        // optimum reaches.
        assert_eq!(plan.upper_bound, 4, "budget {budget}");
    }
}

/// A tiny drain: 1-3 two-cell hosts (sometimes SMT, partly pinned), 1-5 guests (sometimes two
/// cells, isolate/require, emulator isolation, or a source among the candidates).
fn tiny(r: &mut fastrand::Rng) -> (Vec<HostState>, Vec<DrainGuest>) {
    let nh = 1 + r.u64(..3) as usize;
    let hosts: Vec<HostState> = (0..nh)
        .map(|i| {
            let smt = 1 + r.u64(..2) as u32;
            let cpus = 2 * (1 + r.u64(..3) as u32) * smt;
            let cells = (0..2u32)
                .map(|c| {
                    let mut hc = cell(c, c * cpus, cpus, smt, r.u64(..cpus as u64) as u32, 4096);
                    hc.memory_usage = 512 * r.u64(..6);
                    hc
                })
                .collect();
            host(&format!("h{i}"), cells)
        })
        .collect();
    let ng = 1 + r.u64(..5) as usize;
    let guests = (0..ng)
        .map(|i| {
            let vcpus = 1 + r.u64(..4) as u32;
            let mem = 512 * (1 + r.u64(..4));
            let mut t = topo(vcpus, mem);
            if vcpus >= 2 && r.u64(..4) == 0 {
                t.cells = vec![
                    GuestCellReq {
                        id: 0,
                        vcpus: (0..vcpus / 2).collect(),
                        memory_mb: mem / 2,
                        pagesize: None,
                    },
                    GuestCellReq {
                        id: 1,
                        vcpus: (vcpus / 2..vcpus).collect(),
                        memory_mb: mem / 2,
                        pagesize: None,
                    },
                ];
            }
            t.thread_policy = match r.u64(..6) {
                0 => Some(ThreadPolicy::Isolate),
                1 => Some(ThreadPolicy::Require),
                _ => None,
            };
            t.emulator_isolate = r.u64(..5) == 0;
            let source = if r.u64(..5) == 0 { "h0" } else { "src" };
            guest(&format!("g{i}"), source, t)
        })
        .collect();
    (hosts, guests)
}

#[test]
fn random_tiny_drains_match_brute_force() {
    let mut r = fastrand::Rng::with_seed(0x005e_ed0f_d4a1_u64);
    let opts = FitOptions::default();
    let mut better = 0;
    for case in 0..400 {
        let (hosts, guests) = tiny(&mut r);
        let plan = plan_drain(hosts.clone(), &guests, &opts);
        check_valid(&hosts, &guests, &plan);
        let gs = prepare(&guests);
        let best = brute_force(&mut hosts.clone(), &gs, &opts);
        assert_eq!(plan.moves.len(), best, "case {case}: {hosts:?} {guests:?}");
        assert!(plan.optimal, "case {case}");
        let greedy = plan_drain_with_budget(hosts.clone(), &guests, &opts, 0);
        check_valid(&hosts, &guests, &greedy);
        assert!(
            greedy.upper_bound >= best,
            "case {case}: bound below the optimum"
        );
        better += (best > greedy.moves.len()) as usize;
    }
    // The generator does produce cases where the search matters.
    assert!(better > 0);
}

#[test]
fn shapes_tell_apart_what_matters() {
    let a = host("a", vec![cell(0, 0, 4, 2, 2, 4096)]);
    let mut b = a.clone();
    // Another core pinned: same shape (one core busy, one free), different content.
    b.cells[0].pinned_cpus = [2, 3].into_iter().collect::<CpuSet>();
    assert_eq!(shape_hash(&a, ""), shape_hash(&b, ""));
    assert_ne!(content_hash(&a), content_hash(&b));
    // One thread of each core pinned: same count, another shape (no whole core for isolate).
    b.cells[0].pinned_cpus = [0, 2].into_iter().collect::<CpuSet>();
    assert_ne!(shape_hash(&a, ""), shape_hash(&b, ""));
    // A source is never interchangeable with another host.
    assert_ne!(shape_hash(&a, ""), shape_hash(&a, "a"));
}

fn moves_to(dests: &[&str]) -> Vec<DrainMove> {
    dests
        .iter()
        .enumerate()
        .map(|(i, d)| DrainMove {
            guest: format!("g{i}"),
            uuid: String::new(),
            source: "src".into(),
            dest: (*d).into(),
            placement: Placement {
                cells: vec![],
                emulator_pins: vec![],
                dedicated: true,
            },
            thread_policy: Some(ThreadPolicy::Prefer),
            policy_source: PolicySource::Assumed,
        })
        .collect()
}

#[test]
fn waves_run_distinct_destinations_together() {
    let m = moves_to(&["a", "a", "b", "c", "a"]);
    // Two at a time, one per destination: a's three moves need three waves; b and c fill them.
    assert_eq!(waves(&m, 2, 1), vec![vec![0, 2], vec![1, 3], vec![4]]);
    // Sequential by default.
    assert_eq!(waves(&m, 1, 1), (0..5).map(|i| vec![i]).collect::<Vec<_>>());
    // Limits of 0 are taken as 1; no moves, no waves.
    assert_eq!(waves(&m, 0, 0), waves(&m, 1, 1));
    assert!(waves(&[], 2, 1).is_empty());
}

#[test]
fn random_waves_are_as_few_as_the_limits_allow() {
    let mut r = fastrand::Rng::with_seed(7);
    for case in 0..2000 {
        let n_dest = r.usize(1..6);
        let names: Vec<String> = (0..n_dest).map(|d| format!("h{d}")).collect();
        let dests: Vec<&str> = (0..r.usize(0..14))
            .map(|_| names[r.usize(..n_dest)].as_str())
            .collect();
        let m = moves_to(&dests);
        let (p, per) = (r.usize(1..5), r.usize(1..4));
        let w = waves(&m, p, per);
        // Every move exactly once, each destination in the plan's order.
        let mut seen: Vec<usize> = w.iter().flatten().copied().collect();
        for d in &names {
            let order: Vec<usize> = seen.iter().copied().filter(|&i| m[i].dest == *d).collect();
            assert!(
                order.windows(2).all(|x| x[0] < x[1]),
                "case {case}: {d} out of order in {w:?}"
            );
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..m.len()).collect::<Vec<_>>(), "case {case}");
        for wave in &w {
            assert!(!wave.is_empty() && wave.len() <= p, "case {case}: {w:?}");
            for d in &names {
                let k = wave.iter().filter(|&&i| m[i].dest == *d).count();
                assert!(
                    k <= per,
                    "case {case}: {k} moves to {d} in one wave of {w:?}"
                );
            }
        }
        // No grouping under these limits needs fewer waves.
        let per_dest_bound = names
            .iter()
            .map(|d| {
                dests
                    .iter()
                    .filter(|x| **x == d.as_str())
                    .count()
                    .div_ceil(per)
            })
            .max()
            .unwrap_or(0);
        let bound = m.len().div_ceil(p).max(per_dest_bound);
        assert_eq!(
            w.len(),
            bound,
            "case {case}: {dests:?} p={p} per={per}: {w:?}"
        );
    }
}
