//! Ansible module `neutron_port_binding`: move a guest's Neutron port bindings through Neutron's
//! REST API the way Nova does around a live migration, and audit ports against where guests run.
//!
//! Pipeline: [`auth`] (credentials, Keystone token, endpoint) -> [`api`] (which binding API,
//! the ports and their bindings: reads only) -> [`plan`] (pure: actions per port, or a refusal
//! before anything is written) -> writes in order ([`execute`]) -> for `active`, a wait until
//! every port is ACTIVE on its host.
//!
//! Writes are not atomic across ports: a failure midway is reported with, per port, the actions
//! done (`actions`) and those not done (`not_done`); `state: rolled_back` cleans up.
//! Check mode does GETs only.

pub mod api;
pub mod auth;
pub mod plan;

use crate::ansible::{Context, Failure, ModuleArgs, Outcome};
use crate::limits;
use api::{Api, Client, Http, Neutron, Port, Transport};
use plan::{Action, Observed, PortState, Refusal};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const MODULE: &str = "neutron_port_binding";
/// Device ids per `GET /v2.0/ports?device_id=...` (keeps the URL well below 8 KiB).
pub const PORTS_CHUNK: usize = 50;
pub const MAX_TIMEOUT_S: u64 = 600;
pub const MAX_WAIT_ACTIVE_S: u64 = 3600;
pub const MAX_GUESTS: u64 = 100_000;

/// What to make of the guest's port bindings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Prepared,
    Active,
    RolledBack,
    Audited,
}

/// Authentication without Keystone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthType {
    Noauth,
}

/// Move a guest's Neutron port bindings (Nova's live-migration sequence), or audit them.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// C(prepared): an inactive binding on C(host) (before the migration; on Queens only a check
    /// that an L2 agent is alive there). C(active): the binding on C(host) active and the only one
    /// (after the migration), then a wait until the ports are ACTIVE. C(rolled_back): the inactive
    /// binding on C(host) deleted (the migration failed). C(audited): ports of C(guests) bound
    /// elsewhere than where they run, moved with C(fix).
    pub state: State,
    /// The guest: its ports are those whose device_id is this uuid (prepared, active, rolled_back).
    pub instance_uuid: Option<String>,
    /// The destination compute host as Neutron and Nova name it (prepared, active, rolled_back).
    pub host: Option<String>,
    /// For C(audited): guest uuid -> the host where it runs now.
    #[serde(default)]
    pub guests: BTreeMap<String, String>,
    /// For C(audited): move each mismatched port's binding to where its guest runs (as state=active).
    #[serde(default)]
    pub fix: bool,
    /// Keystone v3 password credentials. Exactly one of os_auth, kolla_config_dir, auth_type=noauth.
    pub os_auth: Option<auth::OsAuth>,
    /// Kolla's config dir (/etc/kolla): admin-openrc.sh (else globals.yml) and passwords.yml's
    /// keystone_admin_password give the credentials.
    pub kolla_config_dir: Option<PathBuf>,
    /// C(noauth): no token, for neutron-server with auth_strategy = noauth; needs neutron_url.
    pub auth_type: Option<AuthType>,
    /// Neutron's endpoint (http://10.0.0.10:9696); overrides the Keystone catalog's.
    pub neutron_url: Option<String>,
    /// Seconds each HTTP request may take, 1 to 600.
    #[serde(default = "thirty", deserialize_with = "crate::ansible::u64_lenient")]
    pub timeout_s: u64,
    /// For C(active): seconds to wait until every port is ACTIVE on its host (0: do not wait,
    /// only report the status), at most 3600.
    #[serde(default = "sixty", deserialize_with = "crate::ansible::u64_lenient")]
    pub wait_active_s: u64,
    /// CA bundle (PEM) to verify Keystone's and Neutron's TLS certificates (Kolla internal TLS);
    /// default: the openrc's OS_CACERT, else Mozilla's roots.
    pub cacert: Option<PathBuf>,
    /// Verify TLS certificates.
    #[serde(default = "yes")]
    pub validate_certs: bool,
}

fn thirty() -> u64 {
    30
}
fn sixty() -> u64 {
    60
}
fn yes() -> bool {
    true
}

impl ModuleArgs for Args {
    fn secrets(&self) -> Vec<String> {
        self.os_auth
            .iter()
            .map(|a| a.password.clone())
            .filter(|p| !p.is_empty())
            .collect()
    }
    fn validate(&self) -> Result<(), limits::Error> {
        if self.timeout_s == 0 {
            return Err(limits::Error::new("timeout_s", limits::Kind::NotPositive));
        }
        limits::at_most("timeout_s", self.timeout_s, MAX_TIMEOUT_S, "seconds")?;
        limits::at_most(
            "wait_active_s",
            self.wait_active_s,
            MAX_WAIT_ACTIVE_S,
            "seconds",
        )?;
        limits::at_most("guests", self.guests.len() as u64, MAX_GUESTS, "guests")?;
        if let Some(d) = &self.kolla_config_dir {
            limits::abs_dir("kolla_config_dir", d)?;
        }
        Ok(())
    }
}

/// What stops the module before or while it talks to Neutron.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{MODULE}: {0}")]
    Args(String),
    #[error("{MODULE}: {0}")]
    Auth(auth::Error),
    #[error("{MODULE}: Neutron: {0}")]
    Api(api::Error),
    #[error("{MODULE}: {0}")]
    Refused(Refusal),
}

// The inner errors are part of the message, not a `source` (anyhow's `{:#}` would print twice).
impl From<auth::Error> for Error {
    fn from(e: auth::Error) -> Self {
        Error::Auth(e)
    }
}
impl From<api::Error> for Error {
    fn from(e: api::Error) -> Self {
        Error::Api(e)
    }
}
impl From<Refusal> for Error {
    fn from(e: Refusal) -> Self {
        Error::Refused(e)
    }
}

/// A uuid as Nova writes them (8-4-4-4-12 hex digits).
pub fn is_uuid(u: &str) -> bool {
    u.len() == 36
        && u.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn check_host(field: &str, h: &str) -> Result<(), Error> {
    if h.trim().is_empty() || h.len() > 255 || h.chars().any(|c| c.is_control()) {
        return Err(Error::Args(format!(
            "{field} '{}' is not a host name",
            api::bounded(h, 64)
        )));
    }
    Ok(())
}

/// The checks across arguments (the runtime checked each one's type and bounds).
pub fn check_args(a: &Args) -> Result<(), Error> {
    let ways = [
        a.os_auth.is_some(),
        a.kolla_config_dir.is_some(),
        a.auth_type.is_some(),
    ];
    if ways.iter().filter(|w| **w).count() != 1 {
        return Err(Error::Args(
            "give exactly one of os_auth, kolla_config_dir, auth_type=noauth".into(),
        ));
    }
    if a.auth_type == Some(AuthType::Noauth) && a.neutron_url.is_none() {
        return Err(Error::Args("auth_type=noauth needs neutron_url".into()));
    }
    if let Some(u) = &a.neutron_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(Error::Args(format!(
                "neutron_url '{}' is not an http:// or https:// URL",
                api::bounded(u, 100)
            )));
        }
    }
    match a.state {
        State::Audited => {
            if a.instance_uuid.is_some() || a.host.is_some() {
                return Err(Error::Args(
                    "state=audited takes guests (uuid -> host), not instance_uuid/host".into(),
                ));
            }
            for (u, h) in &a.guests {
                if !is_uuid(u) {
                    return Err(Error::Args(format!(
                        "guests: '{}' is not a uuid",
                        api::bounded(u, 64)
                    )));
                }
                check_host(&format!("guests.{u}"), h)?;
            }
        }
        s => {
            let (Some(u), Some(h)) = (&a.instance_uuid, &a.host) else {
                return Err(Error::Args(format!(
                    "state={} needs instance_uuid and host",
                    state_name(s)
                )));
            };
            if !is_uuid(u) {
                return Err(Error::Args(format!(
                    "instance_uuid '{}' is not a uuid (8-4-4-4-12 hex digits)",
                    api::bounded(u, 64)
                )));
            }
            check_host("host", h)?;
            if !a.guests.is_empty() || a.fix {
                return Err(Error::Args("guests and fix are for state=audited".into()));
            }
        }
    }
    Ok(())
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Prepared => "prepared",
        State::Active => "active",
        State::RolledBack => "rolled_back",
        State::Audited => "audited",
    }
}

/// Credentials -> token -> endpoint -> a Neutron client. Every secret met on the way (the
/// password, also one read from Kolla's files, and the token) is registered with the client,
/// and scrubbed from an error of this step.
pub fn connect(a: &Args) -> Result<Client, Error> {
    let mut known = Vec::new();
    connect_with(a, &mut known).map_err(|e| match e {
        // Only the Keystone answer could echo a secret; the others name files, keys and URLs.
        Error::Auth(auth::Error::Keystone(api_err)) => Error::Args(api::scrub(
            &auth::Error::Keystone(api_err).to_string(),
            &known,
        )),
        e => e,
    })
}

fn connect_with(a: &Args, known: &mut Vec<String>) -> Result<Client, Error> {
    let (creds, rc_cacert) = match (&a.os_auth, &a.kolla_config_dir) {
        (Some(o), _) => (Some(o.clone()), None),
        (None, Some(dir)) => {
            let (c, ca) = auth::from_kolla_dir(dir)?;
            (Some(c), ca)
        }
        _ => (None, None),
    };
    let mut http = Http::new(&Transport {
        timeout: Duration::from_secs(a.timeout_s),
        cacert: a.cacert.clone().or(rc_cacert),
        validate_certs: a.validate_certs,
    })?;
    if let Some(c) = &creds {
        known.push(c.password.clone());
    }
    let catalogued = match &creds {
        Some(c) => auth::login(&mut http, c, a.neutron_url.is_none())?,
        None => None,
    };
    let base = a
        .neutron_url
        .clone()
        .or(catalogued)
        .ok_or_else(|| Error::Args("no Neutron endpoint: give neutron_url".into()))?;
    Ok(Client {
        http,
        base: api::neutron_base(&base),
        noauth: a.auth_type == Some(AuthType::Noauth),
    })
}

/// One port to bring to `host`: what was seen and what to write.
#[derive(Debug, Clone)]
pub struct Job {
    pub observed: Observed,
    pub host: String,
    pub actions: Vec<Action>,
}

/// A port in the result.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PortReport {
    pub id: String,
    pub network_id: String,
    pub mac_address: String,
    pub instance_uuid: String,
    /// The host this run brought (or checked) the port to.
    pub host: String,
    pub before: PortState,
    pub after: PortState,
    /// Done (in check mode: would be done), in order.
    pub actions: Vec<String>,
    /// Planned but not done (a write failed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_done: Vec<String>,
    /// The port's status (after the wait, for `active`).
    pub status: String,
}

fn report(job: &Job, done: usize, after: &Observed) -> PortReport {
    let o = &job.observed;
    PortReport {
        id: o.port.id.clone(),
        network_id: o.port.network_id.clone(),
        mac_address: o.port.mac_address.clone(),
        instance_uuid: o.port.device_id.clone(),
        host: job.host.clone(),
        before: plan::state_of(o),
        after: plan::state_of(after),
        actions: job.actions[..done].iter().map(|a| a.to_string()).collect(),
        not_done: job.actions[done..].iter().map(|a| a.to_string()).collect(),
        status: after.port.status.clone(),
    }
}

/// Ports of `uuids`, asked in chunks, sorted by (device, id).
pub fn ports_of(n: &dyn Neutron, uuids: &[String]) -> Result<Vec<Port>, api::Error> {
    let mut out = Vec::new();
    for chunk in uuids.chunks(PORTS_CHUNK) {
        out.extend(n.ports(chunk)?);
    }
    out.sort_by(|a, b| (&a.device_id, &a.id).cmp(&(&b.device_id, &b.id)));
    out.dedup_by(|a, b| a.id == b.id);
    Ok(out)
}

fn observe(n: &dyn Neutron, api: Api, port: Port) -> Result<Observed, api::Error> {
    let bindings = match api {
        Api::BindingExtended => n.bindings(&port.id)?,
        Api::HostId => Vec::new(),
    };
    Ok(Observed { port, bindings })
}

/// Why the writes stopped: the port (index into the jobs), the action, and the error text.
#[derive(Debug)]
pub struct Stopped {
    pub job: usize,
    pub done: usize,
    pub msg: String,
}

/// The writes, in order; returns the ports as they are after them (for the reports). On the
/// first failure, stops and says where (`Stopped`), with the states so far.
pub fn execute(
    n: &dyn Neutron,
    state: State,
    jobs: &[Job],
) -> (Vec<Observed>, Vec<usize>, Option<Stopped>) {
    let mut afters: Vec<Observed> = jobs.iter().map(|j| j.observed.clone()).collect();
    let mut dones = vec![0usize; jobs.len()];
    for (ji, job) in jobs.iter().enumerate() {
        let id = job.observed.port.id.as_str();
        let mut skip_activate = false;
        for (ai, action) in job.actions.iter().enumerate() {
            let result = write_one(n, state, job, action, &mut afters[ji], &mut skip_activate);
            if let Err(msg) = result {
                return (
                    afters,
                    dones,
                    Some(Stopped {
                        job: ji,
                        done: ai,
                        msg: format!("{action} for port {id} failed: {msg}"),
                    }),
                );
            }
            dones[ji] = ai + 1;
        }
    }
    (afters, dones, None)
}

/// One write of one job, `after` updated to what it made. `skip_activate`: a binding this job
/// created came out active already, so its activation is only recorded.
fn write_one(
    n: &dyn Neutron,
    state: State,
    job: &Job,
    action: &Action,
    after: &mut Observed,
    skip_activate: &mut bool,
) -> Result<(), String> {
    let id = job.observed.port.id.as_str();
    let applied = |after: &Observed| plan::apply(after, std::slice::from_ref(action));
    match action {
        Action::CreateBinding { host } => {
            *skip_activate = create_binding(n, state, job, host, after)?;
            Ok(())
        }
        Action::ActivateBinding { .. } if *skip_activate => {
            *after = applied(after);
            Ok(())
        }
        Action::ActivateBinding { host } => n
            .activate_binding(id, host)
            .map(|_| *after = applied(after))
            .map_err(|e| e.to_string()),
        Action::DeleteBinding { host } => match n.delete_binding(id, host) {
            // Gone already (a concurrent cleanup): the state asked for holds.
            Err(e) if e.status() != Some(404) => Err(e.to_string()),
            _ => {
                *after = applied(after);
                Ok(())
            }
        },
        Action::SetHostId { host } => n
            .set_host_id(id, host)
            .map(|p| after.port = p)
            .map_err(|e| e.to_string()),
    }
}

/// A new binding on `host`, checked (for `prepared`, as the destination's; else it must not have
/// failed to bind); a refused one is deleted again. Ok(true): it came out active (a port without
/// a host-bound active binding gets the new one active: Neutron replaced the host-less one).
fn create_binding(
    n: &dyn Neutron,
    state: State,
    job: &Job,
    host: &str,
    after: &mut Observed,
) -> Result<bool, String> {
    let id = job.observed.port.id.as_str();
    let b = n
        .create_binding(&job.observed.port, host)
        .map_err(|e| e.to_string())?;
    let check = if state == State::Prepared {
        plan::check_dest_binding(&job.observed, &b)
    } else if b.failed() {
        Err(Refusal::CannotBind {
            port: id.into(),
            host: host.to_string(),
            vif_type: b.vif_type.clone(),
        })
    } else {
        Ok(())
    };
    if let Err(refusal) = check {
        let undo = match n.delete_binding(id, host) {
            Ok(()) => "the new binding was deleted again".to_string(),
            Err(e) => format!("deleting the new binding failed too: {e}"),
        };
        return Err(format!("{refusal} ({undo})"));
    }
    let active = b.is_active();
    if active {
        after.bindings.retain(|x| !x.host.is_empty());
        after.port.host_id = host.to_string();
    }
    after.bindings.push(b);
    Ok(active)
}

/// Poll until every port is ACTIVE with `binding:host_id` = its job's host, or `wait` passes.
/// `afters` get the ports as last seen. Err: the first port that is not there yet.
pub fn wait_active(
    n: &dyn Neutron,
    jobs: &[Job],
    afters: &mut [Observed],
    wait: Duration,
    poll: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    loop {
        let mut pending = None;
        for (j, after) in jobs.iter().zip(afters.iter_mut()) {
            let p = n.port(&j.observed.port.id).map_err(|e| {
                format!(
                    "waiting for port {} to be ACTIVE on {}: {e}",
                    j.observed.port.id, j.host
                )
            })?;
            let wired = p.status == "ACTIVE" && p.host_id == j.host;
            after.port = p;
            if !wired && pending.is_none() {
                pending = Some(j);
            }
        }
        let Some(j) = pending else { return Ok(()) };
        let now = Instant::now();
        if now >= deadline {
            let p = afters
                .iter()
                .find(|o| o.port.id == j.observed.port.id)
                .map(|o| o.port.clone())
                .unwrap_or_default();
            return Err(format!(
                "port {} is {} on {} after {} s (binding:host_id '{}'): the L2 agent on {} has not wired it",
                p.id,
                if p.status.is_empty() { "without a status" } else { p.status.as_str() },
                j.host,
                wait.as_secs(),
                p.host_id,
                j.host
            ));
        }
        std::thread::sleep(poll.min(deadline - now));
    }
}

fn diff_of(reports: &[PortReport]) -> Value {
    let side = |f: fn(&PortReport) -> &PortState| {
        let m: Map<String, Value> = reports
            .iter()
            .map(|r| (r.id.clone(), json!(f(r))))
            .collect();
        Value::Object(m)
    };
    json!({"before": side(|r| &r.before), "after": side(|r| &r.after)})
}

/// Reports of jobs planned but not run (check mode, or before a wait).
fn planned_reports(jobs: &[Job], check_mode: bool) -> Vec<PortReport> {
    jobs.iter()
        .map(|j| {
            let after = plan::apply(&j.observed, &j.actions);
            let done = if check_mode { j.actions.len() } else { 0 };
            let mut r = report(j, done, &after);
            r.not_done.clear();
            r
        })
        .collect()
}

/// Plan every port (reads only); a refusal of any port stops before any write.
fn plan_jobs(
    n: &dyn Neutron,
    api: Api,
    state: State,
    ports: Vec<(Port, String)>,
) -> Result<Vec<Job>, Error> {
    let mut jobs = Vec::new();
    let mut refusals = Vec::new();
    for (port, host) in ports {
        let o = observe(n, api, port)?;
        let planned = match state {
            State::Prepared => plan::prepared(api, &o, &host),
            State::RolledBack => plan::rolled_back(api, &o, &host),
            State::Active | State::Audited => plan::active(api, &o, &host),
        };
        match planned {
            Ok(actions) => jobs.push(Job {
                observed: o,
                host,
                actions,
            }),
            Err(r) => refusals.push(r),
        }
    }
    match refusals.len() {
        0 => Ok(jobs),
        1 => Err(refusals.remove(0).into()),
        _ => Err(Error::Args(
            refusals
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}

/// Writes, then (for active and audit fixes) the wait; the reports. A failure is a [`Failure`]
/// carrying `api` and `ports` with what was done and what not.
fn apply_jobs(
    n: &dyn Neutron,
    api: Api,
    state: State,
    jobs: &[Job],
    ctx: &Context,
    wait: Duration,
) -> Result<Vec<PortReport>, Failure> {
    if ctx.check_mode {
        return Ok(planned_reports(jobs, true));
    }
    let (mut afters, dones, stopped) = execute(n, state, jobs);
    let reports = |afters: &[Observed]| -> Vec<PortReport> {
        jobs.iter()
            .zip(afters)
            .zip(&dones)
            .map(|((j, a), d)| report(j, *d, a))
            .collect()
    };
    if let Some(s) = stopped {
        let r = reports(&afters);
        let done: usize = dones.iter().sum();
        let port = &jobs[s.job].observed.port.id;
        return Err(Failure::new(format!(
            "{MODULE}: {}; {} write(s) were done before it (see ports[].actions; ports[].not_done were not done), port {port} and any after it are unfinished: rerun, or run state=rolled_back",
            s.msg, done
        ))
        .with("api", api)
        .with("ports", r));
    }
    let waits = matches!(state, State::Active | State::Audited) && !wait.is_zero();
    if waits {
        if let Err(msg) = wait_active(n, jobs, &mut afters, wait, Duration::from_secs(1)) {
            return Err(Failure::new(format!("{MODULE}: {msg}"))
                .with("api", api)
                .with("ports", reports(&afters)));
        }
    }
    Ok(reports(&afters))
}

/// The module: checks, connects, then one of the states.
pub fn run(a: Args, ctx: &Context) -> anyhow::Result<Outcome> {
    check_args(&a)?;
    let client = connect(&a)?;
    let secrets = client.http.secrets().to_vec();
    run_with(&client, &a, ctx).map_err(|e| scrub_error(e, &secrets))
}

/// A scrubbed copy of an error (message and fields): secrets read at run time (a password from
/// Kolla's files, the token) are not in [`ModuleArgs::secrets`], so the runtime cannot.
fn scrub_error(e: anyhow::Error, secrets: &[String]) -> anyhow::Error {
    fn walk(v: &mut Value, secrets: &[String]) {
        match v {
            Value::String(s) => *s = api::scrub(s, secrets),
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, secrets)),
            Value::Object(m) => m.values_mut().for_each(|x| walk(x, secrets)),
            _ => {}
        }
    }
    match e.downcast::<Failure>() {
        Ok(mut f) => {
            f.msg = api::scrub(&f.msg, secrets);
            let mut fields = Value::Object(std::mem::take(&mut f.fields));
            walk(&mut fields, secrets);
            if let Value::Object(m) = fields {
                f.fields = m;
            }
            f.into()
        }
        Err(e) => Failure::new(api::scrub(&format!("{e:#}"), secrets)).into(),
    }
}

/// [`run`] after connecting: testable with a fake [`Neutron`].
pub fn run_with(n: &dyn Neutron, a: &Args, ctx: &Context) -> anyhow::Result<Outcome> {
    let api = Api::from_aliases(&n.extensions().map_err(Error::from)?);
    let wait = Duration::from_secs(a.wait_active_s);
    if a.state == State::Audited {
        return audit(n, api, a, ctx, wait);
    }
    let (uuid, host) = match (&a.instance_uuid, &a.host) {
        (Some(u), Some(h)) => (u.clone(), h.clone()),
        _ => return Err(Error::Args("instance_uuid and host are needed".into()).into()),
    };
    let ports = ports_of(n, std::slice::from_ref(&uuid)).map_err(Error::from)?;
    if ports.is_empty() {
        return Ok(Outcome::new(
            false,
            format!("guest {uuid} has no Neutron port (none with this device_id): nothing to do"),
        )
        .with("api", api)
        .with("ports", Vec::<PortReport>::new()));
    }
    if a.state == State::Prepared && api == Api::HostId {
        plan::l2_agent_alive(&n.agents(&host).map_err(Error::from)?, &host).map_err(Error::from)?;
    }
    let jobs = plan_jobs(
        n,
        api,
        a.state,
        ports.into_iter().map(|p| (p, host.clone())).collect(),
    )?;
    let reports = apply_jobs(n, api, a.state, &jobs, ctx, wait)?;
    let writes: usize = reports.iter().map(|r| r.actions.len()).sum();
    let what = summary(a.state, api, &host, &reports, ctx.check_mode);
    let msg = format!("guest {uuid}: {what} (api {})", api.name());
    let mut o = Outcome::new(writes > 0, msg)
        .with("api", api)
        .with("ports", &reports);
    if a.state == State::Prepared {
        o.set("plug", bridges_to_plug(&jobs));
    }
    o.diff = Some(diff_of(&reports));
    Ok(o)
}

/// The bridges libvirt needs on the destination before the guest can start there (Linux
/// bridge ports; Nova's os-vif creates them in pre_live_migration): the role plugs them.
fn bridges_to_plug(jobs: &[Job]) -> Vec<String> {
    let mut plug: Vec<String> = jobs
        .iter()
        .filter(|j| j.observed.port.vif_type == "bridge")
        .map(|j| {
            let details = j.observed.active().map(|b| b.vif_details.clone());
            api::linux_bridge_name(&j.observed.port.network_id, &details.unwrap_or_default())
        })
        .collect();
    plug.sort();
    plug.dedup();
    plug
}

/// What the run did (or would do) to the guest's ports, for the message.
fn summary(state: State, api: Api, host: &str, reports: &[PortReport], check_mode: bool) -> String {
    let writes: usize = reports.iter().map(|r| r.actions.len()).sum();
    let moved = reports.iter().filter(|r| !r.actions.is_empty()).count();
    let would = if check_mode { "would be " } else { "" };
    match (state, api) {
        (State::Prepared, Api::HostId) => format!(
            "Neutron has no binding-extended (Queens): nothing to prepare; an L2 agent is alive on {host}"
        ),
        (State::Prepared, _) => format!(
            "inactive binding on {host} {would}created for {moved} of {} port(s), {} already had one",
            reports.len(),
            reports.len() - moved
        ),
        (State::RolledBack, Api::HostId) => {
            "Neutron has no binding-extended (Queens): no inactive binding to roll back".to_string()
        }
        (State::RolledBack, _) => format!(
            "inactive binding on {host} {would}deleted from {moved} of {} port(s)",
            reports.len()
        ),
        _ => {
            let status = if check_mode {
                String::new()
            } else {
                let active = reports
                    .iter()
                    .filter(|r| r.status == "ACTIVE" && r.after.host == host)
                    .count();
                format!("; {active} of {} ACTIVE on {host}", reports.len())
            };
            if moved == 0 {
                format!(
                    "all {} port(s) already bound to {host} only{status}",
                    reports.len()
                )
            } else {
                format!(
                    "{moved} of {} port(s) {would}moved to {host} ({writes} writes){status}",
                    reports.len()
                )
            }
        }
    }
}

fn audit(
    n: &dyn Neutron,
    api: Api,
    a: &Args,
    ctx: &Context,
    wait: Duration,
) -> anyhow::Result<Outcome> {
    let uuids: Vec<String> = a.guests.keys().cloned().collect();
    let ports = ports_of(n, &uuids).map_err(Error::from)?;
    let mut mismatches = plan::mismatches(&ports, &a.guests);
    let mut reports = Vec::new();
    if a.fix && !mismatches.is_empty() {
        let todo: Vec<(Port, String)> = mismatches
            .iter()
            .filter_map(|m| {
                let p = ports.iter().find(|p| p.id == m.port_id)?;
                Some((p.clone(), m.running_host.clone()))
            })
            .collect();
        let jobs = plan_jobs(n, api, State::Audited, todo)?;
        reports = apply_jobs(n, api, State::Audited, &jobs, ctx, wait)?;
        for m in mismatches.iter_mut() {
            m.fixed = !ctx.check_mode
                && reports
                    .iter()
                    .any(|r| r.id == m.port_id && r.after.host == m.running_host);
        }
    }
    let writes: usize = reports.iter().map(|r| r.actions.len()).sum();
    let fixed = if !a.fix {
        String::new()
    } else if ctx.check_mode {
        format!(", {} would be moved ({writes} writes)", reports.len())
    } else {
        format!(
            ", {} moved where their guest runs ({writes} writes)",
            reports.len()
        )
    };
    let msg = format!(
        "audit of {} guest(s), {} port(s): {} bound elsewhere than where the guest runs{fixed} (api {})",
        a.guests.len(),
        ports.len(),
        mismatches.len(),
        api.name()
    );
    let mut o = Outcome::new(writes > 0, msg)
        .with("api", api)
        .with("ports_checked", ports.len())
        .with("mismatches", &mismatches)
        .with("ports", &reports);
    if !reports.is_empty() {
        o.diff = Some(diff_of(&reports));
    }
    Ok(o)
}

#[cfg(test)]
mod tests;
