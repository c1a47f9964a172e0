//! Drain planning against the optimum, on generated tight drains (run by bench/drain_vs_optimum.sh).
//!
//!     cargo run --release --example drain_bench -- [--count N] [--seed S] [--large N]
//!
//! Part 1: N (default 200) random tight drains: 2-5 candidate hosts of 2 NUMA cells (with or
//! without SMT, partly pinned), 4-12 pinned guests whose vCPUs add up to about the free pCPUs.
//! For each: the greedy plan (`plan_drain_with_budget(.., 0)`), the plan (`plan_drain`), the
//! root upper bound, and an independent check: a plain depth-first search over every (host,
//! host cells) choice with no pruning but "placed + guests left <= best", where it finishes.
//! Part 2: the time of `plan_drain` on a 60-guest / 100-host tight drain, for `--large` seeds.
//! Times are wall clock of one plan, release build; nothing is asserted.

use numa_repin::fit::drain::{self, DrainGuest, DrainPlan};
use numa_repin::fit::{
    self, FitOptions, GuestCellReq, GuestTopology, HostCell, HostState, MemPages, ThreadPolicy,
};
use std::time::Instant;

/// A 2-cell host, `cpus` pCPUs per cell in cores of `smt` threads, pinned at random.
fn host(r: &mut fastrand::Rng, name: String, cpus: u32, smt: u32, pinned_pct: u64) -> HostState {
    let cells = (0..2u32)
        .map(|c| {
            let ids: Vec<u32> = (c * cpus..(c + 1) * cpus).collect();
            let pinned = ids
                .iter()
                .copied()
                .filter(|_| r.u64(..100) < pinned_pct)
                .collect();
            HostCell {
                id: c,
                cpuset: ids.iter().copied().collect(),
                siblings: ids
                    .chunks(smt as usize)
                    .map(|s| s.iter().copied().collect())
                    .collect(),
                pinned_cpus: pinned,
                memory: 65536,
                memory_usage: 1024 * r.u64(..32),
                mempages: vec![MemPages {
                    size_kb: 4,
                    total: 65536 * 256,
                    used: 0,
                    reserved: 0,
                }],
                cpu_usage: None,
            }
        })
        .collect();
    HostState { name, cells }
}

fn guest(r: &mut fastrand::Rng, name: String, vcpus: u32) -> DrainGuest {
    let mem = 2048 * vcpus as u64;
    let cell = |id, v: std::ops::Range<u32>, m| GuestCellReq {
        id,
        vcpus: v.collect(),
        memory_mb: m,
        pagesize: None,
    };
    let cells = if vcpus >= 4 && r.u64(..6) == 0 {
        vec![
            cell(0, 0..vcpus / 2, mem / 2),
            cell(1, vcpus / 2..vcpus, mem / 2),
        ]
    } else {
        vec![cell(0, 0..vcpus, mem)]
    };
    let thread_policy = match r.u64(..10) {
        0 => Some(ThreadPolicy::Isolate),
        1 => Some(ThreadPolicy::Require),
        _ => None,
    };
    DrainGuest {
        name,
        uuid: String::new(),
        source: "src".into(),
        topology: GuestTopology {
            cells,
            dedicated: true,
            thread_policy,
            emulator_isolate: r.u64(..8) == 0,
        },
        policy_source: Default::default(),
    }
}

fn free_pcpus(hosts: &[HostState]) -> u64 {
    hosts
        .iter()
        .flat_map(|h| &h.cells)
        .map(|c| c.free_cpus().len() as u64)
        .sum()
}

/// Guests until their vCPUs reach about the free pCPUs (90-110%), 4 to `max` of them.
fn guests(r: &mut fastrand::Rng, free: u64, sizes: &[u32], max: usize) -> Vec<DrainGuest> {
    let target = free * r.u64(90..=110) / 100;
    let mut out = Vec::new();
    let mut total = 0;
    while out.len() < 4 || (out.len() < max && total < target) {
        let v = sizes[r.u64(..sizes.len() as u64) as usize];
        total += v as u64;
        out.push(guest(r, format!("g{}", out.len()), v));
    }
    out
}

fn tight(r: &mut fastrand::Rng) -> (Vec<HostState>, Vec<DrainGuest>) {
    let nh = r.u64(2..=5);
    let hosts: Vec<HostState> = (0..nh)
        .map(|i| {
            let smt = 1 + r.u64(..2) as u32;
            let cpus = [4, 6, 8][r.u64(..3) as usize] * smt;
            let pct = r.u64(20..=60);
            host(r, format!("h{i}"), cpus, smt, pct)
        })
        .collect();
    let free = free_pcpus(&hosts);
    let gs = guests(r, free, &[1, 2, 2, 3, 4, 4, 6], 12);
    (hosts, gs)
}

fn large(r: &mut fastrand::Rng) -> (Vec<HostState>, Vec<DrainGuest>) {
    let hosts: Vec<HostState> = (0..100)
        .map(|i| {
            let smt = 1 + r.u64(..2) as u32;
            let pct = r.u64(75..=95);
            host(r, format!("h{i:03}"), 12 * smt, smt, pct)
        })
        .collect();
    let free = free_pcpus(&hosts);
    let mut gs = guests(r, free, &[1, 2, 2, 3, 4, 4, 6, 8], 60);
    while gs.len() < 60 {
        let v = 1 + r.u64(..4) as u32;
        gs.push(guest(r, format!("g{}", gs.len()), v));
    }
    (hosts, gs)
}

/// Planning order, as `plan_drain` orders guests (largest cell, memory, name).
fn ordered(guests: &[DrainGuest]) -> Vec<&DrainGuest> {
    let mut v: Vec<&DrainGuest> = guests.iter().collect();
    v.sort_by_key(|g| {
        let t = &g.topology;
        let big =
            t.cells.iter().map(|c| c.vcpus.len()).max().unwrap_or(0) + t.emulator_isolate as usize;
        (
            std::cmp::Reverse(big),
            std::cmp::Reverse(t.total_memory_mb()),
            g.name.clone(),
        )
    });
    v
}

/// Every (host, host cells) choice for each guest in order, pruned only by the trivial bound;
/// None past `cap` nodes.
fn plain_dfs(
    hosts: &mut [HostState],
    gs: &[&DrainGuest],
    placed: usize,
    best: &mut usize,
    nodes: &mut u64,
    cap: u64,
) -> bool {
    *nodes += 1;
    if *nodes > cap {
        return false;
    }
    if placed + gs.len() <= *best {
        return true;
    }
    let Some((g, rest)) = gs.split_first() else {
        *best = placed;
        return true;
    };
    let opts = FitOptions::default();
    for hi in 0..hosts.len() {
        let n = hosts[hi].cells.len();
        for mask in 1u64..(1 << n) {
            if mask.count_ones() as usize != g.topology.cells.len() {
                continue;
            }
            let view = HostState {
                name: String::new(),
                cells: (0..n)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| hosts[hi].cells[i].clone())
                    .collect(),
            };
            if let Some(p) = fit::place(&view, &g.topology, &opts) {
                let saved = hosts[hi].clone();
                fit::claim(&mut hosts[hi], &p);
                let ok = plain_dfs(hosts, rest, placed + 1, best, nodes, cap);
                hosts[hi] = saved;
                if !ok {
                    return false;
                }
            }
        }
    }
    plain_dfs(hosts, rest, placed, best, nodes, cap)
}

fn timed(f: impl FnOnce() -> DrainPlan) -> (DrainPlan, f64) {
    let t = Instant::now();
    let p = f();
    (p, t.elapsed().as_secs_f64())
}

fn main() {
    let mut count = 200usize;
    let mut seed = 20240601u64;
    let mut large_n = 5usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().and_then(|v| v.parse().ok()).expect("a number");
        match a.as_str() {
            "--count" => count = val() as usize,
            "--seed" => seed = val(),
            "--large" => large_n = val() as usize,
            other => panic!("drain_bench: unknown argument {other}"),
        }
    }
    let opts = FitOptions::default();
    let mut r = fastrand::Rng::with_seed(seed | 1);
    let (mut g_sum, mut n_sum, mut ub_sum, mut optimal, mut beaten) = (0, 0, 0, 0, 0);
    let (mut checked, mut agree, mut bf_sum_checked, mut n_sum_checked) = (0, 0, 0, 0);
    let (mut times, mut g_times) = (Vec::new(), Vec::new());
    for _ in 0..count {
        let (hosts, gs) = tight(&mut r);
        let (greedy, tg) = timed(|| drain::plan_drain_with_budget(hosts.clone(), &gs, &opts, 0));
        let (plan, t) = timed(|| drain::plan_drain(hosts.clone(), &gs, &opts));
        g_times.push(tg);
        times.push(t);
        g_sum += greedy.moves.len();
        n_sum += plan.moves.len();
        ub_sum += greedy.upper_bound;
        optimal += plan.optimal as usize;
        beaten += (plan.moves.len() > greedy.moves.len()) as usize;
        let (mut best, mut nodes) = (0, 0);
        let order = ordered(&gs);
        if plain_dfs(
            &mut hosts.clone(),
            &order,
            0,
            &mut best,
            &mut nodes,
            20_000_000,
        ) {
            checked += 1;
            agree += (best == plan.moves.len()) as usize;
            bf_sum_checked += best;
            n_sum_checked += plan.moves.len();
        }
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        (mean * 1e3, v[v.len() / 2] * 1e3, v[v.len() - 1] * 1e3)
    };
    let (gm, gmed, gmax) = stats(&mut g_times);
    let (m, med, max) = stats(&mut times);
    println!("{count} tight drains (seed {seed}): 2-5 hosts x 2 cells, 4-12 guests");
    println!("  greedy placed       {g_sum}");
    println!("  plan_drain placed   {n_sum}  (more than greedy in {beaten} drains; optimal in {optimal} of {count})");
    println!("  root upper bound    {ub_sum}");
    println!("  plain DFS finished  {checked} of {count}: optimum {bf_sum_checked}, plan_drain {n_sum_checked}, equal in {agree}");
    println!("  time per plan       greedy mean {gm:.3} ms (median {gmed:.3}, max {gmax:.3}); plan_drain mean {m:.3} ms (median {med:.3}, max {max:.3})");
    for k in 0..large_n {
        let (hosts, gs) = large(&mut r);
        let (greedy, tg) = timed(|| drain::plan_drain_with_budget(hosts.clone(), &gs, &opts, 0));
        let (plan, t) = timed(|| drain::plan_drain(hosts.clone(), &gs, &opts));
        println!(
            "60 guests / 100 hosts #{k}: greedy {} ({:.1} ms), plan_drain {} of at most {} (optimal: {}) in {:.1} ms",
            greedy.moves.len(),
            tg * 1e3,
            plan.moves.len(),
            plan.upper_bound,
            plan.optimal,
            t * 1e3
        );
    }
}
