"""Issue 14: every module in library/ starts on glibc 2.17 (CentOS 7).

Read from the ELF files themselves (readelf -V / objdump -T / readelf -d / readelf -l):
- the highest GLIBC_ symbol version a binary needs is at most 2.17;
- NEEDED lists only glibc's libraries and libgcc_s (no libvirt, OpenSSL, zlib, glib);
- the interpreter is the standard /lib64/ld-linux-x86-64.so.2.
Then the modules are copied into an older userland with no libvirt package (a Debian bullseye
minbase root, glibc 2.31, made with debootstrap and cached) and run there with chroot:
`--schema` for every module, and numa_facts against a lab compute through its TCP URI and
through its unix socket bound into the root's /run/libvirt (as Kolla's nova_libvirt shares it).

Needs the binaries built by scripts/build.sh (cargo zigbuild ... x86_64-unknown-linux-gnu.2.17),
root, debootstrap and a Debian mirror the first time; the last test needs the lab.
"""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRARY = REPO / "library"
MODULES = sorted(p.stem for p in (REPO / "src" / "bin").glob("*.rs"))

GLIBC_MAX = (2, 17)
# glibc's own libraries and libgcc_s (unwinding: panic = "unwind"): present on every glibc host.
ALLOWED_NEEDED = {
    "libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1",
    "ld-linux-x86-64.so.2", "libgcc_s.so.1",
}
INTERP = "/lib64/ld-linux-x86-64.so.2"
BULLSEYE = Path(os.environ.get("NUMA_REPIN_CACHE", "/var/cache/numa-repin")) / "roots" / "bullseye-minbase"
MIRRORS = ["http://deb.debian.org/debian"]


def _run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def glibc_versions(path):
    """Every GLIBC_x.y[.z] the binary asks for: version needs (readelf -V) and dynamic symbols (objdump -T)."""
    text = _run("readelf", "-V", "-W", str(path)) + _run("objdump", "-T", "-w", str(path))
    return {tuple(int(x) for x in v.split(".")) for v in re.findall(r"\bGLIBC_(\d+(?:\.\d+)+)\b", text)}


def needed(path):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", _run("readelf", "-d", "-W", str(path)))


def interpreter(path):
    m = re.search(r"Requesting program interpreter: ([^\]]+)\]", _run("readelf", "-l", "-W", str(path)))
    return m.group(1) if m else None


def problems(path):
    """What keeps this binary off a glibc 2.17 host: a list of strings, empty when it meets the bar."""
    out = []
    vers = glibc_versions(path)
    if not vers:
        out.append("no GLIBC_ symbol versions at all (not a glibc dynamic executable?)")
    too_new = sorted(v for v in vers if v > GLIBC_MAX)
    if too_new:
        out.append("needs GLIBC_%s > 2.17" % ", GLIBC_".join(".".join(map(str, v)) for v in too_new))
    extra = [n for n in needed(path) if n not in ALLOWED_NEEDED]
    if extra:
        out.append("NEEDED outside glibc/libgcc_s: %s" % ", ".join(extra))
    interp = interpreter(path)
    if interp != INTERP:
        out.append("interpreter %s, not %s" % (interp, INTERP))
    return out


def module_path(m):
    p = LIBRARY / m
    assert p.exists(), "no %s: build the modules first (bash scripts/build.sh)" % p
    return p


@pytest.mark.parametrize("module", MODULES)
def test_module_meets_the_glibc_2_17_bar(module):
    p = problems(module_path(module))
    assert not p, "%s is not portable to glibc 2.17: %s" % (module, "; ".join(p))


def test_the_checks_catch_a_non_portable_binary():
    """The readers are not vacuous: this machine's own ssh client (Debian 12, glibc 2.36, OpenSSL)
    fails the bar."""
    ssh = shutil.which("ssh") or "/usr/bin/ssh"
    assert Path(ssh).exists(), "no ssh client (scripts/install-deps.sh installs openssh-client)"
    p = problems(Path(os.path.realpath(ssh)))
    assert any("GLIBC_" in x and "> 2.17" in x for x in p), p
    assert any("NEEDED outside" in x for x in p), p


# ------------------------------------------------------------------------------------------------
# An older userland: Debian bullseye (glibc 2.31) in a chroot.


def _make_bullseye():
    """debootstrap a minbase bullseye root into the cache: no libvirt package, as on a Kolla
    compute host."""
    assert os.geteuid() == 0, "the bullseye chroot needs root"
    assert shutil.which("debootstrap"), "no debootstrap (scripts/install-deps.sh installs it)"
    tmp = BULLSEYE.with_name("bullseye.tmp")
    errors = []
    for mirror in MIRRORS + _apt_mirrors():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["debootstrap", "--variant=minbase", "bullseye", str(tmp), mirror],
                           capture_output=True, text=True, timeout=1800)
        if r.returncode == 0:
            shutil.rmtree(BULLSEYE, ignore_errors=True)
            tmp.rename(BULLSEYE)
            return
        errors.append("%s: %s" % (mirror, (r.stderr or r.stdout).strip().splitlines()[-1:]))
    shutil.rmtree(tmp, ignore_errors=True)
    pytest.fail("no Debian mirror reachable for a bullseye root: %s" % "; ".join(errors))


def _apt_mirrors():
    """The Debian mirrors this machine's apt uses (tried after deb.debian.org)."""
    found = []
    for f in list(Path("/etc/apt").glob("sources.list.d/*")) + [Path("/etc/apt/sources.list")]:
        try:
            text = f.read_text()
        except OSError:
            continue
        for url in re.findall(r"(?:URIs:|^deb)\s+(?:\[[^\]]*\]\s+)?(https?://\S+)", text, re.M):
            url = url.rstrip("/")
            if url.endswith("/debian") and url not in found and url not in MIRRORS:
                found.append(url)
    return found


@pytest.fixture(scope="module")
def bullseye():
    if not (BULLSEYE / "usr/bin/getconf").exists():
        _make_bullseye()
    libvirt = list(BULLSEYE.glob("usr/lib/x86_64-linux-gnu/libvirt*")) + list(BULLSEYE.glob("lib/x86_64-linux-gnu/libvirt*"))
    assert not libvirt, "the old userland must have no libvirt: %s" % libvirt
    ver = subprocess.run(["chroot", str(BULLSEYE), "getconf", "GNU_LIBC_VERSION"], capture_output=True,
                         text=True, check=True).stdout.split()[-1]
    host = os.confstr("CS_GNU_LIBC_VERSION").split()[-1]
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(ver) < as_tuple(host), "the chroot's glibc %s is not older than this host's %s" % (ver, host)
    d = BULLSEYE / "tmp" / ("numa-repin-portable-%d" % os.getpid())
    d.mkdir(parents=True)
    yield d, ver
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("module", ["deploy_patched_nova", "nova_instance_fixup", "numa_facts", "pin_fit_check",
                                    "repin_migrate"])
def test_module_runs_in_an_older_userland(bullseye, module):
    d, ver = bullseye
    shutil.copy2(module_path(module), d / module)
    inside = "/" + str((d / module).relative_to(BULLSEYE))
    r = subprocess.run(["chroot", str(BULLSEYE), inside, "--schema"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, "%s --schema in bullseye (glibc %s) exited %d: %s" % (module, ver, r.returncode,
                                                                                   r.stderr.strip())
    schema = json.loads(r.stdout)
    assert schema.get("properties"), schema


@pytest.mark.parametrize("host", ["cmp1", "cmp2"])
@pytest.mark.parametrize("via", ["tcp", "socket"])
def test_numa_facts_in_an_older_userland_reads_a_lab_compute(bullseye, lab, host, via):
    """numa_facts copied into the bullseye root (no libvirt there) returns the lab compute's guests,
    through the TCP URI, and through qemu:///system with the compute's libvirtd socket bound into
    the root's /run/libvirt (how Kolla's nova_libvirt container shares it with the host)."""
    d, ver = bullseye
    shutil.copy2(module_path("numa_facts"), d / "numa_facts")
    inside = "/" + str(d.relative_to(BULLSEYE))
    uri = lab.uri(host) if via == "tcp" else "qemu:///system"
    (d / "args.json").write_text(json.dumps({"uri": uri, "host": host}))
    cmd = ["chroot", str(BULLSEYE), inside + "/numa_facts", inside + "/args.json"]
    if via == "socket":
        sock_dir = os.path.join(lab.data["lab_dir"], host, "run")
        assert os.path.exists(os.path.join(sock_dir, "libvirt-sock")), sock_dir
        (BULLSEYE / "run" / "libvirt").mkdir(parents=True, exist_ok=True)
        # A mount namespace of its own: the bind mount ends with the command.
        script = 'mount --bind "$1" "$2/run/libvirt" && shift 2 && exec "$@"'
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", sock_dir,
               str(BULLSEYE)] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.stdout, r.stderr)
    numa = json.loads(r.stdout)["ansible_facts"]["numa"]
    names = sorted(n for n in lab.virsh(host, "list", "--all", "--name").stdout.split() if n)
    assert names, "the lab host has no guests (tests/lab/lab.sh seed)"
    assert sorted(g["name"] for g in numa["guests"]) == names
    assert numa["libvirt_uri"] == uri
