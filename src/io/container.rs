//! Container engine operations (docker or podman CLI) for the Nova patch rollout: exec, file
//! read/write, restart, state. Commands are argument vectors, never shell strings built from
//! input; every failure names the command and the engine's own message.

use anyhow::{bail, Context as _, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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
                    bail!("container engine {choice} does not answer (`{choice} info` failed): is its daemon/service running?");
                }
                Ok(Engine {
                    bin: choice.to_string(),
                })
            }
            "auto" => ["docker", "podman"]
                .into_iter()
                .find(|b| answers(b))
                .map(|b| Engine { bin: b.to_string() })
                .context(
                    "no container engine answers: neither `docker info` nor `podman info` works",
                ),
            other => bail!("container_engine must be auto, docker or podman, not {other:?}"),
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
            .with_context(|| format!("cannot run {}", self.bin))?;
        if let Some(data) = stdin {
            // Written from a thread so a large input cannot deadlock against a full stdout pipe.
            let mut pipe = child.stdin.take().context("no stdin pipe")?;
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            });
        }
        let out = child.stdout.take().context("no stdout pipe")?;
        let err = child.stderr.take().context("no stderr pipe")?;
        let err = std::thread::spawn(move || read_bounded(err, max));
        let stdout = read_bounded(out, max);
        let status = child.wait()?;
        let stderr = err
            .join()
            .map_err(|_| anyhow::anyhow!("reading the stderr of {} failed", self.bin))??;
        let (stdout, over) = stdout?;
        if over {
            bail!(
                "`{} {}` wrote more than {max} bytes: refused (no file the rollout reads is that large)",
                self.bin,
                args.join(" ")
            );
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
            bail!(
                "`{} {}` failed: {}",
                self.bin,
                args.join(" "),
                tail(&out.stderr)
            );
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
            bail!(
                "in container {name}: `{}` failed: {}",
                argv.join(" "),
                tail(&out.stderr)
            );
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
        bail!(
            "in container {name}: cannot read {path}: {}",
            tail(&out.stderr)
        )
    }

    /// Write `data` to `path` in the container (mode 0644), through a host temp file and `cp`,
    /// which also works on a stopped container.
    pub fn write_file(&self, name: &str, path: &str, data: &[u8]) -> Result<()> {
        let mut tmp = tempfile::NamedTempFile::new().context("cannot create a temp file")?;
        tmp.write_all(data)?;
        tmp.flush()?;
        let mut perm = tmp.as_file().metadata()?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
        tmp.as_file().set_permissions(perm)?;
        let dest = format!("{name}:{path}");
        self.run(&["cp", tmp.path().to_str().context("temp path")?, &dest])
            .map(|_| ())
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
                let logs = self.log_tail(name);
                bail!(
                    "container {name} is not running after {}s (exit code {}){}",
                    timeout.as_secs(),
                    st.exit_code,
                    if logs.is_empty() {
                        String::new()
                    } else {
                        format!("; its log ends: {logs}")
                    }
                );
            }
        }
    }

    /// Wait until the container runs (and, when it has a healthcheck, is healthy), then run
    /// `probe` until it passes. Err with the reason at the first hard failure or the timeout.
    pub fn wait_healthy(
        &self,
        name: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        let start = Instant::now();
        let mut last;
        // A container that restarts and dies a moment later must not pass: require it to be
        // seen running across a short settle time before the probe counts.
        std::thread::sleep(Duration::from_millis(500));
        loop {
            let st = self.state(name)?;
            if !st.running {
                let logs = self.log_tail(name);
                bail!(
                    "container {name} is not running (exit code {}){}",
                    st.exit_code,
                    if logs.is_empty() {
                        String::new()
                    } else {
                        format!("; its log ends: {logs}")
                    }
                );
            }
            match st.health.as_deref() {
                Some("unhealthy") => bail!("container {name}'s own healthcheck reports unhealthy"),
                Some("healthy") | None => match probe() {
                    Ok(()) => return Ok(()),
                    Err(e) => last = format!("{e:#}"),
                },
                Some(other) => last = format!("healthcheck status {other}"),
            }
            if start.elapsed() >= timeout {
                bail!(
                    "container {name} not healthy after {}s: {last}",
                    timeout.as_secs()
                );
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
