//! The in-band Nova patch rollout (`deploy_patched_nova`): move the Nova files of Kolla
//! containers from pristine to patched (or back), verified by checksum before anything changes,
//! with host and in-container backups, byte-compilation by the container's own Python, restart,
//! health gate, and a rollback to byte-identical files on any failure.

use crate::ansible::{Context, Failure, ModuleArgs, Outcome};
use crate::container::{sha256_hex, Engine};
use anyhow::{anyhow, bail, Context as _, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

const M: &str = "deploy_patched_nova";

/// Roll the in-band Nova patch into Kolla's Nova containers, or restore pristine Nova.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// Directory of the patch sets: `<patch_dir>/<release>/manifest.json` and the patched files
    /// under `<patch_dir>/<release>/nova/` (roles/nova_patch/files).
    pub patch_dir: PathBuf,
    /// `auto` (docker when it answers, else podman), `docker` or `podman`.
    #[serde(default = "default_auto")]
    pub container_engine: String,
    /// Nova release in the containers (`17.0.13`, `18.3.0`, `19.3.2`), or `auto` to ask each container.
    #[serde(default = "default_auto")]
    pub release: String,
    /// Container name -> the parts of the nova package it gets (path prefixes inside the package;
    /// a prefix equal to a file path names that file).
    #[serde(default = "default_containers")]
    pub containers: BTreeMap<String, Vec<String>>,
    /// `present`: patched files in place; `absent`: pristine files restored.
    #[serde(default)]
    pub state: PatchState,
    /// Restart the containers after changing their files (the health gate follows).
    #[serde(default = "default_true")]
    pub restart: bool,
    /// Seconds a restarted container has to pass the health gate before the rollback.
    #[serde(default = "default_health_timeout")]
    pub health_timeout_s: u64,
    /// Health gate: also require every patched module to import with the container's Python.
    /// Turn off only for images whose Nova modules cannot import outside their service; the
    /// gate is then the container running and its own healthcheck, when it has one.
    #[serde(default = "default_true")]
    pub health_import: bool,
    /// Host directory for the pristine originals, per container and release.
    #[serde(default = "default_backup_dir")]
    pub backup_dir: PathBuf,
    /// The container's Python; default: the Kolla venv's, else python3, else python.
    pub python: Option<String>,
}

impl ModuleArgs for Args {}

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

/// `manifest.json` of one release's patch set (roles/nova_patch/build.py writes it).
#[derive(Deserialize, Debug, Clone)]
pub struct Manifest {
    pub release: String,
    pub files: Vec<ManifestFile>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ManifestFile {
    /// Relative to the nova package directory.
    pub path: String,
    #[serde(default)]
    pub containers: Vec<String>,
    /// None: the file is new (absent from pristine Nova).
    pub pristine_sha256: Option<String>,
    pub patched_sha256: String,
}

/// A patch set loaded and verified against its manifest.
struct PatchSet {
    files: Vec<(ManifestFile, Vec<u8>)>,
}

fn load_patch_set(dir: &Path, release: &str) -> Result<PatchSet> {
    let base = dir.join(release);
    let mpath = base.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).map_err(|e| {
        let have = available_releases(dir);
        anyhow!(
            "no patch for Nova {release}: cannot read {}: {e}; patch sets available: {}",
            mpath.display(),
            if have.is_empty() {
                "none".into()
            } else {
                have.join(", ")
            }
        )
    })?;
    let m: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid manifest", mpath.display()))?;
    if m.release != release {
        bail!(
            "{} is for Nova {}, not {release}",
            mpath.display(),
            m.release
        );
    }
    let mut files = Vec::new();
    for f in m.files {
        check_rel_path(&f.path)?;
        let p = base.join("nova").join(&f.path);
        let data =
            std::fs::read(&p).with_context(|| format!("patch file {} missing", p.display()))?;
        let got = sha256_hex(&data);
        if got != f.patched_sha256 {
            bail!("patch file {} has sha256 {got}, its manifest says {}: the patch set is damaged; rebuild it (roles/nova_patch/build.py)",
                  p.display(), f.patched_sha256);
        }
        files.push((f, data));
    }
    Ok(PatchSet { files })
}

fn available_releases(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("manifest.json").is_file())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Manifest paths go into container paths and commands: relative, plain, no `..`.
fn check_rel_path(p: &str) -> Result<()> {
    let ok = !p.is_empty()
        && !p.starts_with('/')
        && p.ends_with(".py")
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c));
    if !ok {
        bail!("manifest path {p:?} refused: must be a plain relative .py path inside the nova package");
    }
    Ok(())
}

fn matches(path: &str, prefixes: &[String]) -> bool {
    prefixes
        .iter()
        .any(|p| path == p || (p.ends_with('/') && path.starts_with(p.as_str())))
}

/// What the container's Python says about its Nova.
#[derive(Deserialize, Serialize, Debug, Clone)]
struct NovaInfo {
    path: String,
    version: String,
    python: String,
    #[serde(default)]
    interpreter: String,
}

/// Valid on Python 2.7 and 3: where `nova` is, its version, the Python version.
const DISCOVER: &str = r#"import json, os, sys
# Locate the package without running nova/__init__ (Queens' imports oslo_service and eventlet).
try:
    from importlib.util import find_spec
    spec = find_spec("nova")
    path = spec and list(spec.submodule_search_locations or [None])[0]
except ImportError:
    import imp
    path = imp.find_module("nova")[1]
if not path:
    raise SystemExit("No module named nova")
v = ""
try:
    import pkg_resources
    v = pkg_resources.get_distribution("nova").version
except Exception:
    try:
        from importlib import metadata
        v = metadata.version("nova")
    except Exception:
        pass
print(json.dumps({"path": os.path.abspath(path), "version": v,
                  "python": "%d.%d" % sys.version_info[:2]}))
"#;

fn discover(engine: &Engine, name: &str, python: Option<&str>) -> Result<NovaInfo> {
    let candidates: Vec<&str> = match python {
        Some(p) => vec![p],
        None => vec!["/var/lib/kolla/venv/bin/python", "python3", "python"],
    };
    let mut tried = Vec::new();
    for py in candidates {
        let out = engine.exec(name, &[py, "-c", DISCOVER])?;
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .unwrap_or("");
            let mut info: NovaInfo = serde_json::from_str(line)
                .with_context(|| format!("{py} in {name} printed no Nova location: {text:?}"))?;
            info.interpreter = py.to_string();
            return Ok(info);
        }
        tried.push(format!(
            "{py}: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
        ));
    }
    bail!(
        "no Python in container {name} imports nova ({}); set `python`",
        tried.join("; ")
    )
}

/// One file of one container: where it is, what it holds now, what it must hold.
#[derive(Debug, Clone)]
struct FilePlan {
    rel: String,
    path: String,
    current: Option<Vec<u8>>,
    target: Option<Vec<u8>>,
    status: String,
    /// The current file is pristine Nova (the only content ever backed up as "original").
    pristine: bool,
}

struct ContainerPlan {
    name: String,
    info: NovaInfo,
    release: String,
    files: Vec<FilePlan>,
    /// The container's healthcheck status before this run (None: it has no healthcheck). A
    /// rollback restores this, not more: it waits for `healthy` only if it was healthy.
    health_before: Option<String>,
}

impl ContainerPlan {
    fn changes(&self) -> impl Iterator<Item = &FilePlan> {
        self.files.iter().filter(|f| f.current != f.target)
    }
    fn report(&self, restarted: bool) -> Value {
        let files: Map<String, Value> = self
            .files
            .iter()
            .map(|f| (f.rel.clone(), json!(f.status)))
            .collect();
        json!({"nova_path": self.info.path, "python": self.info.interpreter, "python_version": self.info.python,
               "nova_version": self.info.version, "release": self.release, "files": files, "restarted": restarted})
    }
}

pub fn run(a: Args, ctx: &Context) -> Result<Outcome> {
    if a.containers.is_empty() {
        return Err(Failure::new(format!(
            "{M}: `containers` is empty: name the Nova containers to patch"
        ))
        .into());
    }
    for (c, parts) in &a.containers {
        if parts.is_empty() {
            return Err(
                Failure::new(format!("{M}: container {c} is given no parts of the patch")).into(),
            );
        }
    }
    let engine =
        Engine::detect(&a.container_engine).map_err(|e| Failure::new(format!("{M}: {e:#}")))?;
    let missing: Vec<&String> = a.containers.keys().filter(|c| !engine.exists(c)).collect();
    if !missing.is_empty() {
        return Err(Failure::new(format!(
            "{M}: no container named {} ({}); nothing was changed",
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            engine.bin
        ))
        .into());
    }

    // One rollout per host at a time (two plays, or an operator beside the playbook): the
    // plan below must still hold when the files change. Check mode only reads.
    let _lock = if ctx.check_mode {
        None
    } else {
        Some(lock_rollout(&a.backup_dir)?)
    };

    // Plan every container before changing any: a refusal anywhere changes nothing anywhere.
    let mut sets: BTreeMap<String, PatchSet> = BTreeMap::new();
    let mut plans = Vec::new();
    let mut refusals = Vec::new();
    for (name, parts) in &a.containers {
        plans.push(plan_container(
            &engine,
            &a,
            name,
            parts,
            &mut sets,
            &mut refusals,
        )?);
    }
    if !refusals.is_empty() {
        return Err(Failure::new(format!(
            "{M}: refusing, nothing was changed: {}",
            refusals.join("; ")
        ))
        .with("refused", &refusals)
        .into());
    }

    let releases: BTreeSet<&str> = plans.iter().map(|p| p.release.as_str()).collect();
    let release = releases.iter().copied().collect::<Vec<_>>().join(", ");
    let todo: Vec<&ContainerPlan> = plans
        .iter()
        .filter(|p| p.changes().next().is_some())
        .collect();
    let mut out = Outcome::new(!todo.is_empty(), String::new())
        .with("engine", &engine.bin)
        .with("release", &release);
    if ctx.diff && !todo.is_empty() {
        out.diff = Some(Value::Array(
            todo.iter()
                .flat_map(|p| p.changes().map(|f| diff_of(&p.name, f)))
                .collect(),
        ));
    }
    let word = if a.state == PatchState::Present {
        "patched"
    } else {
        "pristine"
    };
    if todo.is_empty() {
        out.msg = format!(
            "Nova {release} already {word} in {}",
            a.containers.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        out.set("containers", report(&plans, &BTreeSet::new()));
        return Ok(out);
    }
    if ctx.check_mode {
        let what: Vec<String> = todo
            .iter()
            .map(|p| {
                format!(
                    "{}: {}",
                    p.name,
                    p.changes()
                        .map(|f| f.rel.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect();
        out.msg = format!("would make Nova {release} {word} ({})", what.join("; "));
        out.set("containers", report(&plans, &BTreeSet::new()));
        return Ok(out);
    }

    // Apply, container by container; on any failure roll back every container touched.
    let timeout = Duration::from_secs(a.health_timeout_s);
    let mut touched: Vec<&ContainerPlan> = Vec::new();
    let mut restarted = BTreeSet::new();
    for p in &todo {
        touched.push(p);
        let step = apply(&engine, p, &a, timeout, &mut restarted);
        if let Err((step, e)) = step {
            let rb = rollback(&engine, &touched, a.restart, timeout);
            let msg = format!(
                "{M}: {step} failed in {}: {e:#}; {}",
                p.name,
                match &rb {
                    Ok(()) =>
                        "rolled back: every file is byte-identical to before and the containers run"
                            .to_string(),
                    Err(r) => format!("ROLLBACK INCOMPLETE: {r:#}"),
                }
            );
            return Err(Failure::new(msg)
                .with("rolled_back", rb.is_ok())
                .with("failed_step", step)
                .with("containers", report(&plans, &restarted))
                .into());
        }
    }
    out.msg = format!(
        "Nova {release} {word} in {}{}",
        todo.iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        if a.restart {
            ", restarted, healthy"
        } else {
            " (not restarted: restart the containers to load it)"
        }
    );
    drop(todo);
    let done: Vec<ContainerPlan> = plans
        .into_iter()
        .map(|mut p| {
            for f in &mut p.files {
                f.status = word.into();
            }
            p
        })
        .collect();
    out.set("containers", report(&done, &restarted));
    Ok(out)
}

/// What one container holds now and must hold, file by file. Files neither pristine nor patched
/// (nor an earlier build of ours) go to `refusals`; the caller changes nothing if there are any.
fn plan_container(
    engine: &Engine,
    a: &Args,
    name: &str,
    parts: &[String],
    sets: &mut BTreeMap<String, PatchSet>,
    refusals: &mut Vec<String>,
) -> Result<ContainerPlan> {
    let st = engine.state(name)?;
    if !st.running {
        return Err(Failure::new(format!("{M}: container {name} is not running (exit code {}): start it first; nothing was changed", st.exit_code)).into());
    }
    let info = discover(engine, name, a.python.as_deref())
        .map_err(|e| Failure::new(format!("{M}: {e:#}")))?;
    let release = if a.release == "auto" {
        if info.version.is_empty() {
            return Err(Failure::new(format!(
                "{M}: cannot tell the Nova version in {name} (no package metadata); set `release`"
            ))
            .into());
        }
        info.version.clone()
    } else {
        a.release.clone()
    };
    if !sets.contains_key(&release) {
        let set = load_patch_set(&a.patch_dir, &release)
            .map_err(|e| Failure::new(format!("{M}: {name}: {e:#}")))?;
        sets.insert(release.clone(), set);
    }
    let set = &sets[&release];
    let written = load_written(&a.backup_dir, name, &release);
    let mut files = Vec::new();
    for (mf, patched) in set.files.iter().filter(|(f, _)| matches(&f.path, parts)) {
        let path = format!("{}/{}", info.path.trim_end_matches('/'), mf.path);
        let current = engine.read_file(name, &path)?;
        let cur_sha = current.as_deref().map(sha256_hex);
        let is_patched = cur_sha.as_deref() == Some(mf.patched_sha256.as_str());
        let is_pristine = cur_sha == mf.pristine_sha256;
        // An earlier build of this patch, as recorded when we wrote it: updated or removed
        // like a patched file (a local edit matches no record and is refused).
        let is_ours = !is_patched
            && !is_pristine
            && cur_sha.is_some()
            && written.get(&mf.path) == cur_sha.as_ref();
        if !is_patched && !is_pristine && !is_ours {
            refusals.push(format!(
                "{name}:{path} is neither pristine Nova {release} nor patched (sha256 {}, pristine {}, patched {})",
                cur_sha.as_deref().unwrap_or("absent"), mf.pristine_sha256.as_deref().unwrap_or("absent"), mf.patched_sha256));
            continue;
        }
        let (target, status) = match a.state {
            PatchState::Present if is_ours => (Some(patched.clone()), "would update"),
            PatchState::Present => (
                Some(patched.clone()),
                if is_patched { "patched" } else { "would patch" },
            ),
            PatchState::Absent => {
                if is_pristine {
                    (current.clone(), "pristine")
                } else {
                    (
                        pristine_original(engine, name, &a.backup_dir, &release, mf, &path)?,
                        "would restore",
                    )
                }
            }
        };
        files.push(FilePlan {
            rel: mf.path.clone(),
            path,
            current,
            target,
            status: status.into(),
            pristine: is_pristine,
        });
    }
    if files.is_empty() {
        return Err(Failure::new(format!(
            "{M}: no file of the Nova {release} patch matches the parts {parts:?} given for {name}"
        ))
        .into());
    }
    Ok(ContainerPlan {
        name: name.to_string(),
        info,
        release,
        files,
        health_before: st.health,
    })
}

fn lock_rollout(dir: &Path) -> Result<crate::lock::Held> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Failure::new(format!(
            "{M}: cannot create backup_dir {}: {e}",
            dir.display()
        ))
    })?;
    let path = dir.join(".rollout.lock");
    crate::lock::acquire(&path, Duration::from_secs(600))
        .map_err(|e| Failure::new(format!("{M}: cannot lock {}: {e}", path.display())))?
        .ok_or_else(|| {
            Failure::new(format!(
                "{M}: another rollout on this host has held {} for 10 minutes; let it finish",
                path.display()
            ))
            .into()
        })
}

fn report(plans: &[ContainerPlan], restarted: &BTreeSet<String>) -> Value {
    Value::Object(
        plans
            .iter()
            .map(|p| (p.name.clone(), p.report(restarted.contains(&p.name))))
            .collect(),
    )
}

/// The pristine bytes for `state: absent`: the host backup, else the in-container copy, each
/// checked against the manifest's pristine sha256. A new file's pristine state is "absent".
fn pristine_original(
    engine: &Engine,
    name: &str,
    backup_dir: &Path,
    release: &str,
    mf: &ManifestFile,
    path: &str,
) -> Result<Option<Vec<u8>>> {
    let Some(want) = mf.pristine_sha256.as_deref() else {
        return Ok(None);
    };
    let host = backup_path(backup_dir, name, release, &mf.path);
    if let Ok(data) = std::fs::read(&host) {
        if sha256_hex(&data) == want {
            return Ok(Some(data));
        }
    }
    if let Some(data) = engine.read_file(name, &orig_path(path))? {
        if sha256_hex(&data) == want {
            return Ok(Some(data));
        }
    }
    Err(Failure::new(format!(
        "{M}: no pristine copy of {path} for {name}: neither {} nor {path}.numa-repin.orig holds sha256 {want}; \
         reinstall the container's image (kolla-ansible) to get pristine Nova back; nothing was changed",
        host.display())).into())
}

/// The in-container copy of a pristine file, next to it.
fn orig_path(path: &str) -> String {
    format!("{path}.numa-repin.orig")
}

fn backup_path(dir: &Path, container: &str, release: &str, rel: &str) -> PathBuf {
    dir.join(container).join(release).join("nova").join(rel)
}

type StepResult = std::result::Result<(), (&'static str, anyhow::Error)>;

fn apply(
    engine: &Engine,
    p: &ContainerPlan,
    a: &Args,
    timeout: Duration,
    restarted: &mut BTreeSet<String>,
) -> StepResult {
    let changes: Vec<&FilePlan> = p.changes().collect();
    if a.state == PatchState::Present {
        backup(engine, p, &a.backup_dir).map_err(|e| ("backup", e))?;
    }
    for f in &changes {
        put(engine, &p.name, &f.path, f.target.as_deref()).map_err(|e| ("copy", e))?;
    }
    for f in &changes {
        clear_bytecode(engine, &p.name, &f.path).map_err(|e| ("clearing stale bytecode", e))?;
    }
    let present: Vec<&str> = changes
        .iter()
        .filter(|f| f.target.is_some())
        .map(|f| f.path.as_str())
        .collect();
    compile(engine, p, &present).map_err(|e| ("byte-compile", e))?;
    if a.state == PatchState::Absent {
        for f in &changes {
            let _ = engine.exec(&p.name, &["rm", "-f", &orig_path(&f.path)]);
        }
    }
    if a.restart {
        engine.restart(&p.name).map_err(|e| ("restart", e))?;
        restarted.insert(p.name.clone());
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
    engine
        .wait_healthy(&p.name, timeout, || import_check(engine, p, &modules))
        .map_err(|e| {
            let e = if p.health_before.as_deref() == Some("unhealthy") {
                e.context(format!(
                    "{} was unhealthy before this run already: repair it, then roll out",
                    p.name
                ))
            } else {
                e
            };
            ("health gate", e)
        })?;
    // The files must be what we meant, after the restart too.
    verify(engine, p, |f| f.target.as_deref()).map_err(|e| ("verification", e))?;
    record_written(&a.backup_dir, p, a.state).map_err(|e| ("recording the written checksums", e))
}

/// `<backup_dir>/<container>/<release>/written.json`: path -> sha256 of what this module wrote,
/// so a later build of the patch recognises (and updates or removes) an earlier one.
fn written_path(dir: &Path, container: &str, release: &str) -> PathBuf {
    dir.join(container).join(release).join("written.json")
}

fn load_written(dir: &Path, container: &str, release: &str) -> BTreeMap<String, String> {
    std::fs::read_to_string(written_path(dir, container, release))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn record_written(dir: &Path, p: &ContainerPlan, state: PatchState) -> Result<()> {
    let path = written_path(dir, &p.name, &p.release);
    if state == PatchState::Absent {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        };
    }
    let map: BTreeMap<&str, String> = p
        .files
        .iter()
        .filter_map(|f| f.target.as_deref().map(|t| (f.rel.as_str(), sha256_hex(t))))
        .collect();
    std::fs::create_dir_all(path.parent().context("written path")?)?;
    std::fs::write(&path, serde_json::to_vec_pretty(&map)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn backup(engine: &Engine, p: &ContainerPlan, dir: &Path) -> Result<()> {
    // Only pristine Nova is ever kept as the original (an earlier patch build is not).
    for f in p.changes().filter(|f| f.pristine) {
        let Some(orig) = f.current.as_deref() else {
            continue;
        };
        let host = backup_path(dir, &p.name, &p.release, &f.rel);
        std::fs::create_dir_all(host.parent().context("backup path")?)
            .with_context(|| format!("cannot create backup directory for {}", host.display()))?;
        std::fs::write(&host, orig)
            .with_context(|| format!("cannot write backup {}", host.display()))?;
        engine.exec_ok(&p.name, &["cp", "-p", &f.path, &orig_path(&f.path)])?;
    }
    Ok(())
}

fn put(engine: &Engine, name: &str, path: &str, data: Option<&[u8]>) -> Result<()> {
    match data {
        Some(d) => engine.write_file(name, path, d),
        None => engine.exec_ok(name, &["rm", "-f", path]).map(|_| ()),
    }
}

/// Python 2 keeps `x.pyc` next to `x.py`, Python 3 `__pycache__/x.*.pyc`: remove both so no
/// stale bytecode of the other version of the file can load.
fn clear_bytecode(engine: &Engine, name: &str, path: &str) -> Result<()> {
    let (dir, file) = path.rsplit_once('/').context("file path")?;
    let stem = file.trim_end_matches(".py");
    let script = r#"rm -f "$1c" "$1o"; for f in "$2"/__pycache__/"$3".*.pyc; do [ -e "$f" ] && rm -f "$f"; done; exit 0"#;
    engine
        .exec_ok(name, &["sh", "-c", script, "sh", path, dir, stem])
        .map(|_| ())
}

fn compile(engine: &Engine, p: &ContainerPlan, paths: &[&str]) -> Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let mut argv = vec![p.info.interpreter.as_str(), "-m", "py_compile"];
    argv.extend_from_slice(paths);
    engine.exec_ok(&p.name, &argv).map(|_| ())
}

fn module_of(rel: &str) -> String {
    format!("nova.{}", rel.trim_end_matches(".py").replace('/', "."))
}

fn import_check(engine: &Engine, p: &ContainerPlan, modules: &[String]) -> Result<()> {
    if modules.is_empty() {
        return Ok(());
    }
    let code = format!("import {}", modules.join(", "));
    let out = engine.exec(&p.name, &[&p.info.interpreter, "-c", &code])?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{code}` fails: {}",
            err.trim().lines().last().unwrap_or("no message")
        );
    }
    Ok(())
}

fn verify<'a>(
    engine: &Engine,
    p: &'a ContainerPlan,
    want: impl Fn(&'a FilePlan) -> Option<&'a [u8]>,
) -> Result<()> {
    for f in &p.files {
        let expect = want(f);
        let got = engine.read_file(&p.name, &f.path)?;
        if got.as_deref() != expect {
            bail!(
                "{}:{} has sha256 {} (expected {})",
                p.name,
                f.path,
                got.as_deref()
                    .map(sha256_hex)
                    .unwrap_or_else(|| "absent".into()),
                expect.map(sha256_hex).unwrap_or_else(|| "absent".into())
            );
        }
    }
    Ok(())
}

/// Put back the bytes every touched container had before this run, restart, wait until they
/// run, and check every file is byte-identical again.
fn rollback(
    engine: &Engine,
    touched: &[&ContainerPlan],
    restart: bool,
    timeout: Duration,
) -> Result<()> {
    let mut errors = Vec::new();
    for p in touched {
        let r = (|| -> Result<()> {
            // `cp` works on a stopped container (one that died on the new files): put the old
            // files back first, then start it, then the exec-based cleanup.
            let was_running = engine.state(&p.name)?.running;
            for f in p.changes() {
                if let Some(old) = f.current.as_deref() {
                    engine.write_file(&p.name, &f.path, old)?;
                }
            }
            if !was_running {
                engine.start(&p.name)?;
            }
            for f in p.changes() {
                if f.current.is_none() {
                    put(engine, &p.name, &f.path, None)?;
                } else {
                    let _ = engine.exec(&p.name, &["rm", "-f", &orig_path(&f.path)]);
                }
                clear_bytecode(engine, &p.name, &f.path)?;
            }
            if restart && was_running {
                engine.restart(&p.name)?;
            }
            // Back to the state before the run: healthy if it was (or running, without a
            // healthcheck); only running if it was unhealthy or still starting already. The
            // files are verified in any case, so the report says what holds.
            let up = match p.health_before.as_deref() {
                None | Some("healthy") => engine.wait_healthy(&p.name, timeout, || Ok(())),
                Some(_) => engine.wait_running(&p.name, timeout),
            };
            let files = verify(engine, p, |f| f.current.as_deref());
            match (up, files) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(e), Ok(())) => Err(e.context("files byte-identical to before, but")),
                (Ok(()), Err(e)) => Err(e),
                (Err(u), Err(f)) => Err(anyhow!("{u:#}; and {f:#}")),
            }
        })();
        if let Err(e) = r {
            errors.push(format!("{}: {e:#}", p.name));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}

/// A unified diff for `--diff`, made by diff(1) when it is there; else before/after texts.
fn diff_of(container: &str, f: &FilePlan) -> Value {
    let before_h = format!("{container}:{}", f.path);
    let after_h = format!(
        "{container}:{} ({})",
        f.path,
        if f.target.is_some() {
            "after"
        } else {
            "removed"
        }
    );
    let before = f.current.as_deref().unwrap_or(b"");
    let after = f.target.as_deref().unwrap_or(b"");
    if let Some(text) = unified_diff(before, after, &before_h, &after_h) {
        return json!({"prepared": text});
    }
    json!({"before_header": before_h, "after_header": after_h,
           "before": String::from_utf8_lossy(before), "after": String::from_utf8_lossy(after)})
}

fn unified_diff(before: &[u8], after: &[u8], bh: &str, ah: &str) -> Option<String> {
    let dir = tempfile::tempdir().ok()?;
    let (b, a) = (dir.path().join("before"), dir.path().join("after"));
    std::fs::write(&b, before).ok()?;
    std::fs::write(&a, after).ok()?;
    let out = std::process::Command::new("diff")
        .args(["-u", "--label", bh, "--label", ah])
        .arg(&b)
        .arg(&a)
        .output()
        .ok()?;
    // diff exits 1 when the files differ, 2 on trouble.
    (out.status.code() == Some(1)).then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_dirs_and_files() {
        let parts = vec!["conductor/".to_string(), "numa_repin_patch.py".to_string()];
        assert!(matches("conductor/tasks/live_migrate.py", &parts));
        assert!(matches("numa_repin_patch.py", &parts));
        assert!(!matches("compute/manager.py", &parts));
        assert!(!matches("conductorx/a.py", &parts));
    }

    #[test]
    fn manifest_paths_are_plain() {
        for bad in [
            "/etc/passwd.py",
            "../x.py",
            "a/../../b.py",
            "a b.py",
            "a;rm.py",
            "x.sh",
            "",
        ] {
            assert!(check_rel_path(bad).is_err(), "{bad}");
        }
        check_rel_path("virt/libvirt/driver.py").unwrap();
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
    fn patch_set_checksums_are_verified() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("19.3.2");
        std::fs::create_dir_all(base.join("nova")).unwrap();
        std::fs::write(base.join("nova/x.py"), b"print(1)\n").unwrap();
        let good = sha256_hex(b"print(1)\n");
        let m = |sha: &str| {
            format!(
                r#"{{"release":"19.3.2","files":[{{"path":"x.py","pristine_sha256":null,"patched_sha256":"{sha}"}}]}}"#
            )
        };
        std::fs::write(base.join("manifest.json"), m(&good)).unwrap();
        assert_eq!(load_patch_set(d.path(), "19.3.2").unwrap().files.len(), 1);
        std::fs::write(base.join("manifest.json"), m("00")).unwrap();
        let e = load_patch_set(d.path(), "19.3.2")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("damaged"), "{e}");
        let e = load_patch_set(d.path(), "18.3.0")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("no patch for Nova 18.3.0") && e.contains("19.3.2"),
            "{e}"
        );
    }

    #[test]
    fn diff_is_unified() {
        let t = unified_diff(b"a\nb\n", b"a\nc\n", "x:before", "x:after").unwrap();
        assert!(
            t.contains("--- x:before") && t.contains("-b") && t.contains("+c"),
            "{t}"
        );
    }
}
