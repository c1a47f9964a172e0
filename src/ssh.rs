//! SSH to a destination compute host (Kolla's `nova_ssh`, port 8022), for what Nova's
//! `pre_live_migration` does there before a block migration: make the instance directory and
//! create empty disk files of the right virtual size and format for libvirt to copy into.
//!
//! Commands run through `sh -c` on the remote side; every path is single-quoted with
//! [`quote`]. Host keys: when `known_hosts` is given the server key must be listed there,
//! otherwise it is accepted and its SHA-256 fingerprint is reported (like the Kolla default of
//! `StrictHostKeyChecking no`).

use anyhow::{anyhow, bail, Context as _, Result};
use ssh2::{CheckResult, HashType, KnownHostFileKind, Session};
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

pub struct Ssh {
    sess: Session,
    pub target: String,
    /// SHA-256 of the server's host key, hex.
    pub host_key_sha256: String,
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
        let addr = (host, port)
            .to_socket_addrs()
            .with_context(|| format!("ssh {target}: cannot resolve {host}"))?
            .next()
            .ok_or_else(|| anyhow!("ssh {target}: {host} resolves to no address"))?;
        let tcp = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| anyhow!("ssh {target}: cannot connect ({e}); check ssh_host/ssh_port and that the destination's sshd (nova_ssh) runs"))?;
        let mut sess = Session::new().map_err(|e| anyhow!("ssh {target}: {e}"))?;
        sess.set_tcp_stream(tcp);
        sess.set_timeout(timeout.as_millis() as u32);
        sess.handshake()
            .map_err(|e| anyhow!("ssh {target}: handshake failed: {e}"))?;
        let (hkey, _) = sess
            .host_key()
            .ok_or_else(|| anyhow!("ssh {target}: the server sent no host key"))?;
        let host_key_sha256 = sess
            .host_key_hash(HashType::Sha256)
            .map(hex)
            .unwrap_or_default();
        if let Some(kh) = known_hosts {
            let mut k = sess
                .known_hosts()
                .map_err(|e| anyhow!("ssh {target}: {e}"))?;
            k.read_file(kh, KnownHostFileKind::OpenSSH).map_err(|e| {
                anyhow!(
                    "ssh {target}: cannot read known hosts {}: {e}",
                    kh.display()
                )
            })?;
            match k.check_port(host, port, hkey) {
                CheckResult::Match => {}
                other => bail!("ssh {target}: host key (SHA256 {host_key_sha256}) is not accepted by {} ({other:?}); add the destination's key there or leave ssh_known_hosts unset", kh.display()),
            }
        }
        sess.userauth_pubkey_file(user, None, key, None)
            .map_err(|e| anyhow!("ssh {target}: key authentication with {} failed: {e}; check ssh_user/ssh_key and the destination's authorized_keys", key.display()))?;
        if !sess.authenticated() {
            bail!("ssh {target}: not authenticated");
        }
        Ok(Ssh {
            sess,
            target,
            host_key_sha256,
        })
    }

    /// Run a command, collect its output and exit status.
    pub fn exec(&self, cmd: &str) -> Result<Output> {
        let mut ch = self
            .sess
            .channel_session()
            .map_err(|e| anyhow!("ssh {}: cannot open a channel: {e}", self.target))?;
        ch.exec(cmd)
            .map_err(|e| anyhow!("ssh {}: cannot run a command: {e}", self.target))?;
        let mut stdout = String::new();
        let mut stderr = String::new();
        ch.read_to_string(&mut stdout)
            .map_err(|e| anyhow!("ssh {}: reading output: {e}", self.target))?;
        ch.stderr()
            .read_to_string(&mut stderr)
            .map_err(|e| anyhow!("ssh {}: reading errors: {e}", self.target))?;
        ch.wait_close().ok();
        let status = ch.exit_status().unwrap_or(-1);
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

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn quoting() {
        assert_eq!(quote("/a b/c"), "'/a b/c'");
        assert_eq!(quote("x'; rm -rf /'"), "'x'\\''; rm -rf /'\\'''");
    }
}
