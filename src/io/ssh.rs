//! SSH to a destination compute host (Kolla's `nova_ssh`, port 8022), for what Nova's
//! `pre_live_migration` does there before a block migration: make the instance directory and
//! create empty disk files of the right virtual size and format for libvirt to copy into.
//!
//! Commands run through the remote user's shell; every path is single-quoted with [`quote`].
//! Host keys: when `known_hosts` is given the server key must be listed there, otherwise it is
//! accepted and its SHA-256 fingerprint is reported (like the Kolla default of
//! `StrictHostKeyChecking no`).
//!
//! Why the operator's OpenSSH client (`ssh` run as a child process) and not a library: the
//! modules must start on CentOS 7 (glibc 2.17) and link nothing but glibc (issue 14). The
//! `ssh2` crate linked libssh2, OpenSSL and zlib, none of which can be counted on at a known
//! version on an old host (nor built statically without dragging a cross-built OpenSSL into
//! every build). `ssh` is on every host that runs Ansible, it is the client the operator
//! already trusts and configures, and it gets security fixes from the distribution rather
//! than from a rebuild of these modules. What it costs: one TCP connection per command (a
//! block migration runs a handful), and errors are read from the client's messages.
//!
//! What the client is told, so that it behaves like the library did whatever the operator's
//! ssh_config says: `BatchMode=yes` (never prompt: the module has no terminal), only the given
//! key (`IdentitiesOnly=yes`, no password or keyboard-interactive), the connect timeout, no
//! connection sharing (`ControlMaster=no`, `ControlPath=none`), and for host keys either the
//! given known_hosts file alone (`StrictHostKeyChecking=yes`, the global file ignored, the
//! file never rewritten) or, without one, a fresh file of this session's own in a temp
//! directory: the first connection records the key the server shows
//! (`StrictHostKeyChecking=no` on an empty file), every later command of the session must
//! meet that same key. The operator's `~/.ssh/known_hosts` is never read nor written.

use anyhow::{anyhow, bail, Context as _, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct Ssh {
    pub target: String,
    /// SHA-256 of the server's host key, hex.
    pub host_key_sha256: String,
    host: String,
    /// Options of every command after the first connection (host key pinned).
    args: Vec<OsString>,
    /// Holds this session's known_hosts file when none was given; removed on drop.
    _dir: tempfile::TempDir,
}

#[derive(Debug, Clone)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Single-quote a string for `sh`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The client program: `ssh` from PATH.
const SSH: &str = "ssh";

fn opt(args: &mut Vec<OsString>, kv: impl Into<OsString>) {
    args.push("-o".into());
    args.push(kv.into());
}

/// Options shared by the first connection and the later commands.
fn base_args(
    port: u16,
    user: &str,
    key: &Path,
    known_hosts: &Path,
    timeout: Duration,
) -> Vec<OsString> {
    let secs = timeout.as_secs().max(1);
    let mut a: Vec<OsString> = vec!["-T".into(), "-p".into(), port.to_string().into()];
    a.push("-l".into());
    a.push(user.into());
    a.push("-i".into());
    a.push(key.into());
    opt(&mut a, "BatchMode=yes");
    opt(&mut a, "IdentitiesOnly=yes");
    opt(&mut a, "PasswordAuthentication=no");
    opt(&mut a, "KbdInteractiveAuthentication=no");
    opt(&mut a, format!("ConnectTimeout={secs}"));
    // A peer that stops answering mid-command is given up after about `timeout`, but a long
    // command that the peer keeps the session alive for is not cut short.
    opt(&mut a, format!("ServerAliveInterval={}", (secs / 4).max(1)));
    opt(&mut a, "ServerAliveCountMax=4");
    opt(&mut a, "ControlMaster=no");
    opt(&mut a, "ControlPath=none");
    let mut kh = OsString::from("UserKnownHostsFile=");
    kh.push(known_hosts);
    opt(&mut a, kh);
    opt(&mut a, "GlobalKnownHostsFile=/dev/null");
    opt(&mut a, "HashKnownHosts=no");
    opt(&mut a, "CheckHostIP=no");
    opt(&mut a, "UpdateHostKeys=no");
    opt(&mut a, "FingerprintHash=sha256");
    a
}

fn spawn_error(target: &str, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow!("ssh {target}: the OpenSSH client `{SSH}` is not on PATH on the host running the module; install it (openssh-client / openssh-clients)")
    } else {
        anyhow!("ssh {target}: cannot run `{SSH}`: {e}")
    }
}

/// The hex SHA-256 of the host key from `ssh -v`'s log line
/// `debug1: Server host key: ssh-ed25519 SHA256:<unpadded base64>`.
fn host_key_from_log(log: &str) -> Option<String> {
    log.lines().find_map(|l| {
        let rest = l.split("Server host key: ").nth(1)?;
        let fp = rest
            .split_whitespace()
            .find_map(|w| w.strip_prefix("SHA256:"))?;
        base64_decode(fp).map(|b| hex(&b))
    })
}

/// The client's own messages in its log: everything but the `debug` lines.
fn client_messages(log: &str) -> String {
    log.lines()
        .filter(|l| !l.starts_with("debug") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Exit status 255 is the client's own failure — unless the remote command itself exited
/// 255; the client's messages tell them apart.
fn is_client_failure(status: i32, stderr: &str) -> bool {
    status == 255
        && stderr.lines().any(|l| {
            l.starts_with("ssh: ")
                || l.starts_with("Connection to ")
                || l.starts_with("Connection closed")
                || l.starts_with("Connection reset")
                || l.starts_with("Timeout, server")
                || l.starts_with("Host key verification failed")
                || l.starts_with("kex_exchange_identification")
                || l.contains("Permission denied")
                || l.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        })
}

/// The known-hosts file the connection checks against: `known_hosts` (it must be readable), or
/// an empty one of our own in `dir` (the first connection then learns the key).
fn known_hosts_file(target: &str, known_hosts: Option<&Path>, dir: &Path) -> Result<PathBuf> {
    match known_hosts {
        Some(kh) => {
            std::fs::File::open(kh).map_err(|e| {
                anyhow!(
                    "ssh {target}: cannot read known hosts {}: {e}",
                    kh.display()
                )
            })?;
            Ok(kh.to_path_buf())
        }
        None => {
            let p = dir.join("known_hosts");
            std::fs::write(&p, b"")
                .with_context(|| format!("ssh {target}: cannot create {}", p.display()))?;
            Ok(p)
        }
    }
}

/// ssh's own words for a failed connection: the client's messages in its log, else its standard
/// error, else its exit status.
fn failure_message(log_text: &str, stderr: &[u8], status: i32) -> String {
    let m = client_messages(log_text);
    let e = String::from_utf8_lossy(stderr).trim().to_string();
    match (m.is_empty(), e.is_empty()) {
        (false, _) => m,
        (true, false) => e,
        (true, true) => format!("`{SSH}` exited {status}"),
    }
}

/// Why the first connection failed, from ssh's own words (`msg`): the host key refused, the key
/// refused, no connection at all, or ssh's message as it is.
fn first_failure(
    target: &str,
    known_hosts: Option<&Path>,
    key: &Path,
    host_key_sha256: &str,
    msg: &str,
) -> anyhow::Error {
    if let (Some(kh), true) = (
        known_hosts,
        msg.contains("Host key verification failed")
            || msg.contains("No ED25519 host key is known")
            || msg.contains("host key is known")
            || msg.contains("HOST IDENTIFICATION HAS CHANGED"),
    ) {
        return anyhow!("ssh {target}: host key (SHA256 {host_key_sha256}) is not accepted by {} ({msg}); add the destination's key there or leave ssh_known_hosts unset", kh.display());
    }
    if msg.contains("Permission denied") || msg.contains("Load key") {
        return anyhow!("ssh {target}: key authentication with {} failed: {msg}; check ssh_user/ssh_key and the destination's authorized_keys", key.display());
    }
    if host_key_sha256.is_empty() {
        return anyhow!("ssh {target}: cannot connect ({msg}); check ssh_host/ssh_port and that the destination's sshd (nova_ssh) runs");
    }
    anyhow!("ssh {target}: {msg}")
}

impl Ssh {
    pub fn connect(
        host: &str,
        port: u16,
        user: &str,
        key: &Path,
        known_hosts: Option<&Path>,
        timeout: Duration,
    ) -> Result<Ssh> {
        let target = format!("{user}@{host}:{port}");
        if host.starts_with('-') || user.starts_with('-') || host.is_empty() {
            bail!("ssh {target}: not a host name");
        }
        let dir = tempfile::Builder::new()
            .prefix("numa-repin-ssh")
            .tempdir()
            .with_context(|| format!("ssh {target}: cannot create a temp directory"))?;
        let kh = known_hosts_file(&target, known_hosts, dir.path())?;
        if std::fs::metadata(key).is_err() {
            bail!(
                "ssh {target}: key authentication with {} failed: cannot read the key file; check ssh_user/ssh_key and the destination's authorized_keys",
                key.display()
            );
        }
        let args = base_args(port, user, key, &kh, timeout);
        let mut strict = args.clone();
        opt(&mut strict, "StrictHostKeyChecking=yes");
        opt(&mut strict, "LogLevel=ERROR");

        // First connection: verbose into a log of its own, for the host key's fingerprint and,
        // when it fails, the reason.
        let log = dir.path().join("connect.log");
        let mut first = args;
        opt(
            &mut first,
            if known_hosts.is_some() {
                "StrictHostKeyChecking=yes"
            } else {
                "StrictHostKeyChecking=no"
            },
        );
        first.push("-v".into());
        first.push("-E".into());
        first.push(log.clone().into());
        let out = Command::new(SSH)
            .args(&first)
            .arg(host)
            .arg("true")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| spawn_error(&target, e))?;
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        let host_key_sha256 = host_key_from_log(&log_text).unwrap_or_default();
        let status = out.status.code().unwrap_or(-1);
        if status != 0 {
            let msg = failure_message(&log_text, &out.stderr, status);
            return Err(first_failure(
                &target,
                known_hosts,
                key,
                &host_key_sha256,
                &msg,
            ));
        }
        if host_key_sha256.is_empty() {
            bail!("ssh {target}: connected, but `{SSH} -v` named no SHA256 host key (OpenSSH older than 6.8?)");
        }
        Ok(Ssh {
            target,
            host_key_sha256,
            host: host.to_string(),
            args: strict,
            _dir: dir,
        })
    }

    /// Run a command, collect its output and exit status.
    pub fn exec(&self, cmd: &str) -> Result<Output> {
        let out = Command::new(SSH)
            .args(&self.args)
            .arg(&self.host)
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| spawn_error(&self.target, e))?;
        let status = out.status.code().unwrap_or(-1);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if is_client_failure(status, &stderr) {
            bail!(
                "ssh {}: cannot run a command: {}",
                self.target,
                stderr.trim()
            );
        }
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Run a command that must succeed; its stdout.
    pub fn run(&self, cmd: &str) -> Result<String> {
        let o = self.exec(cmd)?;
        if o.status != 0 {
            bail!(
                "ssh {}: `{cmd}` exited {}: {}",
                self.target,
                o.status,
                o.stderr.trim()
            );
        }
        Ok(o.stdout)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Standard base64, padding optional (OpenSSH prints fingerprints unpadded).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn quoting() {
        assert_eq!(quote("/a b/c"), "'/a b/c'");
        assert_eq!(quote("x'; rm -rf /'"), "'x'\\''; rm -rf /'\\'''");
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("Zm9vYg").unwrap(), b"foob");
        assert_eq!(base64_decode("Zm9vYg==").unwrap(), b"foob");
        assert!(base64_decode("a-b").is_none());
    }

    #[test]
    fn fingerprint_from_verbose_log() {
        // SHA256 of an empty string, as OpenSSH prints it.
        let log = "debug1: Connecting to h [127.0.0.1] port 8022.\n\
                   debug1: Server host key: ssh-ed25519 SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\n\
                   debug1: Authentication succeeded (publickey).\n";
        assert_eq!(
            host_key_from_log(log).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(host_key_from_log("debug1: nothing\n").is_none());
        assert_eq!(
            client_messages("debug1: x\nHost key verification failed.\n"),
            "Host key verification failed."
        );
    }

    #[test]
    fn client_failure_or_remote_255() {
        assert!(is_client_failure(
            255,
            "ssh: connect to host h port 22: Connection refused\n"
        ));
        assert!(is_client_failure(
            255,
            "Connection to h closed by remote host.\n"
        ));
        assert!(!is_client_failure(255, "my script failed\n"));
        assert!(!is_client_failure(1, "ssh: whatever\n"));
    }
}
