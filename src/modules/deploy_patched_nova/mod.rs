//! The in-band Nova patch rollout (`deploy_patched_nova`): move the files of a Nova package
//! from pristine to patched (or back), verified by checksum before anything changes, with
//! backups, byte-compilation by Nova's own Python, a health gate, and a rollback to
//! byte-identical files on any failure. The package is in Kolla containers (restarted after the
//! change) or a directory on this machine (`path`, no restart); `nova::tree` holds the two.

pub mod tree;
pub mod units;

use crate::ansible::{Context, Failure, ModuleArgs, Outcome};
use crate::io::container::{sha256_hex, Engine};
use crate::limits;
use crate::model::diff;
use crate::modules::deploy_patched_nova::tree::{
    sum_of, ContainerTree, LocalTree, NovaInfo, NovaTree,
};
use crate::nova::hooks::{HookedFile, PatchSet, CORE, MARKER};
use anyhow::{anyhow, bail, Context as _, Result};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

const M: &str = "deploy_patched_nova";

/// Roll the in-band Nova patch into Kolla's Nova containers or a Nova directory on this
/// machine, or restore pristine Nova.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// A directory holding `hooks.toml` and `src/numa_repin_patch.py` (the layout of
    /// roles/nova_patch) to roll out instead of the hooks and core built into this module.
    pub patch_dir: Option<PathBuf>,
    /// `auto` (docker when it answers, else podman), `docker` or `podman`. Containers only.
    #[serde(default = "default_auto")]
    pub container_engine: String,
    /// Nova's version in the containers or under `path`: `auto` asks each container (with
    /// `path`, the package metadata next to it, `nova-*.dist-info/METADATA` or `nova*.egg-info`,
    /// else what `python` knows of it). Only reported and used to file the backups: the hooks
    /// are applied to whatever files the target holds, whichever release or build they are.
    #[serde(default = "default_auto")]
    pub release: String,
    /// Container name -> the parts of the nova package it gets (path prefixes inside the package;
    /// a prefix equal to a file path names that file). The default applies when `path` is not
    /// given; `containers` and `path` exclude each other.
    #[serde(default)]
    #[schemars(default = "default_containers_doc")]
    pub containers: Option<BTreeMap<String, Vec<String>>>,
    /// Instead of containers: a Nova package directory on this machine, patched in place (no
    /// container, no restart): the `nova` directory itself, holding `__init__.py`, e.g.
    /// `/opt/venv/lib/python3.7/site-packages/nova`. Excludes `containers`.
    pub path: Option<PathBuf>,
    /// With `path`: the systemd units that run from that Nova (`openstack-nova-compute`,
    /// `nova-compute`), restarted after the change when `restart` is true; each must be active
    /// before the run, and stay active (no restart of its own) for 5 s after it, within
    /// `health_timeout_s`, or the files are rolled back and the units restarted again.
    pub services: Option<Vec<String>>,
    /// With `path`: the parts of the nova package to patch (path prefixes as in `containers`).
    /// Default: every file of the patch set.
    pub parts: Option<Vec<String>>,
    /// `present`: patched files in place; `absent`: pristine files restored.
    #[serde(default)]
    pub state: PatchState,
    /// Restart the containers after changing their files (the health gate follows). With
    /// `path` not applicable: restart the services that run from it yourself.
    #[serde(default = "default_true")]
    pub restart: bool,
    /// Seconds a restarted container has to pass the health gate before the rollback; with
    /// `path`, the most each run of `python` (byte-compile, health import) may take.
    #[serde(default = "default_health_timeout")]
    pub health_timeout_s: u64,
    /// Health gate: also require every patched module to import with Nova's Python (with
    /// `path`: `python -c 'import nova.x.y'`, the parent of `path` first on sys.path, from that
    /// very directory). Turn off only where Nova's modules cannot import outside their service
    /// (or, with `path`, when `python` lacks Nova's dependencies); a container's gate is then it
    /// running and its own healthcheck, when it has one.
    #[serde(default = "default_true")]
    pub health_import: bool,
    /// Host directory for the pristine originals, per container (or `path`) and release.
    #[serde(default = "default_backup_dir")]
    pub backup_dir: PathBuf,
    /// Nova's Python. In a container default: the Kolla venv's, else python3, else python. With
    /// `path`: an interpreter on this machine (default `python3` on PATH) that byte-compiles the
    /// files and runs the health import.
    pub python: Option<String>,
}

impl ModuleArgs for Args {
    fn validate(&self) -> std::result::Result<(), limits::Error> {
        limits::abs_dir("backup_dir", &self.backup_dir)
    }
}

#[derive(Deserialize, JsonSchema, Default, Clone, Copy, PartialEq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum PatchState {
    #[default]
    Present,
    Absent,
}

fn default_auto() -> String {
    "auto".into()
}
fn default_true() -> bool {
    true
}
fn default_health_timeout() -> u64 {
    60
}
fn default_backup_dir() -> PathBuf {
    PathBuf::from("/var/lib/numa-repin/nova-patch-backup")
}
fn default_containers_doc() -> Option<BTreeMap<String, Vec<String>>> {
    Some(default_containers())
}
fn default_containers() -> BTreeMap<String, Vec<String>> {
    let mut m = BTreeMap::new();
    m.insert(
        "nova_conductor".into(),
        vec![
            "conductor/".into(),
            "db/".into(),
            "numa_repin_patch.py".into(),
        ],
    );
    m.insert(
        "nova_compute".into(),
        vec![
            "compute/".into(),
            "virt/".into(),
            "numa_repin_patch.py".into(),
        ],
    );
    m
}

fn matches(path: &str, prefixes: &[String]) -> bool {
    prefixes
        .iter()
        .any(|p| path == p || (p.ends_with('/') && path.starts_with(p.as_str())))
}

/// One file of one tree: where it is, what it holds now, what it must hold.
#[derive(Debug, Clone)]
struct FilePlan {
    rel: String,
    path: String,
    current: Option<Vec<u8>>,
    target: Option<Vec<u8>>,
    status: String,
    /// The current file is Nova's own, unpatched (the only content ever backed up as the
    /// original).
    pristine: bool,
    /// The hooks (and variants) that make the target from the original.
    hooks: Vec<String>,
}

/// What one tree (a container, or the directory of `path`) holds and must hold.
struct TreePlan<'t> {
    tree: &'t dyn NovaTree,
    info: NovaInfo,
    release: String,
    files: Vec<FilePlan>,
    /// Why files of this tree cannot be planned; `unmatched` names the hooks that did not match.
    refused: Vec<String>,
    unmatched: Vec<String>,
    /// The container's healthcheck status before this run (None: it has no healthcheck). A
    /// rollback restores this, not more: it waits for `healthy` only if it was healthy.
    health_before: Option<String>,
}

impl TreePlan<'_> {
    fn name(&self) -> &str {
        self.tree.name()
    }
    fn changes(&self) -> impl Iterator<Item = &FilePlan> {
        self.files.iter().filter(|f| f.current != f.target)
    }
    fn report(&self, restarted: bool) -> Map<String, Value> {
        let files: Map<String, Value> = self
            .files
            .iter()
            .map(|f| (f.rel.clone(), json!(f.status)))
            .collect();
        let mut m = Map::new();
        m.insert("nova_path".into(), json!(self.info.path));
        m.insert("python".into(), json!(self.info.interpreter));
        m.insert("python_version".into(), json!(self.info.python));
        m.insert("nova_version".into(), json!(self.info.version));
        m.insert("release".into(), json!(self.release));
        m.insert("files".into(), Value::Object(files));
        m.insert("status".into(), json!(self.status()));
        let hooks: Map<String, Value> = self
            .files
            .iter()
            .filter(|f| !f.hooks.is_empty())
            .map(|f| (f.rel.clone(), json!(f.hooks)))
            .collect();
        if !hooks.is_empty() {
            m.insert("hooks".into(), Value::Object(hooks));
        }
        if !self.refused.is_empty() {
            m.insert("refused".into(), json!(self.refused));
        }
        if self.tree.restartable() {
            m.insert("restarted".into(), json!(restarted));
        } else {
            m.insert("restart".into(), json!("not applicable"));
        }
        m
    }

    /// One word for the audit: `patched`, `unpatched`, `partly patched`, `patched by an older
    /// build`, `unsupported (<the hooks that did not match>)` or `refused (<why>)`.
    fn status(&self) -> String {
        if !self.unmatched.is_empty() {
            return format!("unsupported ({})", self.unmatched.join("; "));
        }
        if !self.refused.is_empty() {
            return format!("refused ({})", self.refused.join("; "));
        }
        // What each file holds now, whatever this run is about to do with it.
        let holds = |f: &FilePlan| match f.status.as_str() {
            "patched" | "would restore" | "would remove" => "patched",
            "would update" => "older",
            _ => "unpatched",
        };
        let all = |w: &str| self.files.iter().all(|f| holds(f) == w);
        if self.files.iter().any(|f| holds(f) == "older") {
            "patched by an older build".into()
        } else if all("patched") {
            "patched".into()
        } else if all("unpatched") {
            "unpatched".into()
        } else {
            "partly patched".into()
        }
    }
}

/// How the result names what was patched: per container under `containers` (with the engine),
/// or the one directory of `path` at the top level.
enum Layout {
    Containers { engine: String },
    Path,
}

fn fail(msg: String) -> anyhow::Error {
    Failure::new(msg).into()
}

pub fn run(a: Args, ctx: &Context) -> Result<Outcome> {
    if let Some(path) = &a.path {
        if a.containers.is_some() {
            return Err(fail(format!(
                "{M}: `path` and `containers` exclude each other: give `path` to patch a Nova \
                 directory on this machine, or `containers` for Kolla containers; nothing was changed"
            )));
        }
        if a.services.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(fail(format!(
                "{M}: `services` is empty: omit it when no service runs from `path`, or name \
                 its systemd units"
            )));
        }
        if a.parts.as_ref().is_some_and(|p| p.is_empty()) {
            return Err(fail(format!(
                "{M}: `parts` is empty: omit it to patch every file of the patch set, or name \
                 prefixes inside the nova package (compute/, numa_repin_patch.py)"
            )));
        }
        let tree = LocalTree::new(
            path,
            Duration::from_secs(a.health_timeout_s),
            a.services.clone().unwrap_or_default(),
        )
        .map_err(|e| fail(format!("{M}: {e:#}")))?;
        return rollout(&a, ctx, &[(&tree, a.parts.as_deref())], Layout::Path);
    }
    if a.parts.is_some() {
        return Err(fail(format!(
            "{M}: `parts` goes with `path`; for containers give each its parts in `containers`"
        )));
    }
    if a.services.is_some() {
        return Err(fail(format!(
            "{M}: `services` goes with `path` (a host-installed Nova); containers are restarted \
             themselves"
        )));
    }
    let containers = a.containers.clone().unwrap_or_else(default_containers);
    if containers.is_empty() {
        return Err(fail(format!(
            "{M}: `containers` is empty: name the Nova containers to patch"
        )));
    }
    for (c, parts) in &containers {
        if parts.is_empty() {
            return Err(fail(format!(
                "{M}: container {c} is given no parts of the patch"
            )));
        }
    }
    let engine = Engine::detect(&a.container_engine).map_err(|e| fail(format!("{M}: {e:#}")))?;
    let missing: Vec<&str> = containers
        .keys()
        .filter(|c| !engine.exists(c))
        .map(|s| s.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(fail(format!(
            "{M}: no container named {} ({}); nothing was changed",
            missing.join(", "),
            engine.bin
        )));
    }
    let trees: Vec<ContainerTree> = containers
        .keys()
        .map(|name| ContainerTree {
            engine: &engine,
            name: name.clone(),
        })
        .collect();
    let targets: Vec<(&dyn NovaTree, Option<&[String]>)> = trees
        .iter()
        .zip(containers.values())
        .map(|(t, parts)| (t as &dyn NovaTree, Some(parts.as_slice())))
        .collect();
    let layout = Layout::Containers {
        engine: engine.bin.clone(),
    };
    rollout(&a, ctx, &targets, layout)
}

/// The rollout over every tree: plan all, refuse or apply, roll back every touched tree on
/// any failure.
fn rollout(
    a: &Args,
    ctx: &Context,
    targets: &[(&dyn NovaTree, Option<&[String]>)],
    layout: Layout,
) -> Result<Outcome> {
    // One rollout per host at a time (two plays, or an operator beside the playbook): the
    // plan below must still hold when the files change. Check mode only reads.
    let _lock = if ctx.check_mode {
        None
    } else {
        Some(lock_rollout(&a.backup_dir)?)
    };

    // Plan every tree before changing any: a refusal anywhere changes nothing anywhere.
    let set = match &a.patch_dir {
        None => PatchSet::builtin(),
        Some(dir) => PatchSet::load(dir).map_err(|e| fail(format!("{M}: {e}")))?,
    };
    if set.files.is_empty() {
        return Err(fail(format!("{M}: the patch is unusable ({})", set.source)));
    }
    let mut plans = Vec::new();
    for (tree, parts) in targets {
        plans.push(plan_tree(*tree, a, *parts, &set)?);
    }
    let refusals: Vec<String> = plans.iter().flat_map(|p| p.refused.clone()).collect();
    if !refusals.is_empty() {
        let mut f = Failure::new(format!(
            "{M}: refusing, nothing was changed: {}",
            refusals.join("; ")
        ))
        .with("refused", &refusals);
        if let Layout::Containers { engine } = &layout {
            f = f.with("engine", engine);
        }
        f.fields
            .extend(report_fields(&layout, &plans, &BTreeSet::new()));
        return Err(f.into());
    }

    let releases: BTreeSet<&str> = plans.iter().map(|p| p.release.as_str()).collect();
    let release = releases.iter().copied().collect::<Vec<_>>().join(", ");
    let names = plans
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", ");
    let todo: Vec<&TreePlan> = plans
        .iter()
        .filter(|p| p.changes().next().is_some())
        .collect();
    let mut out = Outcome::new(!todo.is_empty(), String::new());
    if let Layout::Containers { engine } = &layout {
        out.set("engine", engine);
    }
    out.set("release", &release);
    if ctx.diff && !todo.is_empty() {
        out.diff = Some(Value::Array(
            todo.iter()
                .flat_map(|p| p.changes().map(|f| diff_of(p.tree, f)))
                .collect(),
        ));
    }
    let word = if a.state == PatchState::Present {
        "patched"
    } else {
        "unpatched"
    };
    if todo.is_empty() {
        out.msg = format!("Nova {release} already {word} in {names}");
        out.fields
            .extend(report_fields(&layout, &plans, &BTreeSet::new()));
        return Ok(out);
    }
    if ctx.check_mode {
        let what: Vec<String> = todo
            .iter()
            .map(|p| {
                format!(
                    "{}: {}",
                    p.name(),
                    p.changes()
                        .map(|f| f.rel.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect();
        out.msg = format!("would make Nova {release} {word} ({})", what.join("; "));
        out.fields
            .extend(report_fields(&layout, &plans, &BTreeSet::new()));
        return Ok(out);
    }

    // Apply, tree by tree; on any failure roll back every tree touched.
    let timeout = Duration::from_secs(a.health_timeout_s);
    let mut touched: Vec<&TreePlan> = Vec::new();
    let mut restarted = BTreeSet::new();
    for p in &todo {
        touched.push(p);
        let step = apply(p, a, timeout, &mut restarted);
        if let Err((step, e)) = step {
            let rb = rollback(&touched, a.restart, timeout);
            let msg = format!(
                "{M}: {step} failed in {}: {e:#}; {}",
                p.name(),
                match &rb {
                    Ok(()) => format!(
                        "rolled back: every file is byte-identical to before{}",
                        match layout {
                            Layout::Containers { .. } => " and the containers run",
                            Layout::Path if a.services.is_some() => " and its services are active",
                            Layout::Path => "",
                        }
                    ),
                    Err(r) => format!("ROLLBACK INCOMPLETE: {r:#}"),
                }
            );
            let mut f = Failure::new(msg)
                .with("rolled_back", rb.is_ok())
                .with("failed_step", step);
            f.fields.extend(report_fields(&layout, &plans, &restarted));
            return Err(f.into());
        }
    }
    out.msg = format!(
        "Nova {release} {word} in {}{}",
        todo.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "),
        match layout {
            Layout::Path if a.services.is_none() => {
                " (restart: not applicable; restart what runs from it to load it)".to_string()
            }
            Layout::Path if a.restart => format!(
                ", restarted {}, active",
                a.services.as_deref().unwrap_or_default().join(", ")
            ),
            Layout::Path => " (not restarted: restart its services to load it)".to_string(),
            Layout::Containers { .. } if a.restart => ", restarted, healthy".to_string(),
            Layout::Containers { .. } => {
                " (not restarted: restart the containers to load it)".to_string()
            }
        }
    );
    drop(todo);
    let done: Vec<TreePlan> = plans
        .into_iter()
        .map(|mut p| {
            for f in &mut p.files {
                f.status = word.into();
            }
            p
        })
        .collect();
    out.fields.extend(report_fields(&layout, &done, &restarted));
    Ok(out)
}

/// What one tree holds now and must hold, file by file: each hooked file as the hooks make it
/// from what the tree holds (or from the kept original, when the tree holds our output), the
/// core as built. Files that cannot be told apart or hooked go to the plan's `refused`; the
/// caller changes nothing if any tree has some. `parts: None`: every file of the patch.
fn plan_tree<'t>(
    tree: &'t dyn NovaTree,
    a: &Args,
    parts: Option<&[String]>,
    set: &PatchSet,
) -> Result<TreePlan<'t>> {
    let name = tree.name();
    let health_before = tree.precheck().map_err(|e| fail(format!("{M}: {e:#}")))?;
    let info = tree
        .discover(a.python.as_deref())
        .map_err(|e| fail(format!("{M}: {e:#}")))?;
    let release = match (a.release.as_str(), info.version.is_empty()) {
        ("auto", false) => info.version.clone(),
        ("auto", true) => UNKNOWN_RELEASE.to_string(),
        (r, _) => r.to_string(),
    };
    let written = load_written(&a.backup_dir, &tree.backup_key(), &release);
    let ctx = PlanCtx {
        tree,
        backup_dir: &a.backup_dir,
        release: &release,
        written: &written,
    };
    let base = info.path.trim_end_matches('/').to_string();
    let wanted = |p: &str| parts.is_none_or(|ps| matches(p, ps));
    let mut files = Vec::new();
    let mut refused = Vec::new();
    let mut unmatched = Vec::new();
    for hf in set.files.iter().filter(|f| wanted(&f.path)) {
        let path = format!("{base}/{}", hf.path);
        match ctx.plan_hooked(hf, &path, a.state)? {
            Ok(f) => files.push(f),
            Err((r, u)) => {
                refused.push(r);
                unmatched.extend(u);
            }
        }
    }
    if wanted(CORE) {
        let path = format!("{base}/{CORE}");
        match ctx.plan_core(&set.core, &path, a.state)? {
            Ok(f) => files.push(f),
            Err(r) => refused.push(r),
        }
    }
    if files.is_empty() && refused.is_empty() {
        return Err(fail(format!(
            "{M}: no file of the patch matches the parts {:?} given for {name}",
            parts.unwrap_or_default()
        )));
    }
    Ok(TreePlan {
        tree,
        info,
        release,
        files,
        refused,
        unmatched,
        health_before,
    })
}

/// The release name backups are filed under when a tree's Nova version cannot be told.
const UNKNOWN_RELEASE: &str = "unknown";

/// An original's bytes, the hooks' output from it, and the hooks used.
type Original = (Vec<u8>, String, Vec<String>);

struct PlanCtx<'a> {
    tree: &'a dyn NovaTree,
    backup_dir: &'a Path,
    release: &'a str,
    written: &'a BTreeMap<String, Written>,
}

/// A file's plan, or why it is refused (and, for an unsupported build, which hook did not match).
type Planned<R> = Result<std::result::Result<FilePlan, R>>;

impl PlanCtx<'_> {
    fn plan_hooked(
        &self,
        hf: &HookedFile,
        path: &str,
        state: PatchState,
    ) -> Planned<(String, Option<String>)> {
        let (t, rel, release) = (self.tree, hf.path.as_str(), self.release);
        let Some(current) = t.read_file(path)? else {
            return Ok(Err((
                format!("unsupported: {} is missing (Nova {release})", t.show(path)),
                Some(format!("{rel} missing")),
            )));
        };
        let plan = |target: Vec<u8>, status: &str, pristine: bool| FilePlan {
            rel: rel.to_string(),
            path: path.to_string(),
            current: Some(current.clone()),
            target: Some(target),
            status: status.into(),
            pristine,
            hooks: Vec::new(),
        };
        // Edited as text, written back as bytes: a file that is not UTF-8 is refused rather
        // than rewritten with replacement characters.
        let Ok(text) = std::str::from_utf8(&current) else {
            return Ok(Err((
                format!(
                    "unsupported: {} is not UTF-8 text (Nova {release})",
                    t.show(path)
                ),
                Some(format!("{rel} not UTF-8")),
            )));
        };
        if !text.contains(MARKER) {
            // Nova's own file, whatever build: nothing to restore; the hooks apply, or refused.
            if state == PatchState::Absent {
                return Ok(Ok(plan(current.clone(), "unpatched", true)));
            }
            return Ok(match hf.apply(text) {
                Ok((out, used)) => Ok(FilePlan {
                    hooks: used,
                    ..plan(out.into_bytes(), "would patch", true)
                }),
                Err(e) => Err((
                    format!("unsupported: {} (Nova {release}): {e}", t.show(path)),
                    Some(format!("{rel}: hook \"{}\"", e.hook)),
                )),
            });
        }
        // Our output (this build or an earlier one), recognised from the kept original.
        let cur_sha = sha256_hex(&current);
        let recorded = self.written.get(rel).map(|w| w.patched_sha256.as_str()) == Some(&cur_sha);
        let Some((orig, out, used)) = self.original(hf, path)? else {
            return Ok(Err((
                format!(
                    "{} holds numa-repin hooks, but no original is kept ({} nor {}) from which to \
                 rebuild or restore it; {}",
                    t.show(path),
                    backup_path(self.backup_dir, &t.backup_key(), release, rel).display(),
                    orig_path(path),
                    t.reinstall_hint()
                ),
                None,
            )));
        };
        let ours_now = out.as_bytes() == current.as_slice();
        if !ours_now && !recorded {
            return Ok(Err((
                format!(
                    "{} holds numa-repin hooks that neither this patch nor a recorded earlier \
                 rollout wrote (edited by hand?); {}",
                    t.show(path),
                    t.reinstall_hint()
                ),
                None,
            )));
        }
        Ok(Ok(match state {
            PatchState::Absent => plan(orig, "would restore", false),
            PatchState::Present if ours_now => FilePlan {
                hooks: used,
                ..plan(current.clone(), "patched", false)
            },
            PatchState::Present => FilePlan {
                hooks: used,
                ..plan(out.into_bytes(), "would update", false)
            },
        }))
    }

    /// The original a hooked file was patched from: the host backup, else the in-tree copy,
    /// the first that is unpatched and that the hooks apply to; with what they make of it.
    fn original(&self, hf: &HookedFile, path: &str) -> Result<Option<Original>> {
        let t = self.tree;
        let host = backup_path(self.backup_dir, &t.backup_key(), self.release, &hf.path);
        let from_host = limits::read_bytes("backup", &host, limits::MAX_SOURCE_BYTES).ok();
        for data in [from_host, t.read_file(&orig_path(path))?]
            .into_iter()
            .flatten()
        {
            let Ok(text) = std::str::from_utf8(&data) else {
                continue;
            };
            if text.contains(MARKER) {
                continue;
            }
            if let Ok((out, used)) = hf.apply(text) {
                return Ok(Some((data, out, used)));
            }
        }
        Ok(None)
    }

    fn plan_core(&self, core: &[u8], path: &str, state: PatchState) -> Planned<String> {
        let t = self.tree;
        let current = t.read_file(path)?;
        let recorded = |c: &[u8]| {
            self.written.get(CORE).map(|w| w.patched_sha256.as_str()) == Some(&sha256_hex(c))
        };
        let ours = current.as_deref().is_some_and(|c| c == core || recorded(c));
        if current.is_some() && !ours {
            return Ok(Err(format!(
                "{} is not the numa-repin core this patch or a recorded earlier rollout wrote \
                 (edited by hand?); remove it or {}",
                t.show(path),
                t.reinstall_hint()
            )));
        }
        let (target, status) = match (state, current.as_deref()) {
            (PatchState::Absent, None) => (None, "unpatched"),
            (PatchState::Absent, Some(_)) => (None, "would remove"),
            (PatchState::Present, None) => (Some(core.to_vec()), "would patch"),
            (PatchState::Present, Some(c)) if c == core => (Some(core.to_vec()), "patched"),
            (PatchState::Present, Some(_)) => (Some(core.to_vec()), "would update"),
        };
        Ok(Ok(FilePlan {
            rel: CORE.to_string(),
            path: path.to_string(),
            current,
            target,
            status: status.into(),
            pristine: false,
            hooks: Vec::new(),
        }))
    }
}

fn lock_rollout(dir: &Path) -> Result<crate::io::lock::Held> {
    std::fs::create_dir_all(dir).map_err(|e| {
        fail(format!(
            "{M}: cannot create backup_dir {}: {e}",
            dir.display()
        ))
    })?;
    let path = dir.join(".rollout.lock");
    crate::io::lock::acquire(&path, Duration::from_secs(600))
        .map_err(|e| fail(format!("{M}: cannot lock {}: {e}", path.display())))?
        .ok_or_else(|| {
            fail(format!(
                "{M}: another rollout on this host has held {} for 10 minutes; let it finish",
                path.display()
            ))
        })
}

fn report_fields(
    layout: &Layout,
    plans: &[TreePlan],
    restarted: &BTreeSet<String>,
) -> Map<String, Value> {
    match layout {
        Layout::Containers { .. } => {
            let per: Map<String, Value> = plans
                .iter()
                .map(|p| {
                    (
                        p.name().to_string(),
                        Value::Object(p.report(restarted.contains(p.name()))),
                    )
                })
                .collect();
            let mut m = Map::new();
            m.insert("containers".into(), Value::Object(per));
            m
        }
        Layout::Path => plans
            .first()
            .map(|p| p.report(restarted.contains(p.name())))
            .unwrap_or_default(),
    }
}

/// The in-tree copy of a pristine file, next to it.
fn orig_path(path: &str) -> String {
    format!("{path}.numa-repin.orig")
}

/// `<backup_dir>/<tree's backup key>/<release>/nova/<rel>`.
fn backup_path(dir: &Path, key: &str, release: &str, rel: &str) -> PathBuf {
    dir.join(key).join(release).join("nova").join(rel)
}

type StepResult = std::result::Result<(), (&'static str, anyhow::Error)>;

fn apply(
    p: &TreePlan,
    a: &Args,
    timeout: Duration,
    restarted: &mut BTreeSet<String>,
) -> StepResult {
    let t = p.tree;
    let changes: Vec<&FilePlan> = p.changes().collect();
    if a.state == PatchState::Present {
        backup(p, &a.backup_dir).map_err(|e| ("backup", e))?;
    }
    for f in &changes {
        put(t, &f.path, f.target.as_deref()).map_err(|e| ("copy", e))?;
    }
    for f in &changes {
        t.clear_bytecode(&f.path)
            .map_err(|e| ("clearing stale bytecode", e))?;
    }
    let present: Vec<&str> = changes
        .iter()
        .filter(|f| f.target.is_some())
        .map(|f| f.path.as_str())
        .collect();
    compile(p, &present).map_err(|e| ("byte-compile", e))?;
    if a.state == PatchState::Absent {
        for f in &changes {
            let _ = t.remove_file(&orig_path(&f.path));
        }
    }
    if a.restart && t.restartable() {
        t.restart().map_err(|e| ("restart", e))?;
        restarted.insert(p.name().to_string());
    }
    let modules: Vec<String> = if a.health_import {
        p.files
            .iter()
            .filter(|f| f.target.is_some())
            .map(|f| module_of(&f.rel))
            .collect()
    } else {
        Vec::new()
    };
    t.gate(timeout, &mut || import_check(p, &modules))
        .map_err(|e| {
            let e = if p.health_before.as_deref() == Some("unhealthy") {
                e.context(format!(
                    "{} was unhealthy before this run already: repair it, then roll out",
                    p.name()
                ))
            } else {
                e
            };
            ("health gate", e)
        })?;
    // The files must be what we meant, after the restart too.
    verify(p, |f| f.target.as_deref()).map_err(|e| ("verification", e))?;
    record_written(&a.backup_dir, p, a.state).map_err(|e| ("recording the written checksums", e))
}

/// `<backup_dir>/<tree's backup key>/<release>/written.json`: per file, the sha256 of the
/// original (null for the core, which Nova lacks) and of what this module wrote, so a rerun and
/// a later build of the patch recognise (and update or remove) an earlier rollout.
fn written_path(dir: &Path, key: &str, release: &str) -> PathBuf {
    dir.join(key).join(release).join("written.json")
}

#[derive(serde::Serialize, Deserialize, Debug, Clone)]
struct Written {
    original_sha256: Option<String>,
    patched_sha256: String,
}

/// written.json as earlier releases of this module wrote it (`{path: patched sha256}`) or as
/// this one does: a host patched by an earlier release can still be updated and rolled back.
#[derive(Deserialize)]
#[serde(untagged)]
enum WrittenEntry {
    Now(Written),
    Before(String),
}

fn load_written(dir: &Path, key: &str, release: &str) -> BTreeMap<String, Written> {
    limits::read_text(
        "written.json",
        &written_path(dir, key, release),
        limits::MAX_FILE_BYTES,
    )
    .ok()
    .and_then(|t| serde_json::from_str::<BTreeMap<String, WrittenEntry>>(&t).ok())
    .map(|m| {
        m.into_iter()
            .map(|(k, v)| {
                let w = match v {
                    WrittenEntry::Now(w) => w,
                    WrittenEntry::Before(sha) => Written {
                        original_sha256: None,
                        patched_sha256: sha,
                    },
                };
                (k, w)
            })
            .collect()
    })
    .unwrap_or_default()
}

fn record_written(dir: &Path, p: &TreePlan, state: PatchState) -> Result<()> {
    let path = written_path(dir, &p.tree.backup_key(), &p.release);
    if state == PatchState::Absent {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        };
    }
    let old = load_written(dir, &p.tree.backup_key(), &p.release);
    let map: BTreeMap<&str, Written> = p
        .files
        .iter()
        .filter_map(|f| {
            let target = f.target.as_deref()?;
            let original = if f.pristine {
                f.current.as_deref().map(sha256_hex)
            } else {
                old.get(&f.rel).and_then(|w| w.original_sha256.clone())
            };
            Some((
                f.rel.as_str(),
                Written {
                    original_sha256: original,
                    patched_sha256: sha256_hex(target),
                },
            ))
        })
        .collect();
    std::fs::create_dir_all(path.parent().context("written path")?)?;
    std::fs::write(&path, serde_json::to_vec_pretty(&map)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn backup(p: &TreePlan, dir: &Path) -> Result<()> {
    // Only pristine Nova is ever kept as the original (an earlier patch build is not).
    for f in p.changes().filter(|f| f.pristine) {
        let Some(orig) = f.current.as_deref() else {
            continue;
        };
        let host = backup_path(dir, &p.tree.backup_key(), &p.release, &f.rel);
        std::fs::create_dir_all(host.parent().context("backup path")?)
            .with_context(|| format!("cannot create backup directory for {}", host.display()))?;
        std::fs::write(&host, orig)
            .with_context(|| format!("cannot write backup {}", host.display()))?;
        p.tree.copy_file(&f.path, &orig_path(&f.path))?;
    }
    Ok(())
}

fn put(tree: &dyn NovaTree, path: &str, data: Option<&[u8]>) -> Result<()> {
    match data {
        Some(d) => tree.write_file(path, d),
        None => tree.remove_file(path),
    }
}

/// Run the tree's Python; Err with its last lines of stderr when it fails.
fn python_ok(p: &TreePlan, args: &[&str]) -> Result<()> {
    let py = p.info.interpreter.as_str();
    let out = p.tree.python(py, args)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.trim().lines().collect();
        bail!(
            "in {}: `{py} {}` failed: {}",
            p.name(),
            args.join(" "),
            lines[lines.len().saturating_sub(3)..].join(" | ")
        );
    }
    Ok(())
}

fn compile(p: &TreePlan, paths: &[&str]) -> Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let mut args = vec!["-m", "py_compile"];
    args.extend_from_slice(paths);
    python_ok(p, &args)
}

fn module_of(rel: &str) -> String {
    format!("nova.{}", rel.trim_end_matches(".py").replace('/', "."))
}

/// Valid on Python 2.7 and 3, run as `-c IMPORT_CHECK <nova dir> [sys.path entries]` with the
/// import line and a `where(...)` call appended: the modules import, and each is loaded from
/// the tree we changed (another Nova on sys.path could shadow it: Nova's `nova.virt` is a
/// pkg_resources namespace, which merges every `nova` it finds).
const IMPORT_CHECK: &str = r#"import os, sys
sys.dont_write_bytecode = True
want = os.path.realpath(sys.argv[1])
sys.path[:0] = sys.argv[2:]
def where(*names):
    for n in names:
        f = getattr(sys.modules.get(n), "__file__", None) or ""
        if not os.path.realpath(os.path.abspath(f)).startswith(want + os.sep):
            raise SystemExit("%s is loaded from %s, not from %s" % (n, f or "nowhere", want))
"#;

fn import_check(p: &TreePlan, modules: &[String]) -> Result<()> {
    if modules.is_empty() {
        return Ok(());
    }
    let imports = format!("import {}", modules.join(", "));
    let names: Vec<String> = modules.iter().map(|m| format!("{m:?}")).collect();
    let code = format!("{IMPORT_CHECK}{imports}\nwhere({})\n", names.join(", "));
    let extra = p.tree.sys_path();
    let mut args = vec!["-c", code.as_str(), p.info.path.as_str()];
    args.extend(extra.iter().map(String::as_str));
    let out = p.tree.python(&p.info.interpreter, &args)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{imports}` fails with {}: {}",
            p.info.interpreter,
            err.trim().lines().last().unwrap_or("no message")
        );
    }
    Ok(())
}

fn verify<'a>(p: &'a TreePlan, want: impl Fn(&'a FilePlan) -> Option<&'a [u8]>) -> Result<()> {
    for f in &p.files {
        let expect = want(f);
        let got = p.tree.read_file(&f.path)?;
        if got.as_deref() != expect {
            bail!(
                "{} has sha256 {} (expected {})",
                p.tree.show(&f.path),
                sum_of(got.as_deref()),
                sum_of(expect)
            );
        }
    }
    Ok(())
}

/// Put back the bytes every touched tree had before this run, restart (containers), wait
/// until they run, and check every file is byte-identical again.
fn rollback(touched: &[&TreePlan], restart: bool, timeout: Duration) -> Result<()> {
    let mut errors = Vec::new();
    for p in touched {
        let t = p.tree;
        let r = (|| -> Result<()> {
            // `cp` works on a stopped container (one that died on the new files): put the old
            // files back first, then start it, then the exec-based cleanup.
            let was_running = t.running()?;
            for f in p.changes() {
                if let Some(old) = f.current.as_deref() {
                    t.write_file(&f.path, old)?;
                }
            }
            if !was_running {
                t.start()?;
            }
            for f in p.changes() {
                if f.current.is_none() {
                    put(t, &f.path, None)?;
                } else if f.pristine {
                    // the in-tree copy this run made of the original
                    let _ = t.remove_file(&orig_path(&f.path));
                }
                t.clear_bytecode(&f.path)?;
            }
            if restart && was_running && t.restartable() {
                t.restart()?;
            }
            // Back to the state before the run; the files are verified in any case, so the
            // report says what holds.
            let up = t.recover(p.health_before.as_deref(), timeout);
            let files = verify(p, |f| f.current.as_deref());
            match (up, files) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(e), Ok(())) => Err(e.context("files byte-identical to before, but")),
                (Ok(()), Err(e)) => Err(e),
                (Err(u), Err(f)) => Err(anyhow!("{u:#}; and {f:#}")),
            }
        })();
        if let Err(e) = r {
            errors.push(format!("{}: {e:#}", p.name()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}

/// A unified diff for `--diff` (`model::diff`); before/after texts when there is none.
fn diff_of(tree: &dyn NovaTree, f: &FilePlan) -> Value {
    let before_h = tree.show(&f.path);
    let after_h = format!(
        "{} ({})",
        tree.show(&f.path),
        if f.target.is_some() {
            "after"
        } else {
            "removed"
        }
    );
    let before = String::from_utf8_lossy(f.current.as_deref().unwrap_or(b""));
    let after = String::from_utf8_lossy(f.target.as_deref().unwrap_or(b""));
    let text = diff::unified(&before, &after, &before_h, &after_h);
    if !text.is_empty() {
        return json!({"prepared": text});
    }
    json!({"before_header": before_h, "after_header": after_h,
           "before": before, "after": after})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_dir_must_be_absolute_without_dotdot() {
        let parse = |dir: &str| {
            let text = serde_json::json!({"backup_dir": dir}).to_string();
            crate::ansible::parse_args::<Args>("deploy_patched_nova", &text).map(|_| ())
        };
        parse("/var/lib/numa-repin/b").unwrap();
        for bad in ["backup", "./b", "/var/lib/../../etc", "/var/\u{0}"] {
            let e = parse(bad).unwrap_err().msg;
            assert!(e.contains("argument 'backup_dir'"), "{bad}: {e}");
        }
    }

    #[test]
    fn prefixes_match_dirs_and_files() {
        let parts = vec!["conductor/".to_string(), "numa_repin_patch.py".to_string()];
        assert!(matches("conductor/tasks/live_migrate.py", &parts));
        assert!(matches("numa_repin_patch.py", &parts));
        assert!(!matches("compute/manager.py", &parts));
        assert!(!matches("conductorx/a.py", &parts));
    }

    #[test]
    fn written_json_of_earlier_releases_is_read() {
        let d = tempfile::tempdir().unwrap();
        let p = written_path(d.path(), "nova_compute", "19.3.2");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, r#"{"compute/manager.py": "aa"}"#).unwrap();
        let w = load_written(d.path(), "nova_compute", "19.3.2");
        assert_eq!(w["compute/manager.py"].patched_sha256, "aa");
        assert_eq!(w["compute/manager.py"].original_sha256, None);
        std::fs::write(
            &p,
            r#"{"x.py": {"original_sha256": "bb", "patched_sha256": "cc"}}"#,
        )
        .unwrap();
        let w = load_written(d.path(), "nova_compute", "19.3.2");
        assert_eq!(w["x.py"].original_sha256.as_deref(), Some("bb"));
        assert_eq!(w["x.py"].patched_sha256, "cc");
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_of("conductor/tasks/live_migrate.py"),
            "nova.conductor.tasks.live_migrate"
        );
        assert_eq!(module_of("numa_repin_patch.py"), "nova.numa_repin_patch");
    }

    #[test]
    fn diff_is_unified() {
        let d = tempfile::tempdir().unwrap();
        let nova = d.path().join("nova");
        std::fs::create_dir_all(&nova).unwrap();
        std::fs::write(nova.join("__init__.py"), b"").unwrap();
        let t = LocalTree::new(&nova, Duration::from_secs(5), Vec::new()).unwrap();
        let path = format!("{}/x.py", nova.display());
        let mut f = FilePlan {
            rel: "x.py".into(),
            path: path.clone(),
            current: Some(b"a\nb\n".to_vec()),
            target: Some(b"a\nc\n".to_vec()),
            status: "would update".into(),
            pristine: false,
            hooks: Vec::new(),
        };
        let v = diff_of(&t, &f);
        let want = format!("--- {path}\n+++ {path} (after)\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n");
        assert_eq!(v["prepared"], want.as_str());
        f.target = None;
        let v = diff_of(&t, &f);
        assert!(
            v["prepared"]
                .as_str()
                .unwrap()
                .contains(" (removed)\n@@ -1,2 +0,0 @@\n-a\n-b\n"),
            "{v}"
        );
    }
}
