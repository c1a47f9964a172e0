//! Ansible module `pin_fit_check`: does a guest fit on a host, per NUMA cell, with which pCPUs;
//! or plan a whole drain. Never changes anything.
//!
//! An existing guest's thread policy is not in its libvirt definition. With Nova's DB
//! (`db_connection`, or `db_nova_conf`), it is read from there (`nova::policy`) and wins; the
//! `thread_policy` arguments are for the guests the DB does not tell, and in `guest` mode an
//! argument that contradicts the DB is refused. The rest is assumed prefer, and said so.
use crate::ansible::{Context, Failure, ModuleArgs, Outcome};
use crate::facts::{self, NumaFacts};
use crate::fit::drain::{self, DrainGuest};
use crate::fit::{self, FitOptions, GuestTopology, PolicySource, Request, ThreadPolicy};
use crate::limits;
use crate::model::domain::Guest;
use crate::nova::db;
use crate::nova::policy::{self, Policies, PolicyOrigin};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeSet;
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
    /// Thread policy of the existing guest (libvirt does not record it), for when Nova's DB is
    /// not given or does not know the guest; contradicting what the DB records is an error.
    /// Default: prefer (said so in the result).
    thread_policy: Option<ThreadPolicy>,
    /// SQLAlchemy URL of Nova's cell database (mysql+pymysql://user:pass@host/nova), as
    /// nova_instance_fixup takes it; a secret. With it (or db_nova_conf), existing guests' CPU
    /// thread policies are read from Nova's DB (read only). Used with guest and drain.
    #[serde(default)]
    #[schemars(schema_with = "crate::ansible::secret")]
    db_connection: Option<String>,
    /// nova-conductor's nova.conf (Kolla: /etc/kolla/nova-conductor/nova.conf), read for
    /// `[database] connection` when db_connection is not given; nova_instance_fixup's nova_conf.
    db_nova_conf: Option<PathBuf>,
    /// Kolla's passwords.yml, with db_nova_conf; its nova_database_password is used when present.
    /// Default: /etc/kolla/passwords.yml when it exists.
    passwords_file: Option<PathBuf>,
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
    /// Thread policy for the guests whose policy Nova's DB does not tell (no DB given, or a
    /// guest it does not know). Default: prefer (assumed, and counted in msg).
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
    fn secrets(&self) -> Vec<String> {
        db::url_secrets(self.db_connection.as_deref())
    }
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
        return drain(&a, d, &opts);
    }
    let host = target(&a)?;
    let Some(what) = what_to_place(&a, &host)? else {
        return Ok(Outcome::new(false, "the request asks for no NUMA placement (no hw:cpu_policy=dedicated, hw:numa_nodes or hw:mem_page_size): it fits anywhere Nova's other filters allow")
            .with("fits", true)
            .with("numa", false)
            .with("placement", serde_json::Value::Null));
    };
    let state = host.host_state_isolating(what.exclude.as_deref(), &what.isolated);
    let who = what.name.map(|n| format!("{n} ")).unwrap_or_default();
    let topo = &what.topo;
    let mut out = match fit::fit_topology(&state, topo, &opts) {
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
    };
    if let Some(c) = &what.policy {
        out = out
            .with("thread_policy", topo.effective_thread_policy())
            .with("policy_source", c.source);
        if let Some(n) = &c.note {
            out = out.with("policy_note", n);
        }
        if c.source == PolicySource::Assumed {
            out.warnings.push(match &c.note {
                Some(n) => format!("{who}was placed as thread policy prefer, assumed: libvirt does not record it and {n}; give thread_policy if it is not prefer"),
                None => format!("{who}was placed as thread policy prefer, assumed: libvirt does not record it; give db_connection (or db_nova_conf) to read it from Nova, or thread_policy"),
            });
        }
    }
    Ok(out)
}

/// The topology to place, with the guest's name and the uuid whose pins are not "taken".
struct ToPlace {
    topo: GuestTopology,
    name: Option<String>,
    exclude: Option<String>,
    /// An existing pinned guest's thread policy, and where it comes from.
    policy: Option<Chosen>,
    /// Guests on the target that Nova's DB records isolate (uuids): their cores are whole.
    isolated: BTreeSet<String>,
}

/// The pinned guests on these hosts that Nova's DB records with thread policy isolate: Nova
/// counts their cores' sibling threads as taken. Only the DB is trusted here (not an argument).
fn isolated_residents<'a>(
    hosts: impl IntoIterator<Item = &'a NumaFacts>,
    db: Option<&Policies>,
) -> BTreeSet<String> {
    hosts
        .into_iter()
        .flat_map(|h| &h.guests)
        .filter(|g| g.is_dedicated())
        .filter(|g| {
            let c = choose(g, db, None);
            c.source == PolicySource::NovaDb && c.policy == Some(ThreadPolicy::Isolate)
        })
        .map(|g| g.uuid.clone())
        .collect()
}

/// Nova's DB as the arguments name it, if they do.
fn db_creds(a: &Args) -> anyhow::Result<Option<db::DbCreds>> {
    match (&a.db_connection, &a.db_nova_conf) {
        (None, None) if a.passwords_file.is_some() => Err(Failure::new(
            "passwords_file goes with db_nova_conf (nova-conductor's nova.conf): give both, or db_connection",
        )
        .into()),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(Failure::new(
            "give Nova's DB as db_connection or as db_nova_conf, not both",
        )
        .into()),
        (url, conf) => db::resolve(
            url.as_deref(),
            conf.as_deref().unwrap_or(std::path::Path::new("")),
            a.passwords_file.as_deref(),
        )
        .map(Some)
        .map_err(|e| match url {
            Some(_) => Failure::new(format!("db_connection: {e}")).into(),
            None => Failure::new(format!("{e}; give db_connection or db_nova_conf")).into(),
        }),
    }
}

/// The policies of these guests (uuids) per Nova's DB, when the arguments name it: one
/// read-only pass, then the connection is closed. With no uuid there is nothing to read, but
/// the DB arguments are still checked.
fn db_policies(a: &Args, uuids: &[&str]) -> anyhow::Result<Option<Policies>> {
    let Some(creds) = db_creds(a)? else {
        return Ok(None);
    };
    if uuids.is_empty() {
        return Ok(None);
    }
    let mut conn = db::connect(&creds).map_err(Failure::new)?;
    let p = policy::read_policies(&mut conn, &creds, uuids)
        .map_err(|e| Failure::new(format!("{e}; nothing was decided")))?;
    Ok(Some(p))
}

/// An existing guest's thread policy, where it comes from, and why Nova's DB (when given)
/// did not tell it.
#[derive(Debug, Clone, PartialEq)]
struct Chosen {
    policy: Option<ThreadPolicy>,
    source: PolicySource,
    note: Option<String>,
    origin: Option<PolicyOrigin>,
}

fn policy_name(t: ThreadPolicy) -> &'static str {
    match t {
        ThreadPolicy::Prefer => "prefer",
        ThreadPolicy::Isolate => "isolate",
        ThreadPolicy::Require => "require",
    }
}

fn origin_words(o: PolicyOrigin) -> &'static str {
    match o {
        PolicyOrigin::NumaTopology => "its instance_extra.numa_topology",
        PolicyOrigin::FlavorImage => "its flavor's extra specs and image properties",
    }
}

/// A pinned guest's thread policy: Nova's DB when it tells, else the argument, else assumed
/// (Nova's default, prefer).
fn choose(g: &Guest, db: Option<&Policies>, arg: Option<ThreadPolicy>) -> Chosen {
    let from_db = db.map(|p| match p.get(&g.uuid) {
        None => Err("Nova's database has no live instance with its uuid".to_string()),
        Some(Err(e)) => Err(format!("its rows in Nova's database do not tell: {e}")),
        Some(Ok(None)) => {
            Err("Nova's database records neither CPU policies nor a flavor for it".into())
        }
        Some(Ok(Some(p))) if !p.dedicated => Err(format!(
            "Nova's database records it unpinned ({}) while libvirt pins it",
            origin_words(p.origin)
        )),
        Some(Ok(Some(p))) => Ok(p),
    });
    match from_db {
        Some(Ok(p)) => Chosen {
            policy: p.thread_policy,
            source: PolicySource::NovaDb,
            note: None,
            origin: Some(p.origin),
        },
        other => Chosen {
            policy: arg,
            source: if arg.is_some() {
                PolicySource::Argument
            } else {
                PolicySource::Assumed
            },
            note: other.and_then(Result::err),
            origin: None,
        },
    }
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
                policy: None,
                isolated: BTreeSet::new(),
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
            // One read for the guest and the pinned guests already on the target.
            let uuids: Vec<&str> = std::iter::once(guest)
                .filter(|g| g.is_dedicated())
                .chain(host.guests.iter().filter(|g| g.is_dedicated()))
                .map(|g| g.uuid.as_str())
                .collect();
            let db = db_policies(a, &uuids)?;
            let isolated = isolated_residents([host], db.as_ref());
            let policy = if guest.is_dedicated() {
                let c = choose(guest, db.as_ref(), a.thread_policy);
                if let (PolicySource::NovaDb, Some(arg)) = (c.source, a.thread_policy) {
                    let recorded = c.policy.unwrap_or(ThreadPolicy::Prefer);
                    if arg != recorded {
                        return Err(Failure::new(format!(
                            "thread_policy {} contradicts Nova's DB, which records {} for {} ({}): drop thread_policy to use the DB's, or correct the instance's flavor if the DB is wrong",
                            policy_name(arg),
                            policy_name(recorded),
                            guest.name,
                            c.origin.map(origin_words).unwrap_or_default()
                        ))
                        .into());
                    }
                }
                Some(c)
            } else {
                None
            };
            Ok(Some(ToPlace {
                topo: GuestTopology::from_guest(guest, policy.as_ref().and_then(|c| c.policy)),
                name: Some(guest.name.clone()),
                exclude,
                policy,
                isolated,
            }))
        }
        _ => anyhow::bail!("give exactly one of request or guest"),
    }
}

/// Whether `drain.guests` selects this guest.
fn wanted(d: &DrainArgs, g: &Guest) -> bool {
    d.guests.is_empty() || d.guests.iter().any(|w| w == &g.name || w == &g.uuid)
}

/// Drain mode: the policies of the pinned guests to move from Nova's DB (when given), then the
/// plan.
fn drain(a: &Args, d: &DrainArgs, opts: &FitOptions) -> anyhow::Result<Outcome> {
    // The guests to move, and the pinned guests already on the candidates (whose isolate
    // holds whole cores there).
    let uuids: Vec<&str> = d
        .sources
        .iter()
        .flat_map(|s| &s.guests)
        .filter(|g| wanted(d, g))
        .chain(d.candidates.iter().flat_map(|c| &c.guests))
        .filter(|g| g.is_dedicated())
        .map(|g| g.uuid.as_str())
        .collect::<BTreeSet<&str>>()
        .into_iter()
        .collect();
    let db = db_policies(a, &uuids)?;
    Ok(drain_plan(d, opts, db.as_ref()))
}

/// The drain plan from the facts and what Nova's DB told (`None`: no DB given).
fn drain_plan(d: &DrainArgs, opts: &FitOptions, db: Option<&Policies>) -> Outcome {
    let mut guests = Vec::new();
    let mut notes = Vec::new();
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
            if wanted(d, g) {
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
                let c = choose(g, db, d.thread_policy);
                if let Some(n) = &c.note {
                    notes.push(serde_json::json!({"guest": g.name, "uuid": g.uuid, "source": s.host, "policy_source": c.source, "note": n}));
                }
                guests.push(DrainGuest {
                    name: g.name.clone(),
                    uuid: g.uuid.clone(),
                    source: s.host.clone(),
                    topology: GuestTopology::from_guest(g, c.policy),
                    policy_source: c.source,
                });
            }
        }
    }
    let isolated = isolated_residents(&d.candidates, db);
    let hosts = d
        .candidates
        .iter()
        .map(|f| f.host_state_isolating(None, &isolated))
        .collect();
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
    let count = |src: PolicySource| guests.iter().filter(|g| g.policy_source == src).count();
    let msg = format!(
        "drain plan: {} pinned guests placed ({bound}) in {} waves (at most {} moves at once, {} per destination), {} cannot be placed, {} skipped (unpinned: left to Nova; not running; or defined on two hosts); thread policies: {} from Nova's DB, {} from drain.thread_policy, {} assumed prefer{}",
        plan.moves.len(),
        plan.waves.len(),
        d.max_parallel,
        d.max_parallel_per_dest,
        plan.unplaced.len(),
        skipped.len(),
        count(PolicySource::NovaDb),
        count(PolicySource::Argument),
        count(PolicySource::Assumed),
        match (db, notes.is_empty()) {
            (None, _) if count(PolicySource::Assumed) > 0 => " (libvirt does not record them; give db_connection or db_nova_conf to read them from Nova)",
            (None, _) => "",
            (Some(_), false) => " (policy_notes says why Nova's DB did not tell)",
            (Some(_), true) => "",
        }
    );
    Outcome::new(false, msg)
        .with("plan", &plan)
        .with("skipped", &skipped)
        .with("policy_notes", &notes)
        .with("fits", plan.unplaced.is_empty())
}

#[cfg(test)]
mod tests;
