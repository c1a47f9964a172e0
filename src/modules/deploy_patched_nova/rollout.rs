//! The rollout over every tree: plan all, refuse or apply (backup, write, byte-compile,
//! restart, health gate, verify, record), roll back every touched tree on any failure.

use super::args::{Args, PatchState};
use super::plan::{plan_tree, FilePlan, FileStatus, TreePlan};
use super::record::{backup_path, orig_path, record_written};
use super::report::{diff_of, report_fields};
use super::tree::{sum_of, NovaTree};
use super::{fail, Layout};
use crate::ansible::{Context, Failure, Outcome};
use crate::nova::hooks::PatchSet;
use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
/// The rollout over every tree: plan all (a refusal anywhere changes nothing anywhere), then
/// report (nothing to do, check mode) or apply tree by tree, rolling back every touched tree on
/// any failure.
pub(super) fn rollout(
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
    let set = load_patch(a)?;
    let plans = plan_all(a, targets, &set, &layout)?;
    let releases: BTreeSet<&str> = plans.iter().map(|p| p.release.as_str()).collect();
    let release = releases.iter().copied().collect::<Vec<_>>().join(", ");
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
    let word = match a.state {
        PatchState::Present => "patched",
        PatchState::Absent => "unpatched",
    };
    if todo.is_empty() || ctx.check_mode {
        out.msg = if todo.is_empty() {
            format!("Nova {release} already {word} in {}", names(plans.iter()))
        } else {
            format!(
                "would make Nova {release} {word} ({})",
                planned_changes(&todo)
            )
        };
        out.fields
            .extend(report_fields(&layout, &plans, &BTreeSet::new()));
        return Ok(out);
    }
    let restarted = apply_all(a, &layout, &plans, &todo)?;
    out.msg = format!(
        "Nova {release} {word} in {}{}",
        names(todo.iter().copied()),
        loaded_note(a, &layout)
    );
    drop(todo);
    let done = mark_done(plans, a.state);
    out.fields.extend(report_fields(&layout, &done, &restarted));
    Ok(out)
}

/// The patch to roll out: `patch_dir`'s, or the one built in (which fails to load only when
/// the build is broken: then the module fails, naming why).
fn load_patch(a: &Args) -> Result<PatchSet> {
    match &a.patch_dir {
        None => PatchSet::builtin().map_err(|e| {
            fail(format!(
                "the patch is unusable (built in, but unusable: {e})"
            ))
        }),
        Some(dir) => PatchSet::load(dir).map_err(|e| fail(format!("{e}"))),
    }
}

/// Plan every tree before changing any; any refusal fails the run with every tree's report.
fn plan_all<'t>(
    a: &Args,
    targets: &[(&'t dyn NovaTree, Option<&[String]>)],
    set: &PatchSet,
    layout: &Layout,
) -> Result<Vec<TreePlan<'t>>> {
    let mut plans = Vec::new();
    for (tree, parts) in targets {
        plans.push(plan_tree(*tree, a, *parts, set)?);
    }
    let refusals: Vec<String> = plans.iter().flat_map(|p| p.refused.clone()).collect();
    if refusals.is_empty() {
        return Ok(plans);
    }
    let mut f = Failure::new(format!(
        "refusing, nothing was changed: {}",
        refusals.join("; ")
    ))
    .with("refused", &refusals);
    if let Layout::Containers { engine } = layout {
        f = f.with("engine", engine);
    }
    f.fields
        .extend(report_fields(layout, &plans, &BTreeSet::new()));
    Err(f.into())
}

fn names<'a, 't: 'a>(plans: impl Iterator<Item = &'a TreePlan<'t>>) -> String {
    plans.map(|p| p.name()).collect::<Vec<_>>().join(", ")
}

/// `<tree>: <file>, <file>; <tree>: ...` for check mode's message.
fn planned_changes(todo: &[&TreePlan]) -> String {
    todo.iter()
        .map(|p| {
            let files: Vec<&str> = p.changes().map(|f| f.rel.as_str()).collect();
            format!("{}: {}", p.name(), files.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// How the changed files get loaded (or why they are not yet), for the final message.
fn loaded_note(a: &Args, layout: &Layout) -> String {
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
}

/// After a successful run every file holds what `state` asked for.
fn mark_done(plans: Vec<TreePlan>, state: PatchState) -> Vec<TreePlan> {
    let status = match state {
        PatchState::Present => FileStatus::Patched,
        PatchState::Absent => FileStatus::Unpatched,
    };
    plans
        .into_iter()
        .map(|mut p| {
            for f in &mut p.files {
                f.status = status;
            }
            p
        })
        .collect()
}

/// Apply tree by tree; on any failure roll back every tree touched and fail, naming the step.
/// Returns the trees restarted.
fn apply_all(
    a: &Args,
    layout: &Layout,
    plans: &[TreePlan],
    todo: &[&TreePlan],
) -> Result<BTreeSet<String>> {
    let timeout = Duration::from_secs(a.health_timeout_s);
    let mut touched: Vec<&TreePlan> = Vec::new();
    let mut restarted = BTreeSet::new();
    for p in todo {
        touched.push(p);
        let Err((step, e)) = apply(p, a, timeout, &mut restarted) else {
            continue;
        };
        let rb = rollback(&touched, a.restart, timeout);
        let msg = format!(
            "{step} failed in {}: {e:#}; {}",
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
            .with("failed_step", step.to_string());
        f.fields.extend(report_fields(layout, plans, &restarted));
        return Err(f.into());
    }
    Ok(restarted)
}

pub(super) fn lock_rollout(dir: &Path) -> Result<crate::io::lock::Held> {
    std::fs::create_dir_all(dir)
        .map_err(|e| fail(format!("cannot create backup_dir {}: {e}", dir.display())))?;
    let path = dir.join(".rollout.lock");
    crate::io::lock::acquire(&path, Duration::from_secs(600))
        .map_err(|e| fail(format!("cannot lock {}: {e}", path.display())))?
        .ok_or_else(|| {
            fail(format!(
                "another rollout on this host has held {} for 10 minutes; let it finish",
                path.display()
            ))
        })
}

/// A step of applying the change to one tree, as `failed_step` and the message name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Backup,
    Copy,
    ClearBytecode,
    Compile,
    Restart,
    HealthGate,
    Verify,
    Record,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Backup => "backup",
            Step::Copy => "copy",
            Step::ClearBytecode => "clearing stale bytecode",
            Step::Compile => "byte-compile",
            Step::Restart => "restart",
            Step::HealthGate => "health gate",
            Step::Verify => "verification",
            Step::Record => "recording the written checksums",
        })
    }
}

type StepResult = std::result::Result<(), (Step, anyhow::Error)>;

fn at(step: Step) -> impl FnOnce(anyhow::Error) -> (Step, anyhow::Error) {
    move |e| (step, e)
}

/// One tree, step by step: backup, write, byte-compile, restart, health gate, verify, record.
fn apply(
    p: &TreePlan,
    a: &Args,
    timeout: Duration,
    restarted: &mut BTreeSet<String>,
) -> StepResult {
    let t = p.tree;
    if a.state == PatchState::Present {
        backup(p, &a.backup_dir).map_err(at(Step::Backup))?;
    }
    write_changes(p)?;
    if a.state == PatchState::Absent {
        for f in p.changes() {
            let _ = t.remove_file(&orig_path(&f.path));
        }
    }
    if a.restart && t.restartable() {
        t.restart().map_err(at(Step::Restart))?;
        restarted.insert(p.name().to_string());
    }
    health_gate(p, a.health_import, timeout).map_err(at(Step::HealthGate))?;
    // The files must be what we meant, after the restart too.
    verify(p, |f| f.target.as_deref()).map_err(at(Step::Verify))?;
    record_written(&a.backup_dir, p, a.state).map_err(at(Step::Record))
}

/// Every changed file written (or removed), its stale bytecode cleared, the new files
/// byte-compiled by the tree's Python.
fn write_changes(p: &TreePlan) -> StepResult {
    let changes: Vec<&FilePlan> = p.changes().collect();
    for f in &changes {
        put(p.tree, &f.path, f.target.as_deref()).map_err(at(Step::Copy))?;
    }
    for f in &changes {
        p.tree
            .clear_bytecode(&f.path)
            .map_err(at(Step::ClearBytecode))?;
    }
    let present: Vec<&str> = changes
        .iter()
        .filter(|f| f.target.is_some())
        .map(|f| f.path.as_str())
        .collect();
    compile(p, &present).map_err(at(Step::Compile))
}

/// The tree's own health (a container running, its healthcheck; units settled), then every
/// patched module imports from this tree (`health_import`).
fn health_gate(p: &TreePlan, health_import: bool, timeout: Duration) -> Result<()> {
    let modules: Vec<String> = if health_import {
        p.files
            .iter()
            .filter(|f| f.target.is_some())
            .map(|f| module_of(&f.rel))
            .collect()
    } else {
        Vec::new()
    };
    p.tree
        .gate(timeout, &mut || import_check(p, &modules))
        .map_err(|e| {
            if p.health_before.as_deref() == Some("unhealthy") {
                e.context(format!(
                    "{} was unhealthy before this run already: repair it, then roll out",
                    p.name()
                ))
            } else {
                e
            }
        })
}

pub(super) fn backup(p: &TreePlan, dir: &Path) -> Result<()> {
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

pub(super) fn put(tree: &dyn NovaTree, path: &str, data: Option<&[u8]>) -> Result<()> {
    match data {
        Some(d) => tree.write_file(path, d),
        None => tree.remove_file(path),
    }
}

/// Run the tree's Python; Err with its last lines of stderr when it fails.
pub(super) fn python_ok(p: &TreePlan, args: &[&str]) -> Result<()> {
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

pub(super) fn compile(p: &TreePlan, paths: &[&str]) -> Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let mut args = vec!["-m", "py_compile"];
    args.extend_from_slice(paths);
    python_ok(p, &args)
}

pub(super) fn module_of(rel: &str) -> String {
    format!("nova.{}", rel.trim_end_matches(".py").replace('/', "."))
}

/// Valid on Python 2.7 and 3, run as `-c IMPORT_CHECK <nova dir> [sys.path entries]` with the
/// import line and a `where(...)` call appended: the modules import, and each is loaded from
/// the tree we changed (another Nova on sys.path could shadow it: Nova's `nova.virt` is a
/// pkg_resources namespace, which merges every `nova` it finds).
pub(super) const IMPORT_CHECK: &str = r#"import os, sys
sys.dont_write_bytecode = True
want = os.path.realpath(sys.argv[1])
sys.path[:0] = sys.argv[2:]
def where(*names):
    for n in names:
        f = getattr(sys.modules.get(n), "__file__", None) or ""
        if not os.path.realpath(os.path.abspath(f)).startswith(want + os.sep):
            raise SystemExit("%s is loaded from %s, not from %s" % (n, f or "nowhere", want))
"#;

pub(super) fn import_check(p: &TreePlan, modules: &[String]) -> Result<()> {
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

pub(super) fn verify<'a>(
    p: &'a TreePlan,
    want: impl Fn(&'a FilePlan) -> Option<&'a [u8]>,
) -> Result<()> {
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
pub(super) fn rollback(touched: &[&TreePlan], restart: bool, timeout: Duration) -> Result<()> {
    let mut errors = Vec::new();
    for p in touched {
        let t = p.tree;
        // Every step that can run runs, whatever failed before it: a unit that will not start
        // must not keep the new files in place.
        let mut failed: Vec<anyhow::Error> = Vec::new();
        let mut step = |r: Result<()>| {
            if let Err(e) = r {
                failed.push(e);
            }
        };
        let was_running = t.running();
        // `cp` works on a stopped container (one that died on the new files): put the old
        // files back first, then start it, then the exec-based cleanup.
        step(p.changes().try_for_each(|f| match f.current.as_deref() {
            Some(old) => t.write_file(&f.path, old),
            None => Ok(()),
        }));
        match &was_running {
            Ok(false) => step(t.start()),
            Ok(true) => {}
            Err(e) => step(Err(anyhow!("{e:#}"))),
        }
        step(p.changes().try_for_each(|f| {
            if f.current.is_none() {
                put(t, &f.path, None)?;
            } else if f.pristine {
                // the in-tree copy this run made of the original
                let _ = t.remove_file(&orig_path(&f.path));
            }
            t.clear_bytecode(&f.path)
        }));
        if restart && matches!(was_running, Ok(true)) && t.restartable() {
            step(t.restart());
        }
        // Back to the state before the run; the files are verified in any case, so the
        // report says what holds.
        let up = t.recover(p.health_before.as_deref(), timeout);
        let files = verify(p, |f| f.current.as_deref());
        match (up, files) {
            (Ok(()), Ok(())) => {}
            (Err(e), Ok(())) => failed.push(e.context("files byte-identical to before, but")),
            (Ok(()), Err(e)) => failed.push(e),
            (Err(u), Err(f)) => failed.push(anyhow!("{u:#}; and {f:#}")),
        }
        let r: Result<()> = match failed.as_slice() {
            [] => Ok(()),
            many => Err(anyhow!(many
                .iter()
                .map(|e| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join("; "))),
        };
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
