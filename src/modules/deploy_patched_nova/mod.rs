//! The in-band Nova patch rollout (`deploy_patched_nova`): move the files of a Nova package
//! from pristine to patched (or back), verified by checksum before anything changes, with
//! backups, byte-compilation by Nova's own Python, a health gate, and a rollback to
//! byte-identical files on any failure. The package is in Kolla containers (restarted after the
//! change) or a directory on this machine (`path`, no restart); `nova::tree` holds the two.

mod args;
mod plan;
mod record;
mod report;
mod rollout;
pub mod tree;
pub mod units;

pub use args::{Args, ArgsError, PatchState};

use crate::ansible::{Context, Failure, Outcome};
use crate::io::container::Engine;
use anyhow::Result;
use args::default_containers;
use rollout::rollout;
use std::time::Duration;
use tree::{ContainerTree, LocalTree, NovaTree};

/// How the result names what was patched: per container under `containers` (with the engine),
/// or the one directory of `path` at the top level.
pub(super) enum Layout {
    Containers { engine: String },
    Path,
}

pub(super) fn fail(msg: String) -> anyhow::Error {
    Failure::new(msg).into()
}

/// The module's flow (`ansible::run` calls it with the parsed arguments): the target named by
/// the arguments, then the rollout over it.
pub fn run(a: Args, ctx: &Context) -> Result<Outcome> {
    a.check_combination().map_err(|e| fail(format!("{e}")))?;
    match &a.path {
        Some(path) => run_path(&a, path, ctx),
        None => run_containers(&a, ctx),
    }
}

/// A Nova directory on this machine (`path`), and the systemd units that run from it.
fn run_path(a: &Args, path: &std::path::Path, ctx: &Context) -> Result<Outcome> {
    let tree = LocalTree::new(
        path,
        Duration::from_secs(a.health_timeout_s),
        a.services.clone().unwrap_or_default(),
    )
    .map_err(|e| fail(format!("{e:#}")))?;
    rollout(a, ctx, &[(&tree, a.parts.as_deref())], Layout::Path)
}

/// Kolla's Nova containers (`containers`, or the default ones), through the container engine.
fn run_containers(a: &Args, ctx: &Context) -> Result<Outcome> {
    let containers = a.containers.clone().unwrap_or_else(default_containers);
    let engine = Engine::detect(&a.container_engine).map_err(|e| fail(format!("{e:#}")))?;
    let missing: Vec<&str> = containers
        .keys()
        .filter(|c| !engine.exists(c))
        .map(|s| s.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(fail(format!(
            "no container named {} ({}); nothing was changed",
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
    rollout(a, ctx, &targets, layout)
}

#[cfg(test)]
mod tests {
    use super::args::matches;
    use super::plan::{FilePlan, FileStatus};
    use super::record::{load_written, written_path};
    use super::report::diff_of;
    use super::rollout::module_of;
    use super::*;
    use serde_json::json;

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
    fn arguments_that_do_not_go_together() {
        let check = |v: serde_json::Value| {
            let (a, _): (Args, _) =
                crate::ansible::parse_args("deploy_patched_nova", &v.to_string()).unwrap();
            a.check_combination().err().map(|e| e.to_string())
        };
        assert_eq!(check(json!({})), None);
        assert_eq!(
            check(json!({"path": "/x/nova", "services": ["nova-compute"]})),
            None
        );
        let e = check(json!({"path": "/x/nova", "containers": {"c": ["compute/"]}})).unwrap();
        assert!(
            e.starts_with("`path` and `containers` exclude each other"),
            "{e}"
        );
        let e = check(json!({"parts": ["compute/"]})).unwrap();
        assert_eq!(
            e,
            "`parts` goes with `path`; for containers give each its parts in `containers`"
        );
        let e = check(json!({"containers": {"c": []}})).unwrap();
        assert_eq!(e, "container c is given no parts of the patch");
        let e = check(json!({"containers": {}})).unwrap();
        assert_eq!(
            e,
            "`containers` is empty: name the Nova containers to patch"
        );
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
            status: FileStatus::WouldUpdate,
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
