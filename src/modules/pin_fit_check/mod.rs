//! Ansible module `pin_fit_check`: does a guest fit on a host, per NUMA cell, with which pCPUs;
//! or plan a whole drain. Never changes anything.
use crate::ansible::{Context, Failure, ModuleArgs, Outcome};
use crate::facts::{self, NumaFacts};
use crate::fit::drain::{self, DrainGuest};
use crate::fit::{self, FitOptions, GuestTopology, Request, ThreadPolicy};
use crate::limits;
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::PathBuf;

/// Check whether an instance fits on a host (per NUMA cell, which pCPUs), or plan a drain.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// Target host as `numa_facts` returned it (`ansible_facts.numa`).
    host_facts: Option<NumaFacts>,
    /// Target host read live from this libvirt URI (instead of `host_facts`).
    uri: Option<String>,
    /// nova.conf of the live target host (`uri`).
    nova_conf: Option<PathBuf>,
    /// A request like Nova's scheduler gets: flavor vcpus/memory_mb/extra_specs and image properties.
    request: Option<Request>,
    /// An existing guest (name or uuid) to place, read from `source_facts` or `source_uri`.
    guest: Option<String>,
    /// Facts of the host `guest` runs on (from numa_facts).
    source_facts: Option<NumaFacts>,
    /// libvirt URI of the host `guest` runs on (instead of `source_facts`).
    source_uri: Option<String>,
    /// Thread policy of the existing guest (libvirt does not record it). Default: prefer.
    thread_policy: Option<ThreadPolicy>,
    /// Also require free memory for unpinned NUMA guests (Nova lets them overcommit).
    #[serde(default = "yes")]
    strict_memory: bool,
    /// Fail the task when the guest does not fit (default: report `fits: false`).
    #[serde(default)]
    fail_on_no_fit: bool,
    /// Drain planning: place every guest of `drain.sources` on `drain.candidates`.
    drain: Option<DrainArgs>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct DrainArgs {
    /// Facts of the hosts to empty.
    sources: Vec<NumaFacts>,
    /// Facts of the hosts that may receive guests.
    candidates: Vec<NumaFacts>,
    /// Only these guests (names or uuids); default: every guest on the sources.
    #[serde(default)]
    guests: Vec<String>,
    /// Thread policy assumed for existing guests. Default: prefer.
    thread_policy: Option<ThreadPolicy>,
    /// Moves run at the same time (`plan.waves`), in all. At most 64.
    #[serde(default = "two", deserialize_with = "crate::ansible::u64_lenient")]
    max_parallel: u64,
    /// Moves run at the same time toward one destination. At most 16. Runs toward one
    /// destination wait for each other's claim there, so more than 1 mostly overlaps the waits.
    #[serde(default = "one", deserialize_with = "crate::ansible::u64_lenient")]
    max_parallel_per_dest: u64,
}

fn two() -> u64 {
    2
}
fn one() -> u64 {
    1
}

fn yes() -> bool {
    true
}
impl ModuleArgs for Args {
    fn validate(&self) -> Result<(), limits::Error> {
        if let Some(r) = &self.request {
            limits::vcpus("request.vcpus", r.vcpus)?;
            limits::memory_mib("request.memory_mb", r.memory_mb)?;
        }
        for (f, name) in [
            (&self.host_facts, "host_facts"),
            (&self.source_facts, "source_facts"),
        ] {
            if let Some(f) = f {
                f.check(name)?;
            }
        }
        if let Some(d) = &self.drain {
            for (i, f) in d.sources.iter().enumerate() {
                f.check(&format!("drain.sources[{i}]"))?;
            }
            for (i, f) in d.candidates.iter().enumerate() {
                f.check(&format!("drain.candidates[{i}]"))?;
            }
            limits::count("drain.max_parallel", d.max_parallel, 64)?;
            limits::count("drain.max_parallel_per_dest", d.max_parallel_per_dest, 16)?;
        }
        Ok(())
    }
}

fn target(a: &Args) -> anyhow::Result<NumaFacts> {
    match (&a.host_facts, &a.uri) {
        (Some(f), None) => Ok(f.clone()),
        (None, Some(uri)) => facts::gather_live(uri, a.nova_conf.as_deref(), None),
        (Some(_), Some(_)) => {
            Err(Failure::new("give the target host as host_facts or as uri, not both").into())
        }
        (None, None) => Err(Failure::new(
            "the target host is missing: give host_facts (from numa_facts) or uri",
        )
        .into()),
    }
}

/// The module's flow (`ansible::run` calls it with the parsed arguments).
pub fn run(a: Args, _ctx: &Context) -> anyhow::Result<Outcome> {
    let opts = FitOptions {
        strict_memory: a.strict_memory,
    };
    if let Some(d) = &a.drain {
        if a.request.is_some() || a.guest.is_some() || a.host_facts.is_some() || a.uri.is_some() {
            anyhow::bail!("drain planning takes only drain.sources and drain.candidates");
        }
        return Ok(drain(d, &opts));
    }
    let host = target(&a)?;
    let Some(what) = what_to_place(&a, &host)? else {
        return Ok(Outcome::new(false, "the request asks for no NUMA placement (no hw:cpu_policy=dedicated, hw:numa_nodes or hw:mem_page_size): it fits anywhere Nova's other filters allow")
            .with("fits", true)
            .with("numa", false)
            .with("placement", serde_json::Value::Null));
    };
    let state = host.host_state(what.exclude.as_deref());
    let who = what.name.map(|n| format!("{n} ")).unwrap_or_default();
    let topo = &what.topo;
    Ok(match fit::fit_topology(&state, topo, &opts) {
        Ok(p) => {
            let cells: Vec<String> = p
                .cells
                .iter()
                .map(|c| format!("guest cell {} -> host cell {}", c.guest_cell, c.host_cell))
                .collect();
            Outcome::new(
                false,
                format!("{who}fits on {}: {}", host.host, cells.join(", ")),
            )
            .with("fits", true)
            .with("numa", true)
            .with("placement", &p)
            .with("topology", topo)
        }
        Err(r) => {
            let mut o = Outcome::new(false, r.msg.clone())
                .with("fits", false)
                .with("numa", true)
                .with("reasons", &r.reasons)
                .with("placement", serde_json::Value::Null)
                .with("topology", topo);
            o.failed = a.fail_on_no_fit;
            o
        }
    })
}

/// The topology to place, with the guest's name and the uuid whose pins are not "taken".
struct ToPlace {
    topo: GuestTopology,
    name: Option<String>,
    exclude: Option<String>,
}

/// From `request` (None: it asks for no NUMA placement) or from an existing `guest`.
fn what_to_place(a: &Args, host: &NumaFacts) -> anyhow::Result<Option<ToPlace>> {
    match (&a.request, &a.guest) {
        (Some(r), None) => {
            let topo = fit::constraints(r)
                .map_err(|e| Failure::new(format!("the request is invalid: {e}")))?;
            Ok(topo.map(|topo| ToPlace {
                topo,
                name: None,
                exclude: None,
            }))
        }
        (None, Some(g)) => {
            let src = match (&a.source_facts, &a.source_uri) {
                (Some(f), None) => f.clone(),
                (None, Some(u)) => facts::gather_live(u, None, None)?,
                _ => anyhow::bail!("with guest, give exactly one of source_facts or source_uri"),
            };
            let guest = src
                .guests
                .iter()
                .find(|x| &x.name == g || &x.uuid == g)
                .ok_or_else(|| {
                    let names: Vec<&str> = src.guests.iter().map(|x| x.name.as_str()).collect();
                    Failure::new(format!(
                        "no guest '{g}' on {}; guests there: {}",
                        src.host,
                        names.join(", ")
                    ))
                })?;
            // Replanning a guest on the host it runs on: its own pins are not "taken".
            let exclude = host
                .guests
                .iter()
                .any(|x| x.uuid == guest.uuid)
                .then(|| guest.uuid.clone());
            Ok(Some(ToPlace {
                topo: GuestTopology::from_guest(guest, a.thread_policy),
                name: Some(guest.name.clone()),
                exclude,
            }))
        }
        _ => anyhow::bail!("give exactly one of request or guest"),
    }
}

fn drain(d: &DrainArgs, opts: &FitOptions) -> Outcome {
    let mut guests = Vec::new();
    let mut skipped = Vec::new();
    // Every host a uuid is defined on, over sources and candidates: a guest must live on one.
    let mut homes: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for f in d.sources.iter().chain(&d.candidates) {
        for g in &f.guests {
            let h = homes.entry(g.uuid.as_str()).or_default();
            if !h.contains(&f.host) {
                h.push(f.host.clone());
            }
        }
    }
    for s in &d.sources {
        for g in &s.guests {
            if d.guests.is_empty() || d.guests.iter().any(|w| w == &g.name || w == &g.uuid) {
                let skip = |why: String| serde_json::json!({"guest": g.name, "uuid": g.uuid, "source": s.host, "reason": why});
                // Floating guests have no pins to recompute: Nova's own live migration moves them.
                if !g.is_dedicated() {
                    skipped.push(skip(
                        "not pinned (no hw:cpu_policy=dedicated): use nova live-migration".into(),
                    ));
                    continue;
                }
                let on = &homes[g.uuid.as_str()];
                if on.len() > 1 {
                    skipped.push(skip(format!("defined on {} (one uuid on two hosts, a stale copy after an interrupted migration): keep the copy Nova records (openstack server show), undefine the other, then drain", on.join(" and "))));
                    continue;
                }
                if matches!(
                    g.state.as_str(),
                    "shutoff" | "shutdown" | "crashed" | "pmsuspended"
                ) {
                    skipped.push(skip(format!("{}: live migration needs a running guest; cold-migrate it (openstack server migrate) or start it first", g.state)));
                    continue;
                }
                guests.push(DrainGuest {
                    name: g.name.clone(),
                    uuid: g.uuid.clone(),
                    source: s.host.clone(),
                    topology: GuestTopology::from_guest(g, d.thread_policy),
                });
            }
        }
    }
    let hosts = d.candidates.iter().map(|f| f.host_state(None)).collect();
    let mut plan = drain::plan_drain(hosts, &guests, opts);
    plan.waves = drain::waves(
        &plan.moves,
        d.max_parallel as usize,
        d.max_parallel_per_dest as usize,
    );
    let bound = if plan.optimal {
        "no plan places more".to_string()
    } else {
        format!(
            "of at most {}: the search budget ran out before proving more impossible",
            plan.upper_bound
        )
    };
    let msg = format!(
        "drain plan: {} pinned guests placed ({bound}) in {} waves (at most {} moves at once, {} per destination), {} cannot be placed, {} skipped (unpinned: left to Nova; not running; or defined on two hosts)",
        plan.moves.len(),
        plan.waves.len(),
        d.max_parallel,
        d.max_parallel_per_dest,
        plan.unplaced.len(),
        skipped.len()
    );
    Outcome::new(false, msg)
        .with("plan", &plan)
        .with("skipped", &skipped)
        .with("fits", plan.unplaced.is_empty())
}
