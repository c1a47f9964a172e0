//! Where the Nova package the rollout changes lives, and the file operations on it: inside a
//! container ([`ContainerTree`], through the container engine) or a directory on this machine
//! ([`LocalTree`], a venv's or the distribution's site-packages). `nova::patch` runs one rollout
//! (checksums, backup, copy, byte-compile, health gate, rollback) over this trait; only the
//! lifecycle differs: a container is restarted and health-gated by its engine, a directory has
//! no process to restart.

use super::units;
use crate::io::container::{sha256_hex, Engine};
use crate::limits;
use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What a tree's Python says about its Nova.
#[derive(Deserialize, Serialize, Debug, Clone)]
pub struct NovaInfo {
    /// The `nova` package directory (the one holding `__init__.py`).
    pub path: String,
    /// Nova's version from its package metadata; empty when unknown.
    pub version: String,
    /// `major.minor` of the Python.
    pub python: String,
    /// The Python interpreter that byte-compiles and runs the health import.
    #[serde(default)]
    pub interpreter: String,
}

/// A Nova package tree the rollout reads and changes. Paths are absolute, as the tree's own
/// Python sees them.
pub trait NovaTree {
    /// The tree's name in messages, results and the backup layout (a container name, or the
    /// package directory).
    fn name(&self) -> &str;
    /// The directory under `backup_dir` for this tree's originals. Container names cannot hold
    /// `_` first nor `/`, so the two kinds never share one.
    fn backup_key(&self) -> String;
    /// A file of the tree as messages and diffs name it.
    fn show(&self, path: &str) -> String;
    /// Ready to be changed? Returns the health before the run, when the tree has a healthcheck.
    fn precheck(&self) -> Result<Option<String>>;
    /// Where `nova` is, its version, the Python that runs it.
    fn discover(&self, python: Option<&str>) -> Result<NovaInfo>;
    /// How an operator gets pristine Nova back when no pristine copy is left.
    fn reinstall_hint(&self) -> &'static str;

    /// A file's bytes, or None when it does not exist.
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>>;
    fn write_file(&self, path: &str, data: &[u8]) -> Result<()>;
    /// Remove a file; a missing one is fine.
    fn remove_file(&self, path: &str) -> Result<()>;
    /// Copy a file next to itself (the in-tree copy of a pristine original), keeping its mode.
    fn copy_file(&self, from: &str, to: &str) -> Result<()>;
    /// Python 2 keeps `x.pyc` next to `x.py`, Python 3 `__pycache__/x.*.pyc`: remove both so no
    /// stale bytecode of the other version of the file can load.
    fn clear_bytecode(&self, path: &str) -> Result<()>;
    /// Run `<interpreter> args...` where the tree's Python runs; the raw output.
    fn python(&self, interpreter: &str, args: &[&str]) -> Result<Output>;
    /// Directories to put first on `sys.path` for `import nova` to find this tree.
    fn sys_path(&self) -> Vec<String> {
        Vec::new()
    }

    // The lifecycle. The defaults are a tree no process runs from: nothing to restart, the
    // health gate is the probe alone.
    /// Whether a restart loads the changed files (false: "not applicable").
    fn restartable(&self) -> bool {
        false
    }
    fn running(&self) -> Result<bool> {
        Ok(true)
    }
    fn start(&self) -> Result<()> {
        Ok(())
    }
    fn restart(&self) -> Result<()> {
        Ok(())
    }
    /// The health gate after the change: the tree's own health (a container running, its
    /// healthcheck) and then `probe` (the import check).
    fn gate(&self, _timeout: Duration, probe: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        probe()
    }
    /// After a rollback: back to the health `before` the run.
    fn recover(&self, _before: Option<&str>, _timeout: Duration) -> Result<()> {
        Ok(())
    }
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

/// The last JSON object line a discovery script printed.
fn parse_info(out: &Output, what: &str) -> Result<NovaInfo> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("{what} printed no Nova location: {text:?}"))
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim()
        .lines()
        .last()
        .unwrap_or("failed")
        .to_string()
}

/// The Nova package in a Kolla container.
pub struct ContainerTree<'a> {
    pub engine: &'a Engine,
    pub name: String,
}

impl NovaTree for ContainerTree<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn backup_key(&self) -> String {
        self.name.clone()
    }
    fn show(&self, path: &str) -> String {
        format!("{}:{path}", self.name)
    }
    fn precheck(&self) -> Result<Option<String>> {
        let st = self.engine.state(&self.name)?;
        if !st.running {
            bail!(
                "container {} is not running (exit code {}): start it first; nothing was changed",
                self.name,
                st.exit_code
            );
        }
        Ok(st.health)
    }
    fn discover(&self, python: Option<&str>) -> Result<NovaInfo> {
        let candidates: Vec<&str> = match python {
            Some(p) => vec![p],
            None => vec!["/var/lib/kolla/venv/bin/python", "python3", "python"],
        };
        let mut tried = Vec::new();
        for py in candidates {
            let out = self.python(py, &["-c", DISCOVER])?;
            if out.status.success() {
                let mut info = parse_info(&out, &format!("{py} in {}", self.name))?;
                info.interpreter = py.to_string();
                return Ok(info);
            }
            tried.push(format!("{py}: {}", last_line(&out.stderr)));
        }
        bail!(
            "no Python in container {} imports nova ({}); set `python`",
            self.name,
            tried.join("; ")
        )
    }
    fn reinstall_hint(&self) -> &'static str {
        "reinstall the container's image (kolla-ansible)"
    }
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.engine.read_file(&self.name, path)?)
    }
    fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        Ok(self.engine.write_file(&self.name, path, data)?)
    }
    fn remove_file(&self, path: &str) -> Result<()> {
        self.engine.exec_ok(&self.name, &["rm", "-f", path])?;
        Ok(())
    }
    fn copy_file(&self, from: &str, to: &str) -> Result<()> {
        self.engine.exec_ok(&self.name, &["cp", "-p", from, to])?;
        Ok(())
    }
    fn clear_bytecode(&self, path: &str) -> Result<()> {
        let (dir, file) = path.rsplit_once('/').context("file path")?;
        let stem = file.trim_end_matches(".py");
        let script = r#"rm -f "$1c" "$1o"; for f in "$2"/__pycache__/"$3".*.pyc; do [ -e "$f" ] && rm -f "$f"; done; exit 0"#;
        self.engine
            .exec_ok(&self.name, &["sh", "-c", script, "sh", path, dir, stem])?;
        Ok(())
    }
    fn python(&self, interpreter: &str, args: &[&str]) -> Result<Output> {
        let mut argv = vec![interpreter];
        argv.extend_from_slice(args);
        Ok(self.engine.exec(&self.name, &argv)?)
    }
    fn restartable(&self) -> bool {
        true
    }
    fn running(&self) -> Result<bool> {
        Ok(self.engine.state(&self.name)?.running)
    }
    fn start(&self) -> Result<()> {
        Ok(self.engine.start(&self.name)?)
    }
    fn restart(&self) -> Result<()> {
        Ok(self.engine.restart(&self.name)?)
    }
    fn gate(&self, timeout: Duration, probe: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        Ok(self.engine.wait_healthy(&self.name, timeout, probe)?)
    }
    /// Healthy again if it was (or running, without a healthcheck); only running if it was
    /// unhealthy or still starting already.
    fn recover(&self, before: Option<&str>, timeout: Duration) -> Result<()> {
        match before {
            None | Some("healthy") => self.engine.wait_healthy(&self.name, timeout, || Ok(()))?,
            Some(_) => self.engine.wait_running(&self.name, timeout)?,
        }
        Ok(())
    }
}

/// Valid on Python 2.7 and 3, run with the package's parent directory and the package
/// directory as arguments: the Python version, and Nova's version as this Python's package
/// metadata knows it, without importing nova: the distribution installed in the parent
/// directory, else the one this Python imports nova from when that is this very tree.
const LOCAL_DISCOVER: &str = r#"import json, os, sys
parent, pkg = sys.argv[1], sys.argv[2]
v = ""
try:
    from importlib import metadata
    for d in metadata.distributions(path=[parent]):
        if (d.metadata["Name"] or "").lower() == "nova":
            v = d.version
            break
except Exception:
    pass
if not v:
    try:
        import pkg_resources
        for d in pkg_resources.find_distributions(parent):
            if d.project_name.lower() == "nova":
                v = d.version
                break
    except Exception:
        pass
where = None
try:
    from importlib.util import find_spec
    spec = find_spec("nova")
    where = spec and list(spec.submodule_search_locations or [None])[0]
except ImportError:
    try:
        import imp
        where = imp.find_module("nova")[1]
    except ImportError:
        pass
if not v and where and os.path.realpath(where) == os.path.realpath(pkg):
    try:
        from importlib import metadata
        v = metadata.version("nova")
    except Exception:
        try:
            import pkg_resources
            v = pkg_resources.get_distribution("nova").version
        except Exception:
            pass
print(json.dumps({"path": pkg, "version": v, "python": "%d.%d" % sys.version_info[:2]}))
"#;

/// A `nova` package directory on this machine, changed in place.
pub struct LocalTree {
    /// Absolute, normalised; its last component is `nova`.
    dir: PathBuf,
    name: String,
    /// The most one run of its Python may take.
    timeout: Duration,
    /// The systemd units that run from this tree (restarted after a change; none: no restart).
    services: Vec<String>,
}

impl LocalTree {
    /// `path` must be the `nova` package directory itself (holding `__init__.py`); `timeout`
    /// bounds each run of its Python; `services` are the systemd units that run from it.
    pub fn new(path: &Path, timeout: Duration, services: Vec<String>) -> Result<LocalTree> {
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .context("cannot tell the current directory")?
                .join(path)
        };
        // Normalise `.`, `..` and `//` without resolving symlinks: the tree is imported as
        // `<parent>/nova`, whatever the parent links to.
        let mut dir = PathBuf::new();
        for c in abs.components() {
            match c {
                Component::ParentDir => {
                    dir.pop();
                }
                Component::CurDir => {}
                other => dir.push(other),
            }
        }
        let shown = dir.display().to_string();
        let meta = std::fs::metadata(&dir)
            .map_err(|e| anyhow::anyhow!("path {shown} does not exist or cannot be read ({e}): give the nova package directory, e.g. /var/lib/kolla/venv/lib/python3.7/site-packages/nova; nothing was changed"))?;
        if !meta.is_dir() {
            bail!("path {shown} is not a directory: give the nova package directory itself; nothing was changed");
        }
        if dir.file_name().and_then(|n| n.to_str()) != Some("nova") {
            bail!("path {shown} is not named nova: give the nova package directory itself (the one holding __init__.py), not its parent; nothing was changed");
        }
        if !dir.join("__init__.py").is_file() {
            bail!("path {shown} holds no __init__.py: it is not the nova package directory; nothing was changed");
        }
        if shown.contains(|c: char| c.is_control()) {
            bail!("path {shown:?} refused: control characters");
        }
        for u in &services {
            super::units::check_name(u)?;
        }
        Ok(LocalTree {
            name: shown,
            dir,
            timeout,
            services,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn parent(&self) -> PathBuf {
        self.dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"))
    }
}

/// Nova's version from the package metadata next to the package: `nova-*.dist-info/METADATA`
/// (wheels, pip) or `nova*.egg-info` (a `PKG-INFO` directory or a single file: setuptools,
/// distribution packages). Ok(None): there is none. Several versions: an error naming them.
pub fn version_from_metadata(parent: &Path) -> Result<Option<String>> {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return Ok(None);
    };
    let mut found: BTreeSet<String> = BTreeSet::new();
    let mut where_: Vec<String> = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let fname = e.file_name().to_string_lossy().to_string();
        if !fname.to_ascii_lowercase().starts_with("nova") {
            continue;
        }
        let file = if fname.ends_with(".dist-info") {
            e.path().join("METADATA")
        } else if fname.ends_with(".egg-info") {
            if e.path().is_dir() {
                e.path().join("PKG-INFO")
            } else {
                e.path()
            }
        } else {
            continue;
        };
        let Ok(text) = limits::read_text("package metadata", &file, limits::MAX_FILE_BYTES) else {
            continue;
        };
        let (mut name, mut version) = (None, None);
        for line in text.lines() {
            if line.trim().is_empty() {
                break; // the headers end; the description follows
            }
            if let Some(v) = line.strip_prefix("Name:") {
                name = Some(v.trim().to_ascii_lowercase().replace(['_', '.'], "-"));
            } else if let Some(v) = line.strip_prefix("Version:") {
                version = Some(v.trim().to_string());
            }
        }
        if let (Some("nova"), Some(v)) = (name.as_deref(), version) {
            if !v.is_empty() {
                found.insert(v);
                where_.push(fname);
            }
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.into_iter().next()),
        _ => {
            where_.sort();
            bail!(
                "several Nova package metadata next to the package in {} ({}): remove the stale one or set `release`",
                parent.display(),
                where_.join(", ")
            )
        }
    }
}

impl NovaTree for LocalTree {
    fn name(&self) -> &str {
        &self.name
    }
    fn backup_key(&self) -> String {
        format!("_path{}", self.name)
    }
    fn show(&self, path: &str) -> String {
        path.to_string()
    }
    fn precheck(&self) -> Result<Option<String>> {
        if !self.dir.join("__init__.py").is_file() {
            bail!(
                "{} holds no __init__.py any more; nothing was changed",
                self.name
            );
        }
        units::precheck(&self.services)?;
        Ok(None)
    }
    fn restartable(&self) -> bool {
        !self.services.is_empty()
    }
    fn running(&self) -> Result<bool> {
        Ok(units::all_active(&self.services)?)
    }
    fn start(&self) -> Result<()> {
        Ok(units::run("start", &self.services)?)
    }
    fn restart(&self) -> Result<()> {
        Ok(units::run("restart", &self.services)?)
    }
    fn gate(&self, timeout: Duration, probe: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        units::wait_up(&self.services, timeout)?;
        probe()
    }
    /// The units were active before the run (precheck): active again.
    fn recover(&self, _before: Option<&str>, timeout: Duration) -> Result<()> {
        Ok(units::wait_up(&self.services, timeout)?)
    }
    fn discover(&self, python: Option<&str>) -> Result<NovaInfo> {
        let py = python.unwrap_or("python3");
        let parent = self.parent();
        let parent_s = parent.to_str().context("parent path is not UTF-8")?;
        let out = self.python(py, &["-c", LOCAL_DISCOVER, parent_s, &self.name])?;
        if !out.status.success() {
            bail!(
                "`{py}` cannot run a script ({}); set `python` to the interpreter of this Nova",
                last_line(&out.stderr)
            );
        }
        let mut info = parse_info(&out, py)?;
        info.path = self.name.clone();
        info.interpreter = py.to_string();
        if let Some(v) = version_from_metadata(&parent)? {
            info.version = v;
        }
        Ok(info)
    }
    fn reinstall_hint(&self) -> &'static str {
        "reinstall this Nova (its wheel or distribution package)"
    }
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        if !Path::new(path).exists() {
            return Ok(None);
        }
        limits::read_bytes(path, Path::new(path), limits::MAX_SOURCE_BYTES)
            .map(Some)
            .map_err(anyhow::Error::new)
    }
    /// Atomic: a temp file in the same directory renamed over the file, with the old file's
    /// mode (and owner, when permitted); a new file gets 0644.
    fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let p = Path::new(path);
        let dir = p.parent().context("file path")?;
        let old = std::fs::metadata(p).ok();
        let mut tmp = tempfile::Builder::new()
            .prefix(".numa-repin.")
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
        tmp.write_all(data)
            .and_then(|_| tmp.as_file().sync_all())
            .with_context(|| format!("cannot write a temp file in {}", dir.display()))?;
        let mode = old.as_ref().map(|m| m.mode() & 0o7777).unwrap_or(0o644);
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
        if let Some(m) = &old {
            let _ = std::os::unix::fs::fchown(tmp.as_file(), Some(m.uid()), Some(m.gid()));
        }
        tmp.persist(p)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot replace {path}"))?;
        Ok(())
    }
    fn remove_file(&self, path: &str) -> Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {path}"))
            }
            _ => Ok(()),
        }
    }
    fn copy_file(&self, from: &str, to: &str) -> Result<()> {
        std::fs::copy(from, to)
            .map(|_| ())
            .with_context(|| format!("cannot copy {from} to {to}"))
    }
    fn clear_bytecode(&self, path: &str) -> Result<()> {
        self.remove_file(&format!("{path}c"))?;
        self.remove_file(&format!("{path}o"))?;
        let p = Path::new(path);
        let dir = p.parent().context("file path")?.join("__pycache__");
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .context("file name")?;
        let prefix = format!("{stem}.");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in rd.filter_map(|e| e.ok()) {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with(&prefix) && n.ends_with(".pyc") {
                self.remove_file(&e.path().to_string_lossy())?;
            }
        }
        Ok(())
    }
    fn python(&self, interpreter: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(interpreter);
        cmd.args(args);
        output_within(cmd, self.timeout).with_context(|| {
            format!("cannot run `{interpreter}`; set `python` to the interpreter of this Nova")
        })
    }
    fn sys_path(&self) -> Vec<String> {
        vec![self.parent().to_string_lossy().to_string()]
    }
}

/// Run `cmd` to its end, its output captured; killed and Err after `timeout`.
fn output_within(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Read from threads so a full pipe cannot stall the child while we wait for it.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if t0.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "it did not finish within {}s (health_timeout_s) and was killed",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// The sha256 of a file a tree holds, or `absent`.
pub fn sum_of(data: Option<&[u8]>) -> String {
    data.map(sha256_hex).unwrap_or_else(|| "absent".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    fn tree(root: &Path) -> PathBuf {
        let nova = root.join("nova");
        std::fs::create_dir_all(nova.join("compute/__pycache__")).unwrap();
        std::fs::write(nova.join("__init__.py"), b"").unwrap();
        nova
    }

    #[test]
    fn local_path_must_be_the_nova_package() {
        let d = tempfile::tempdir().unwrap();
        let nova = tree(d.path());
        let t = LocalTree::new(&nova.join("compute/.."), T, Vec::new()).unwrap();
        assert_eq!(t.dir(), nova.as_path());
        assert_eq!(t.sys_path(), vec![d.path().to_string_lossy().to_string()]);
        assert!(t.backup_key().starts_with("_path/"));
        let e = LocalTree::new(d.path(), T, Vec::new())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not named nova"), "{e}");
        let e = LocalTree::new(&d.path().join("missing/nova"), T, Vec::new())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::remove_file(nova.join("__init__.py")).unwrap();
        let e = LocalTree::new(&nova, T, Vec::new())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no __init__.py"), "{e}");
    }

    #[test]
    fn metadata_next_to_the_package() {
        let d = tempfile::tempdir().unwrap();
        tree(d.path());
        assert_eq!(version_from_metadata(d.path()).unwrap(), None);
        let di = d.path().join("nova-19.3.2.dist-info");
        std::fs::create_dir_all(&di).unwrap();
        std::fs::write(
            di.join("METADATA"),
            "Metadata-Version: 2.1\nName: nova\nVersion: 19.3.2\n\nVersion: 1\n",
        )
        .unwrap();
        // another project whose name starts with nova does not count
        let other = d.path().join("nova_powervm-7.0.0.egg-info");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(
            other.join("PKG-INFO"),
            "Name: nova-powervm\nVersion: 7.0.0\n",
        )
        .unwrap();
        assert_eq!(
            version_from_metadata(d.path()).unwrap().as_deref(),
            Some("19.3.2")
        );
        // a single-file egg-info of another version: ambiguous
        std::fs::write(
            d.path().join("nova-17.0.13-py2.7.egg-info"),
            "Name: nova\nVersion: 17.0.13\n",
        )
        .unwrap();
        let e = version_from_metadata(d.path()).unwrap_err().to_string();
        assert!(e.contains("several") && e.contains("17.0.13-py2.7"), "{e}");
    }

    #[test]
    fn local_files_and_bytecode() {
        let d = tempfile::tempdir().unwrap();
        let nova = tree(d.path());
        let t = LocalTree::new(&nova, T, Vec::new()).unwrap();
        let f = nova.join("compute/manager.py");
        let fs = f.to_str().unwrap();
        assert_eq!(t.read_file(fs).unwrap(), None);
        t.write_file(fs, b"x = 1\n").unwrap();
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o644
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        t.write_file(fs, b"x = 2\n").unwrap();
        assert_eq!(t.read_file(fs).unwrap().unwrap(), b"x = 2\n");
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let pc = nova.join("compute/__pycache__");
        for n in [
            "manager.cpython-37.pyc",
            "manager.cpython-311.opt-1.pyc",
            "manager_x.cpython-37.pyc",
        ] {
            std::fs::write(pc.join(n), b"").unwrap();
        }
        std::fs::write(nova.join("compute/manager.pyc"), b"").unwrap();
        t.clear_bytecode(fs).unwrap();
        let left: Vec<String> = std::fs::read_dir(&pc)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(left, vec!["manager_x.cpython-37.pyc".to_string()]);
        assert!(!nova.join("compute/manager.pyc").exists());
        t.remove_file(fs).unwrap();
        t.remove_file(fs).unwrap();
        assert_eq!(t.read_file(fs).unwrap(), None);
    }
}
