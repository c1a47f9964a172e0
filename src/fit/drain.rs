//! Drain planning: put every guest of the hosts to empty on a candidate host, never
//! double-booking a pCPU, memory or pages (each move is `fit::place` on the host as the earlier
//! moves of the plan left it, then `fit::claim`).
//!
//! Two stages:
//! - greedy: the hardest guests first (largest guest cell, then memory, then name), each on the
//!   host where it fits best (the smallest largest-free-cell), the way `fit::place` picks cells
//!   and pCPUs. Hosts are indexed by their largest free cell so a drain over thousands of hosts
//!   only tries the hosts that could hold the guest.
//! - exact search (when the greedy plan leaves guests behind that an upper bound says might be
//!   placed): depth-first branch and bound over the guests in the same order, with the greedy
//!   plan as the incumbent. A guest goes to one of the candidate hosts — every distinct host
//!   state once (hosts whose free state is the same shape are tried once) and, on hosts with
//!   more cells than the guest, every set of host cells — or is left behind. The bound is the
//!   guests placed so far plus the remaining guests that still fit somewhere on their own,
//!   capped by the free pCPUs and memory left. A state already reached with at least as many
//!   guests placed is not searched again. The search stops at a deterministic work budget
//!   (`SEARCH_BUDGET`, about half a second for 60 guests on 100 hosts): the plan is then the
//!   best found and `optimal` is false, with `upper_bound` the most any plan could place.
//!
//! What "optimal" means here: exact over the choice of host and of host cells for every guest,
//! in the plan's order. Within the chosen cells, which pCPUs (and page size) a guest takes is
//! the packing policy of `fit::place` (partly used cores first, so whole cores stay free for
//! `isolate`/`require`), and a multi-cell guest's cells map onto the chosen host cells as
//! `place` maps them. With SMT hosts and `isolate`/`require` guests another pCPU choice or move
//! order could in rare cases hold one more guest; without SMT the pCPUs of a cell are
//! interchangeable and the search is exact. `upper_bound` is a bound on every plan, not only on
//! the ones the search considers.

use crate::fit::{claim, fit_topology, no_numa_msg, place, FitOptions, GuestTopology, HostState};
use crate::fit::{HostCell, Placement, PolicySource, ThreadPolicy};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct DrainGuest {
    pub name: String,
    #[serde(default)]
    pub uuid: String,
    #[serde(default)]
    pub source: String,
    pub topology: GuestTopology,
    /// Where `topology.thread_policy` comes from: reported with the guest's move or refusal.
    #[serde(default)]
    pub policy_source: PolicySource,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct DrainMove {
    pub guest: String,
    pub uuid: String,
    pub source: String,
    pub dest: String,
    pub placement: Placement,
    /// The thread policy it was placed with (prefer when none was asked; null when unpinned).
    pub thread_policy: Option<ThreadPolicy>,
    pub policy_source: PolicySource,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct DrainRefusal {
    pub guest: String,
    pub uuid: String,
    pub source: String,
    /// The thread policy it was tried with (as in `DrainMove`).
    pub thread_policy: Option<ThreadPolicy>,
    pub policy_source: PolicySource,
    pub msg: String,
    /// Why it fits on none of the candidates once the plan's moves are made: the closest
    /// host's per-cell reasons.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Default)]
pub struct DrainPlan {
    /// In the order to run them: each placement is valid on its host after the earlier moves.
    pub moves: Vec<DrainMove>,
    pub unplaced: Vec<DrainRefusal>,
    /// No plan places more guests (see the module docs for the model); false when the search
    /// budget ran out first.
    #[serde(default)]
    pub optimal: bool,
    /// The most guests any plan could place: `moves.len()` when `optimal`.
    #[serde(default)]
    pub upper_bound: usize,
    /// The moves grouped into waves that run at the same time (indexes into `moves`): see
    /// `waves`. One move per wave when none is asked for.
    #[serde(default)]
    pub waves: Vec<Vec<usize>>,
}

/// Group moves into waves that run at the same time: at most `max_parallel` moves in a wave and
/// at most `per_dest` toward one destination (runs toward one destination exclude each other
/// through its claim anyway). A wave is filled one move at a time from the destination with the
/// most moves left, which needs the fewest waves: the larger of `moves / max_parallel` and, per
/// destination, `its moves / per_dest`, rounded up. Each destination keeps the plan's order.
/// With `max_parallel` 1, the plan's order. Limits of 0 count as 1.
pub fn waves(moves: &[DrainMove], max_parallel: usize, per_dest: usize) -> Vec<Vec<usize>> {
    let (max_parallel, per_dest) = (max_parallel.max(1), per_dest.max(1));
    if max_parallel == 1 {
        return (0..moves.len()).map(|i| vec![i]).collect();
    }
    // Destinations in order of first appearance, each with its moves still to run.
    let mut queues: Vec<(&str, std::collections::VecDeque<usize>)> = Vec::new();
    for (i, m) in moves.iter().enumerate() {
        match queues.iter_mut().find(|(d, _)| *d == m.dest) {
            Some((_, q)) => q.push_back(i),
            None => queues.push((&m.dest, [i].into())),
        }
    }
    let mut out = Vec::new();
    let mut left = moves.len();
    while left > 0 {
        let mut wave = Vec::new();
        let mut taken = vec![0usize; queues.len()];
        while wave.len() < max_parallel {
            // The destination with the most moves left that has room in this wave (first on ties).
            let pick = (0..queues.len())
                .filter(|&d| taken[d] < per_dest && !queues[d].1.is_empty())
                .fold(None, |best: Option<usize>, d| match best {
                    Some(b) if queues[b].1.len() >= queues[d].1.len() => Some(b),
                    _ => Some(d),
                });
            let Some(d) = pick else { break };
            wave.extend(queues[d].1.pop_front());
            taken[d] += 1;
        }
        left -= wave.len();
        wave.sort_unstable();
        out.push(wave);
    }
    out
}

/// The exact search's work budget, in search nodes plus `place` computations. Deterministic
/// (a plan does not depend on the machine's speed); about 0.5 s of one core for 60 guests on
/// 100 hosts.
pub const SEARCH_BUDGET: u64 = 80_000;

/// Plan a drain: as many guests placed as any plan could (module docs), else the best found
/// within `SEARCH_BUDGET`.
pub fn plan_drain(hosts: Vec<HostState>, guests: &[DrainGuest], opts: &FitOptions) -> DrainPlan {
    plan_drain_with_budget(hosts, guests, opts, SEARCH_BUDGET)
}

/// `plan_drain` with another search budget; 0 gives the greedy plan (with its bound).
pub fn plan_drain_with_budget(
    hosts: Vec<HostState>,
    guests: &[DrainGuest],
    opts: &FitOptions,
    budget: u64,
) -> DrainPlan {
    let gs = prepare(guests);
    let greedy = greedy(hosts.clone(), &gs, opts);
    let greedy_n = greedy.iter().filter(|a| a.is_some()).count();
    let mut s = Search::new(hosts.clone(), &gs, opts, budget);
    let root_bound = s.root_bound();
    let (assignment, optimal, upper_bound) = if greedy_n >= root_bound {
        (greedy, true, greedy_n)
    } else {
        s.best_n = greedy_n;
        s.best = greedy;
        s.target = root_bound;
        let w = s.witness.clone();
        s.dfs(0, 0, &w);
        let optimal = !s.exhausted;
        let ub = if optimal { s.best_n } else { root_bound };
        (s.best, optimal, ub)
    };
    finish(hosts, &gs, assignment, opts, optimal, upper_bound)
}

/// A guest with what the search needs about it, in the planning order.
struct Guest<'a> {
    g: &'a DrainGuest,
    /// Its largest pinned guest cell needs at least this many free pCPUs in one host cell.
    need: usize,
    /// For the capacity bound, the guest as one piece: its pCPUs (one cell), else its smallest
    /// guest cell (it needs a host cell with that many free, and takes at least that many).
    item: usize,
    /// pCPUs and MiB a placement takes at least.
    cpus: usize,
    mem: u64,
    /// Guests with equal topologies share a class (and cached placements).
    class: usize,
}

fn prepare(guests: &[DrainGuest]) -> Vec<Guest<'_>> {
    let mut order: Vec<usize> = (0..guests.len()).collect();
    order.sort_by_key(|i| {
        let t = &guests[*i].topology;
        let biggest =
            t.cells.iter().map(|c| c.vcpus.len()).max().unwrap_or(0) + t.emulator_isolate as usize;
        (
            std::cmp::Reverse(biggest),
            std::cmp::Reverse(t.total_memory_mb()),
            guests[*i].name.clone(),
        )
    });
    let mut classes: Vec<&GuestTopology> = Vec::new();
    order
        .into_iter()
        .map(|i| {
            let g = &guests[i];
            let t = &g.topology;
            let class = match classes.iter().position(|c| **c == *t) {
                Some(c) => c,
                None => {
                    classes.push(t);
                    classes.len() - 1
                }
            };
            let (need, item) = if t.dedicated {
                // The isolated emulator pCPU is on the host cell of guest cell 0.
                let emu = t.emulator_isolate as usize;
                let sizes = t
                    .cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| c.vcpus.len() + emu * (i == 0) as usize);
                let max = sizes.clone().max().unwrap_or(0);
                let min = sizes.min().unwrap_or(0);
                (max, if t.cells.len() == 1 { max } else { min })
            } else {
                (0, 0)
            };
            let cpus = if t.dedicated {
                t.total_vcpus() + t.emulator_isolate as usize
            } else {
                0
            };
            Guest {
                g,
                need,
                item,
                cpus,
                mem: t.total_memory_mb(),
                class,
            }
        })
        .collect()
}

/// The largest number of free pCPUs in one cell: the host index key.
fn score(h: &HostState) -> usize {
    h.cells
        .iter()
        .map(|c| c.free_cpus().len())
        .max()
        .unwrap_or(0)
}

/// Per guest (planning order): the host index and placement, or None (left behind).
type Assignment = Vec<Option<(usize, Placement)>>;

/// The greedy plan: each guest on the host with the smallest largest-free-cell it fits on.
fn greedy(mut hosts: Vec<HostState>, gs: &[Guest], opts: &FitOptions) -> Assignment {
    let mut index: BTreeSet<(usize, usize)> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (score(h), i))
        .collect();
    let mut out = Vec::with_capacity(gs.len());
    for g in gs {
        let found = index
            .range((g.need, 0)..)
            .filter(|(_, hi)| hosts[*hi].name != g.g.source)
            .find_map(|&(s, hi)| place(&hosts[hi], &g.g.topology, opts).map(|p| (s, hi, p)));
        out.push(found.map(|(s, hi, p)| {
            index.remove(&(s, hi));
            claim(&mut hosts[hi], &p);
            index.insert((score(&hosts[hi]), hi));
            (hi, p)
        }));
    }
    out
}

/// The plan from an assignment: the moves in planning order, then any guest left behind that
/// still fits after them (none when the search finished), then the refusals, explained against
/// the hosts as the moves leave them.
fn finish(
    mut hosts: Vec<HostState>,
    gs: &[Guest],
    assignment: Assignment,
    opts: &FitOptions,
    optimal: bool,
    upper_bound: usize,
) -> DrainPlan {
    let mut plan = DrainPlan::default();
    let mv = |g: &Guest, dest: &HostState, p: Placement| DrainMove {
        guest: g.g.name.clone(),
        uuid: g.g.uuid.clone(),
        source: g.g.source.clone(),
        dest: dest.name.clone(),
        placement: p,
        thread_policy: g.g.topology.effective_thread_policy(),
        policy_source: g.g.policy_source,
    };
    let mut left = Vec::new();
    for (g, a) in gs.iter().zip(assignment) {
        match a {
            Some((hi, p)) => {
                claim(&mut hosts[hi], &p);
                plan.moves.push(mv(g, &hosts[hi], p));
            }
            None => left.push(g),
        }
    }
    for g in left {
        let mut index: Vec<(usize, usize)> = hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.name != g.g.source)
            .map(|(i, h)| (score(h), i))
            .collect();
        index.sort_unstable();
        let tried: Vec<usize> = index
            .iter()
            .filter(|(s, _)| *s >= g.need)
            .map(|(_, hi)| *hi)
            .collect();
        if let Some((hi, p)) = tried
            .iter()
            .find_map(|hi| place(&hosts[*hi], &g.g.topology, opts).map(|p| (*hi, p)))
        {
            claim(&mut hosts[hi], &p);
            plan.moves.push(mv(g, &hosts[hi], p));
            continue;
        }
        // Explain against the roomiest host tried, else the roomiest candidate (no host has a
        // cell with enough free pCPUs).
        let closest = tried.last().or(index.last().map(|(_, hi)| hi));
        let reasons = match closest {
            Some(hi) => match fit_topology(&hosts[*hi], &g.g.topology, opts) {
                Err(r) => r
                    .reasons
                    .into_iter()
                    .map(|r| format!("{}: {r}", hosts[*hi].name))
                    .collect(),
                Ok(_) => unreachable!("a host the guest fits on was tried"),
            },
            None => vec![format!(
                "no candidate host has a cell with {} free pCPUs",
                g.need
            )],
        };
        plan.unplaced.push(DrainRefusal {
            guest: g.g.name.clone(),
            uuid: g.g.uuid.clone(),
            source: g.g.source.clone(),
            thread_policy: g.g.topology.effective_thread_policy(),
            policy_source: g.g.policy_source,
            msg: no_numa_msg(g.g.topology.total_vcpus(), g.g.topology.total_memory_mb()),
            reasons,
        });
    }
    plan.optimal = optimal && plan.moves.len() >= upper_bound;
    plan.upper_bound = upper_bound.max(plan.moves.len());
    plan.waves = waves(&plan.moves, 1, 1);
    plan
}

// ---------------------------------------------------------------------------------------------
// The exact search.

/// 128 bits of SipHash (two fixed-key hashers): a host state's identity in the caches.
fn hash128(f: impl Fn(&mut DefaultHasher)) -> u128 {
    let mut a = DefaultHasher::new();
    let mut b = DefaultHasher::new();
    0u8.hash(&mut a);
    1u8.hash(&mut b);
    f(&mut a);
    f(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

fn hash_cell_rest(c: &HostCell, h: &mut DefaultHasher) {
    c.id.hash(h);
    c.memory.hash(h);
    c.memory_usage.hash(h);
    for p in &c.mempages {
        (p.size_kb, p.total, p.used, p.reserved).hash(h);
    }
}

/// The exact state of a host (pCPU ids included, name excluded): the key of cached placements.
fn content_hash(host: &HostState) -> u128 {
    hash128(|h| {
        for c in &host.cells {
            hash_cell_rest(c, h);
            c.cpuset.hash(h);
            c.pinned_cpus.intersection(&c.cpuset).hash(h);
            c.siblings.hash(h);
        }
    })
}

/// The shape of a host: equal shapes take the same guests, in the same cells, with the same
/// shapes left (pCPU ids aside). A cell whose cores all have the same number of threads is
/// its free threads per core (sorted); otherwise its exact pCPUs. `tag` tells apart hosts some
/// guest may not go to (its source).
fn shape_hash(host: &HostState, tag: &str) -> u128 {
    hash128(|h| {
        tag.hash(h);
        for c in &host.cells {
            hash_cell_rest(c, h);
            let len = c.siblings.first().map(|s| s.len()).unwrap_or(1);
            let uniform = c
                .siblings
                .iter()
                .all(|s| s.len() == len && s.is_subset(&c.cpuset));
            if uniform {
                let mut free: Vec<usize> = c
                    .siblings
                    .iter()
                    .map(|s| s.count_and_not(&c.pinned_cpus, None))
                    .collect();
                free.sort_unstable();
                (
                    0u8,
                    c.cpuset.len(),
                    c.cpuset.count_and_not(&c.pinned_cpus, None),
                    len,
                    free,
                )
                    .hash(h);
            } else {
                (1u8, &c.cpuset, c.pinned_cpus.intersection(&c.cpuset)).hash(h);
                c.siblings.hash(h);
            }
        }
    })
}

const ALL_CELLS: u64 = u64::MAX;
/// Hosts with more cells than this are tried with `place`'s choice of cells only.
const MAX_CELL_CHOICE: usize = 8;
const CACHE_CAP: usize = 1 << 18;
const SEEN_CAP: usize = 1 << 20;

struct Search<'a> {
    gs: &'a [Guest<'a>],
    opts: &'a FitOptions,
    hosts: Vec<HostState>,
    content: Vec<u128>,
    shape: Vec<u128>,
    score: Vec<usize>,
    /// Names some guest comes from: such a host is not interchangeable with another.
    sources: BTreeSet<&'a str>,
    /// Hosts some guest may go to (not the source of every guest): the capacity bounds.
    serves: Vec<bool>,
    /// Sum of the hosts' shapes: the state as a multiset.
    state: u128,
    /// Guest indexes by `item`, by pCPUs, by memory, ascending (the capacity bounds).
    by_item: Vec<usize>,
    by_cpus: Vec<usize>,
    max_item: usize,
    by_mem: Vec<usize>,
    cache: HashMap<(u128, usize, u64), Option<Placement>>,
    seen: HashMap<(usize, u128), usize>,
    /// Per guest, a host it fits on alone in the root state (None: none).
    witness: Vec<Option<usize>>,
    work: u64,
    budget: u64,
    exhausted: bool,
    cur: Assignment,
    best: Assignment,
    best_n: usize,
    target: usize,
}

impl<'a> Search<'a> {
    fn new(hosts: Vec<HostState>, gs: &'a [Guest<'a>], opts: &'a FitOptions, budget: u64) -> Self {
        let sources: BTreeSet<&str> = gs.iter().map(|g| g.g.source.as_str()).collect();
        let mut s = Search {
            gs,
            opts,
            content: Vec::new(),
            shape: Vec::new(),
            score: Vec::new(),
            serves: hosts
                .iter()
                .map(|h| gs.iter().any(|g| g.g.source != h.name))
                .collect(),
            sources,
            state: 0,
            by_item: (0..gs.len()).collect(),
            by_cpus: (0..gs.len()).collect(),
            max_item: gs.iter().map(|g| g.item).max().unwrap_or(0),
            by_mem: (0..gs.len()).collect(),
            cache: HashMap::new(),
            seen: HashMap::new(),
            witness: Vec::new(),
            work: 0,
            budget,
            exhausted: false,
            cur: vec![None; gs.len()],
            best: Vec::new(),
            best_n: 0,
            target: 0,
            hosts,
        };
        s.by_item.sort_by_key(|i| (gs[*i].item, *i));
        s.by_cpus.sort_by_key(|i| (gs[*i].cpus, *i));
        s.by_mem.sort_by_key(|i| (gs[*i].mem, *i));
        for hi in 0..s.hosts.len() {
            s.content.push(0);
            s.shape.push(0);
            s.score.push(0);
            s.rehash(hi);
            s.state = s.state.wrapping_add(s.shape[hi]);
        }
        s
    }

    fn rehash(&mut self, hi: usize) {
        let h = &self.hosts[hi];
        let tag = if self.sources.contains(h.name.as_str()) {
            h.name.as_str()
        } else {
            ""
        };
        self.content[hi] = content_hash(h);
        self.shape[hi] = shape_hash(h, tag);
        self.score[hi] = score(h);
    }

    /// `place` on host `hi` restricted to the host cells in `mask` (positions), cached.
    fn place_on(&mut self, hi: usize, gi: usize, mask: u64) -> Option<Placement> {
        let key = (self.content[hi], self.gs[gi].class, mask);
        if let Some(p) = self.cache.get(&key) {
            return p.clone();
        }
        self.work += 1;
        let host = &self.hosts[hi];
        let topo = &self.gs[gi].g.topology;
        let p = if mask == ALL_CELLS {
            place(host, topo, self.opts)
        } else {
            let view = HostState {
                name: String::new(),
                cells: host
                    .cells
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, c)| c.clone())
                    .collect(),
            };
            place(&view, topo, self.opts)
        };
        if self.cache.len() >= CACHE_CAP {
            self.cache.clear();
        }
        self.cache.insert(key, p.clone());
        p
    }

    fn fits_on(&mut self, hi: usize, gi: usize) -> bool {
        let g = &self.gs[gi];
        self.hosts[hi].name != g.g.source
            && self.score[hi] >= g.need
            && self.place_on(hi, gi, ALL_CELLS).is_some()
    }

    fn find_witness(&mut self, gi: usize) -> Option<usize> {
        (0..self.hosts.len()).find(|hi| self.fits_on(*hi, gi))
    }

    /// The root's witnesses and bound: no plan places more guests than this.
    fn root_bound(&mut self) -> usize {
        let w: Vec<Option<usize>> = (0..self.gs.len()).map(|gi| self.find_witness(gi)).collect();
        self.witness = w;
        let w = self.witness.clone();
        self.bound(0, &w)
    }

    /// The guests from `i` on that can still be placed, at most: those that fit somewhere
    /// alone, and no more than the free pCPUs and memory hold, smallest first. For pCPUs, at
    /// every size k: the guests of k pCPUs or more only use cells with k or more free, so they
    /// take no more than those cells' free pCPUs (the smallest guests are always the most that
    /// meet every such limit: swapping a guest for a smaller one keeps each limit).
    fn bound(&self, i: usize, witness: &[Option<usize>]) -> usize {
        let alive = |j: &usize| *j >= i && witness[*j].is_some();
        let n = (i..self.gs.len()).filter(alive).count();
        // cap[k]: free pCPUs in the cells with at least k free.
        let top = self.max_item.max(1);
        let mut cap = vec![0usize; top + 1];
        let mut mem_cap = 0u64;
        for (h, _) in self.hosts.iter().zip(&self.serves).filter(|(_, s)| **s) {
            for c in &h.cells {
                let free = c.cpuset.count_and_not(&c.pinned_cpus, None);
                for k in cap.iter_mut().take(free.min(top) + 1).skip(1) {
                    *k += free;
                }
                mem_cap += c.memory.saturating_sub(c.memory_usage);
            }
        }
        let mut used = vec![0usize; top + 1];
        let mut by_item = 0;
        for j in self.by_item.iter().filter(|j| alive(j)) {
            let s = self.gs[*j].item;
            if (1..=s).any(|k| used[k] + s > cap[k]) {
                break;
            }
            for u in used.iter_mut().take(s + 1).skip(1) {
                *u += s;
            }
            by_item += 1;
        }
        // All pCPUs a guest takes, from the cells that can hold its smallest guest cell.
        let smallest = self
            .by_item
            .iter()
            .find(|j| alive(j))
            .map(|j| self.gs[*j].item);
        let cpu_cap = cap[smallest.unwrap_or(1).clamp(1, top)];
        let mut cpu_used = 0;
        let by_cpus = self
            .by_cpus
            .iter()
            .filter(|j| alive(j))
            .take_while(|j| {
                cpu_used += self.gs[**j].cpus;
                cpu_used <= cpu_cap
            })
            .count();
        let mut mem_used = 0u64;
        let by_mem = self
            .by_mem
            .iter()
            .filter(|j| alive(j))
            .take_while(|j| {
                let g = &self.gs[**j];
                if g.g.topology.dedicated || self.opts.strict_memory {
                    mem_used += g.mem;
                }
                mem_used <= mem_cap
            })
            .count();
        n.min(by_item).min(by_cpus).min(by_mem)
    }

    fn dfs(&mut self, i: usize, placed: usize, witness: &[Option<usize>]) {
        if self.exhausted || self.best_n >= self.target {
            return;
        }
        self.work += 1;
        if self.work > self.budget {
            self.exhausted = true;
            return;
        }
        if i == self.gs.len() {
            if placed > self.best_n {
                self.best_n = placed;
                self.best = self.cur.clone();
            }
            return;
        }
        if placed + self.bound(i, witness) <= self.best_n {
            return;
        }
        match self.seen.get(&(i, self.state)) {
            Some(p) if *p >= placed => return,
            _ => {
                if self.seen.len() < SEEN_CAP {
                    self.seen.insert((i, self.state), placed);
                }
            }
        }
        if witness[i].is_some() {
            self.branch(i, placed, witness);
        }
        self.cur[i] = None;
        self.dfs(i + 1, placed, witness);
    }

    /// Every distinct way to place guest `i`, best fit first.
    fn branch(&mut self, i: usize, placed: usize, witness: &[Option<usize>]) {
        let g = &self.gs[i];
        let mut order: Vec<usize> = (0..self.hosts.len())
            .filter(|hi| self.score[*hi] >= g.need && self.hosts[*hi].name != g.g.source)
            .collect();
        order.sort_by_key(|hi| (self.score[*hi], *hi));
        let k = g.g.topology.cells.len();
        let mut shapes_tried: Vec<u128> = Vec::new();
        for hi in order {
            if shapes_tried.contains(&self.shape[hi]) {
                continue;
            }
            shapes_tried.push(self.shape[hi]);
            let Some(p) = self.place_on(hi, i, ALL_CELLS) else {
                continue;
            };
            let cells = self.hosts[hi].cells.len();
            let mut options = vec![];
            if cells > k && cells <= MAX_CELL_CHOICE {
                let chosen = cell_mask(&self.hosts[hi], &p);
                options.push(p);
                for mask in 1u64..(1 << cells) {
                    if mask.count_ones() as usize == k && mask != chosen {
                        if let Some(p) = self.place_on(hi, i, mask) {
                            options.push(p);
                        }
                    }
                }
            } else {
                options.push(p);
            }
            let mut after: Vec<u128> = Vec::new();
            for p in options {
                let saved = self.hosts[hi].clone();
                let (content, shape, score) = (self.content[hi], self.shape[hi], self.score[hi]);
                claim(&mut self.hosts[hi], &p);
                self.rehash(hi);
                if !after.contains(&self.shape[hi]) {
                    after.push(self.shape[hi]);
                    self.state = self.state.wrapping_sub(shape).wrapping_add(self.shape[hi]);
                    let w = self.rewitness(i, hi, witness);
                    self.cur[i] = Some((hi, p));
                    self.dfs(i + 1, placed + 1, &w);
                    self.cur[i] = None;
                    self.state = self.state.wrapping_sub(self.shape[hi]).wrapping_add(shape);
                }
                self.hosts[hi] = saved;
                (self.content[hi], self.shape[hi], self.score[hi]) = (content, shape, score);
                if self.exhausted || self.best_n >= self.target {
                    return;
                }
            }
        }
    }

    /// The witnesses after host `hi` changed: guests that relied on it look again (fitting
    /// only gets harder down the search, so a guest without one stays without).
    #[allow(clippy::needless_range_loop)] // reads self while writing w[j]
    fn rewitness(&mut self, i: usize, hi: usize, witness: &[Option<usize>]) -> Vec<Option<usize>> {
        let mut w = witness.to_vec();
        for j in i + 1..self.gs.len() {
            if w[j] == Some(hi) && !self.fits_on(hi, j) {
                w[j] = self.find_witness(j);
            }
        }
        w
    }
}

/// The host cells (positions) a placement uses.
fn cell_mask(host: &HostState, p: &Placement) -> u64 {
    p.cells
        .iter()
        .filter_map(|c| host.cells.iter().position(|h| h.id == c.host_cell))
        .fold(0, |m, i| m | (1 << i))
}

#[cfg(test)]
mod tests;
