//! Container engine operations (docker or podman CLI) for the Nova patch rollout: exec, file
//! read/write, restart, state. Commands are argument vectors, never shell strings built from
//! input; every failure names the command and the engine's own message.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Why an engine operation failed; every message names the command or the container.
#[derive(thiserror::Error, Debug)]
pub enum ContainerError {
    #[error(
        "container engine {0} does not answer (`{0} info` failed): is its daemon/service running?"
    )]
    NoAnswer(String),
    #[error("no container engine answers: neither `docker info` nor `podman info` works")]
    NoEngine,
    #[error("container_engine must be auto, docker or podman, not {0:?}")]
    UnknownEngine(String),
    /// An I/O step around the engine (running it, a temp file): what, and the OS's message.
    #[error("{what}: {why}")]
    Io { what: String, why: String },
    #[error(transparent)]
    Os(#[from] std::io::Error),
    /// A pipe or path that should be there and is not.
    #[error("{0}")]
    Missing(String),
    #[error(
        "`{cmd}` wrote more than {max} bytes: refused (no file the rollout reads is that large)"
    )]
    TooMuchOutput { cmd: String, max: u64 },
    /// The engine ran and failed: the command and its last lines of standard error.
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("in container {name}: `{cmd}` failed: {stderr}")]
    ExecFailed {
        name: String,
        cmd: String,
        stderr: String,
    },
    #[error("in container {name}: cannot read {path}: {stderr}")]
    Unreadable {
        name: String,
        path: String,
        stderr: String,
    },
    /// `log` is `; its log ends: ...`, or empty.
    #[error("container {name} is not running after {timeout_s}s (exit code {exit_code}){log}")]
    NotRunningAfter {
        name: String,
        timeout_s: u64,
        exit_code: i64,
        log: String,
    },
    #[error("container {name} is not running (exit code {exit_code}){log}")]
    NotRunning {
        name: String,
        exit_code: i64,
        log: String,
    },
    #[error("container {0}'s own healthcheck reports unhealthy")]
    Unhealthy(String),
    #[error("container {name} not healthy after {timeout_s}s: {last}")]
    NotHealthy {
        name: String,
        timeout_s: u64,
        last: String,
    },
}

type Result<T> = std::result::Result<T, ContainerError>;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError {
    let what = what.into();
    move |e| ContainerError::Io {
        what,
        why: e.to_string(),
    }
}

/// `; its log ends: <log>` for a failure message, or nothing when the log is empty.
fn log_note(logs: String) -> String {
    if logs.is_empty() {
        String::new()
    } else {
        format!("; its log ends: {logs}")
    }
}

/// A container engine CLI (`docker` or `podman`).
#[derive(Debug, Clone)]
pub struct Engine {
    pub bin: String,
}

/// What the engine says about a container's state.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub running: bool,
    pub exit_code: i64,
    /// The healthcheck status (`starting`, `healthy`, `unhealthy`) when the container has one.
    pub health: Option<String>,
}

pub fn sha256_hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl Engine {
    /// `auto`: docker when its daemon answers, else podman.
    pub fn detect(choice: &str) -> Result<Engine> {
        // Plain `info`: it fails when docker's daemon is down, and podman (no daemon) answers it;
        // `--format {{.ServerVersion}}` is docker's field only, and made podman look dead.
        let answers = |bin: &str| {
            Command::new(bin)
                .arg("info")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        match choice {
            "docker" | "podman" => {
                if !answers(choice) {
                    return Err(ContainerError::NoAnswer(choice.to_string()));
                }
                Ok(Engine {
                    bin: choice.to_string(),
                })
            }
            "auto" => ["docker", "podman"]
                .into_iter()
                .find(|b| answers(b))
                .map(|b| Engine { bin: b.to_string() })
                .ok_or(ContainerError::NoEngine),
            other => Err(ContainerError::UnknownEngine(other.to_string())),
        }
    }

    fn output(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
        self.output_bounded(args, stdin, crate::limits::MAX_SOURCE_BYTES)
    }

    /// Run the engine, keeping at most `max` bytes of its standard output (and of its standard
    /// error, which only feeds messages): more output is refused, not buffered, so a container
    /// that floods cannot exhaust the module's memory.
    fn output_bounded(&self, args: &[&str], stdin: Option<&[u8]>, max: u64) -> Result<Output> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd
            .spawn()
            .map_err(io_err(format!("cannot run {}", self.bin)))?;
        if let Some(data) = stdin {
            // Written from a thread so a large input cannot deadlock against a full stdout pipe.
            let mut pipe = child
                .stdin
                .take()
                .ok_or_else(|| ContainerError::Missing("no stdin pipe".into()))?;
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            });
        }
        let out = child
            .stdout
            .take()
            .ok_or_else(|| ContainerError::Missing("no stdout pipe".into()))?;
        let err = child
            .stderr
            .take()
            .ok_or_else(|| ContainerError::Missing("no stderr pipe".into()))?;
        let err = std::thread::spawn(move || read_bounded(err, max));
        let stdout = read_bounded(out, max);
        let status = child.wait()?;
        let stderr = err.join().map_err(|_| {
            ContainerError::Missing(format!("reading the stderr of {} failed", self.bin))
        })??;
        let (stdout, over) = stdout?;
        if over {
            return Err(ContainerError::TooMuchOutput {
                cmd: format!("{} {}", self.bin, args.join(" ")),
                max,
            });
        }
        Ok(Output {
            status,
            stdout,
            stderr: stderr.0,
        })
    }

    /// Run `<engine> args...`; Err with the engine's stderr when it fails.
    pub fn run(&self, args: &[&str]) -> Result<Vec<u8>> {
        let out = self.output(args, None)?;
        if !out.status.success() {
            return Err(ContainerError::Failed {
                cmd: format!("{} {}", self.bin, args.join(" ")),
                stderr: tail(&out.stderr),
            });
        }
        Ok(out.stdout)
    }

    /// `exec` in a container; returns the raw output (the caller decides what a failure means).
    pub fn exec(&self, name: &str, argv: &[&str]) -> Result<Output> {
        let mut args = vec!["exec", name];
        args.extend_from_slice(argv);
        self.output(&args, None)
    }

    /// `exec` that must succeed.
    pub fn exec_ok(&self, name: &str, argv: &[&str]) -> Result<Vec<u8>> {
        let out = self.exec(name, argv)?;
        if !out.status.success() {
            return Err(ContainerError::ExecFailed {
                name: name.to_string(),
                cmd: argv.join(" "),
                stderr: tail(&out.stderr),
            });
        }
        Ok(out.stdout)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.output(
            &[
                "inspect",
                "--type",
                "container",
                "--format",
                "{{.Id}}",
                name,
            ],
            None,
        )
        .map(|o| o.status.success())
        .unwrap_or(false)
    }

    pub fn state(&self, name: &str) -> Result<State> {
        let fmt = "{{.State.Running}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{end}}";
        let out = self.run(&["inspect", "--type", "container", "--format", fmt, name])?;
        let text = String::from_utf8_lossy(&out);
        let mut it = text.split_whitespace();
        let running = it.next() == Some("true");
        let exit_code = it.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
        let health = it.next().map(str::to_string);
        Ok(State {
            running,
            exit_code,
            health,
        })
    }

    /// A file's bytes, or None when it does not exist.
    pub fn read_file(&self, name: &str, path: &str) -> Result<Option<Vec<u8>>> {
        let out = self.exec(name, &["cat", "--", path])?;
        if out.status.success() {
            return Ok(Some(out.stdout));
        }
        let test = self.exec(name, &["test", "-e", path])?;
        if !test.status.success() {
            return Ok(None);
        }
        Err(ContainerError::Unreadable {
            name: name.to_string(),
            path: path.to_string(),
            stderr: tail(&out.stderr),
        })
    }

    /// Write `data` to `path` in the container (mode 0644), through a host temp file and `cp`,
    /// which also works on a stopped container.
    pub fn write_file(&self, name: &str, path: &str, data: &[u8]) -> Result<()> {
        let mut tmp =
            tempfile::NamedTempFile::new().map_err(io_err("cannot create a temp file"))?;
        tmp.write_all(data)?;
        tmp.flush()?;
        let mut perm = tmp.as_file().metadata()?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
        tmp.as_file().set_permissions(perm)?;
        let dest = format!("{name}:{path}");
        let src = tmp
            .path()
            .to_str()
            .ok_or_else(|| ContainerError::Missing("temp path".into()))?;
        self.run(&["cp", src, &dest]).map(|_| ())
    }

    pub fn restart(&self, name: &str) -> Result<()> {
        self.run(&["restart", "-t", "10", name]).map(|_| ())
    }

    pub fn start(&self, name: &str) -> Result<()> {
        self.run(&["start", name]).map(|_| ())
    }

    /// The last lines of the container's log, for a failure message.
    pub fn log_tail(&self, name: &str) -> String {
        match self.output(&["logs", "--tail", "5", name], None) {
            Ok(o) => {
                let mut s = String::from_utf8_lossy(&o.stdout).to_string();
                s.push_str(&String::from_utf8_lossy(&o.stderr));
                s.trim().to_string()
            }
            Err(_) => String::new(),
        }
    }

    /// Wait until the container runs and keeps running across a short settle time, whatever
    /// its healthcheck says (a rollback into a container that was unhealthy before the run
    /// cannot be asked to make it healthy). Err when it is not running by the timeout.
    pub fn wait_running(&self, name: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let st = self.state(name)?;
            if st.running {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(ContainerError::NotRunningAfter {
                    name: name.to_string(),
                    timeout_s: timeout.as_secs(),
                    exit_code: st.exit_code,
                    log: log_note(self.log_tail(name)),
                });
            }
        }
    }

    /// Wait until the container runs (and, when it has a healthcheck, is healthy), then run
    /// `probe` until it passes. Err with the reason at the first hard failure or the timeout.
    pub fn wait_healthy(
        &self,
        name: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> anyhow::Result<()>,
    ) -> Result<()> {
        let start = Instant::now();
        let mut last;
        // A container that restarts and dies a moment later must not pass: require it to be
        // seen running across a short settle time before the probe counts.
        std::thread::sleep(Duration::from_millis(500));
        loop {
            let st = self.state(name)?;
            if !st.running {
                return Err(ContainerError::NotRunning {
                    name: name.to_string(),
                    exit_code: st.exit_code,
                    log: log_note(self.log_tail(name)),
                });
            }
            match st.health.as_deref() {
                Some("unhealthy") => return Err(ContainerError::Unhealthy(name.to_string())),
                Some("healthy") | None => match probe() {
                    Ok(()) => return Ok(()),
                    Err(e) => last = format!("{e:#}"),
                },
                Some(other) => last = format!("healthcheck status {other}"),
            }
            if start.elapsed() >= timeout {
                return Err(ContainerError::NotHealthy {
                    name: name.to_string(),
                    timeout_s: timeout.as_secs(),
                    last,
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Up to `max` bytes of `r`, and whether there was more (the rest is read and dropped, so the
/// writer is never blocked on a full pipe).
fn read_bounded(r: impl std::io::Read, max: u64) -> std::io::Result<(Vec<u8>, bool)> {
    use std::io::Read as _;
    let mut r = r;
    let mut buf = Vec::new();
    (&mut r).take(max + 1).read_to_end(&mut buf)?;
    let over = buf.len() as u64 > max;
    if over {
        buf.truncate(max as usize);
        std::io::copy(&mut r, &mut std::io::sink())?;
    }
    Ok((buf, over))
}

fn tail(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    let s = s.trim();
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(3);
    lines[start..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn unknown_engine_is_refused() {
        let e = Engine::detect("lxc").unwrap_err().to_string();
        assert!(e.contains("auto, docker or podman"), "{e}");
    }

    #[test]
    fn output_beyond_the_bound_is_refused() {
        let e = Engine { bin: "head".into() };
        let ok = e
            .output_bounded(&["-c", "1000", "/dev/zero"], None, 1000)
            .unwrap();
        assert_eq!(ok.stdout.len(), 1000);
        let err = e
            .output_bounded(&["-c", "3000000", "/dev/zero"], None, 1000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than 1000 bytes"), "{err}");
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail(b"a\nb\nc\nd\n"), "b | c | d");
    }
}
