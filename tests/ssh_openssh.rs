//! src/io/ssh.rs drives the operator's OpenSSH client: check it against a real sshd of this test's
//! own, on 127.0.0.1 at a free port, with throwaway keys. Skipped (with a note) where sshd or
//! ssh-keygen is missing or the test does not run as root (sshd needs it for its privilege
//! separation).

use numa_repin::io::ssh::{quote, Ssh};
use sha2::{Digest, Sha256};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "numa-repin-test",
            "-f",
        ])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

fn start_sshd() -> Option<Sshd> {
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.exists() || Command::new("ssh-keygen").arg("-?").output().is_err() {
        panic!("ssh_openssh: no /usr/sbin/sshd or ssh-keygen (scripts/install-deps.sh installs openssh-server)");
    }
    if unsafe { libc::geteuid() } != 0 {
        panic!("ssh_openssh: needs root to start a throwaway sshd (CI runs as root)");
    }
    let _ = std::fs::create_dir_all("/run/sshd");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(&d.join("host_key"));
    keygen(&d.join("id"));
    std::fs::copy(d.join("id.pub"), d.join("authorized_keys")).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
         PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n",
        d = d.display()
    );
    std::fs::write(d.join("sshd_config"), cfg).unwrap();
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Sshd { child, port, dir };
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "sshd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(s)
}

fn b64(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

impl Sshd {
    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
    fn host_pub(&self) -> String {
        std::fs::read_to_string(self.path("host_key.pub")).unwrap()
    }
    fn connect(&self, key: &str, kh: Option<&Path>) -> anyhow::Result<Ssh> {
        Ssh::connect(
            "127.0.0.1",
            self.port,
            "root",
            &self.path(key),
            kh,
            Duration::from_secs(10),
        )
    }
}

#[test]
fn openssh_client_against_a_local_sshd() {
    let Some(s) = start_sshd() else { return };
    let blob = b64(s.host_pub().split_whitespace().nth(1).unwrap());
    let want: String = Sha256::digest(&blob)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    // No known_hosts: accepted, fingerprint reported (what libssh2's host_key_hash gave).
    let c = s.connect("id", None).unwrap();
    assert_eq!(c.host_key_sha256, want);
    assert_eq!(c.target, format!("root@127.0.0.1:{}", s.port));
    assert_eq!(c.run("echo hi; echo err >&2").unwrap(), "hi\n");
    let o = c.exec("echo oops >&2; exit 3").unwrap();
    assert_eq!((o.status, o.stderr.as_str()), (3, "oops\n"));
    // A remote 255 is the command's, not a client failure.
    assert_eq!(c.exec("exit 255").unwrap().status, 255);
    let e = c.run("false").unwrap_err().to_string();
    assert!(e.contains("`false` exited 1"), "{e}");
    // Quoted paths with blanks and quotes survive the remote shell.
    let p = s.path("a b'c").display().to_string();
    c.run(&format!("mkdir -p {} && test -d {}", quote(&p), quote(&p)))
        .unwrap();
    assert!(Path::new(&p).is_dir());

    // known_hosts that lists the key ([host]:port form, as ssh-keyscan writes it).
    let kh = s.path("known_hosts");
    let host_pub = s.host_pub();
    let pubk = host_pub.split_whitespace().take(2).collect::<Vec<_>>();
    let line = format!("[127.0.0.1]:{} {}\n", s.port, pubk.join(" "));
    std::fs::write(&kh, &line).unwrap();
    let c = s.connect("id", Some(&kh)).unwrap();
    assert_eq!(c.host_key_sha256, want);
    assert_eq!(c.run("echo ok").unwrap(), "ok\n");
    assert_eq!(
        std::fs::read_to_string(&kh).unwrap(),
        line,
        "known_hosts rewritten"
    );

    // known_hosts with another key: refused, with the fingerprint the server showed.
    keygen(&s.path("other"));
    let other = std::fs::read_to_string(s.path("other.pub")).unwrap();
    let pubk = other.split_whitespace().take(2).collect::<Vec<_>>();
    std::fs::write(&kh, format!("[127.0.0.1]:{} {}\n", s.port, pubk.join(" "))).unwrap();
    let e = s.connect("id", Some(&kh)).err().unwrap().to_string();
    assert!(e.contains("is not accepted by") && e.contains(&want), "{e}");
    // An empty known_hosts: refused as well (never added to).
    std::fs::write(&kh, "").unwrap();
    let e = s.connect("id", Some(&kh)).err().unwrap().to_string();
    assert!(e.contains("is not accepted by"), "{e}");
    assert_eq!(std::fs::read_to_string(&kh).unwrap(), "");
    // Missing known_hosts file.
    let e = s
        .connect("id", Some(&s.path("nope")))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cannot read known hosts"), "{e}");

    // A key the server does not accept.
    let e = s.connect("other", None).err().unwrap().to_string();
    assert!(e.contains("key authentication with"), "{e}");

    // Nothing listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = Ssh::connect(
        "127.0.0.1",
        port,
        "root",
        &s.path("id"),
        None,
        Duration::from_secs(5),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("cannot connect"), "{e}");
}
