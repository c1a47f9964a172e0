"""Issue 14: every module in library/ starts on glibc 2.17 (CentOS 7).

Read from the ELF files themselves (readelf -V / objdump -T / readelf -d / readelf -l):
- the highest GLIBC_ symbol version a binary needs is at most 2.17;
- NEEDED lists only glibc's libraries and libgcc_s, except the libvirt client library for the
  modules that still link it (KNOWN_LIBVIRT below, until the libvirt RPC client lands);
- the interpreter is the standard /lib64/ld-linux-x86-64.so.2.
Then the modules are copied into an older userland (a Debian bullseye root, glibc 2.31, made
with debootstrap and cached) and run there with chroot (`--schema`).

Needs the binaries built by scripts/build.sh (cargo zigbuild ... x86_64-unknown-linux-gnu.2.17);
no lab. The chroot test needs root and debootstrap, and a Debian mirror the first time.
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
# The libvirt client library that the `virt` crate links, and the modules known to use it.
# Removed when the libvirt RPC client lands (the pure-Rust client on branch libvirt-rpc): then
# every module must meet the full bar above and these two constants go.
KNOWN_LIBVIRT = {"libvirt.so.0"}
LIBVIRT_MODULES = {"numa_facts", "pin_fit_check", "repin_migrate", "nova_instance_fixup"}

INTERP = "/lib64/ld-linux-x86-64.so.2"
BULLSEYE = Path(os.environ.get("NUMA_REPIN_CACHE", "/var/cache/numa-repin")) / "roots" / "bullseye"
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


def problems(path, allow_libvirt):
    """What keeps this binary off a glibc 2.17 host: a list of strings, empty when it meets the bar."""
    out = []
    vers = glibc_versions(path)
    if not vers:
        out.append("no GLIBC_ symbol versions at all (not a glibc dynamic executable?)")
    too_new = sorted(v for v in vers if v > GLIBC_MAX)
    if too_new:
        out.append("needs GLIBC_%s > 2.17" % ", GLIBC_".join(".".join(map(str, v)) for v in too_new))
    allowed = ALLOWED_NEEDED | (KNOWN_LIBVIRT if allow_libvirt else set())
    extra = [n for n in needed(path) if n not in allowed]
    if extra:
        out.append("NEEDED outside glibc/libgcc_s%s: %s" % (" and libvirt" if allow_libvirt else "", ", ".join(extra)))
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
    path = module_path(module)
    links_libvirt = bool(KNOWN_LIBVIRT & set(needed(path)))
    if links_libvirt:
        assert module in LIBVIRT_MODULES, (
            "%s now links %s: only %s may, until the libvirt RPC client lands"
            % (module, ", ".join(sorted(KNOWN_LIBVIRT)), ", ".join(sorted(LIBVIRT_MODULES))))
    p = problems(path, allow_libvirt=links_libvirt)
    assert not p, "%s is not portable to glibc 2.17: %s" % (module, "; ".join(p))


def test_modules_without_libvirt_meet_the_full_bar():
    """The honest part while libvirt is linked: every module outside LIBVIRT_MODULES has no libvirt
    at all, and the set of libvirt users is exactly what readelf shows (a module that stopped
    linking it should leave LIBVIRT_MODULES)."""
    users = {m for m in MODULES if KNOWN_LIBVIRT & set(needed(module_path(m)))}
    for m in set(MODULES) - users:
        assert not problems(module_path(m), allow_libvirt=False), m
    assert users == LIBVIRT_MODULES & set(MODULES), (
        "modules linking libvirt per readelf: %s; LIBVIRT_MODULES says %s"
        % (sorted(users), sorted(LIBVIRT_MODULES)))
    assert "deploy_patched_nova" not in users


def test_the_checks_catch_a_non_portable_binary():
    """The readers are not vacuous: this machine's own ssh client (Debian 12, glibc 2.36, OpenSSL)
    fails the bar."""
    ssh = shutil.which("ssh") or "/usr/bin/ssh"
    if not Path(ssh).exists():
        pytest.skip("no ssh binary to use as the non-portable example")
    p = problems(Path(os.path.realpath(ssh)), allow_libvirt=False)
    assert any("GLIBC_" in x and "> 2.17" in x for x in p), p
    assert any("NEEDED outside" in x for x in p), p


# ------------------------------------------------------------------------------------------------
# An older userland: Debian bullseye (glibc 2.31) in a chroot.


def _make_bullseye():
    """debootstrap a minbase bullseye root into the cache. libvirt0 is included because
    numa_facts, pin_fit_check, repin_migrate and nova_instance_fixup still link libvirt.so.0
    (removed when the libvirt RPC client lands)."""
    if os.geteuid() != 0:
        pytest.skip("the bullseye chroot needs root")
    if not shutil.which("debootstrap"):
        pytest.skip("no debootstrap (apt-get install debootstrap)")
    tmp = BULLSEYE.with_name("bullseye.tmp")
    errors = []
    for mirror in MIRRORS + _apt_mirrors():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["debootstrap", "--variant=minbase", "--include=libvirt0", "bullseye", str(tmp), mirror],
                           capture_output=True, text=True, timeout=1800)
        if r.returncode == 0:
            shutil.rmtree(BULLSEYE, ignore_errors=True)
            tmp.rename(BULLSEYE)
            return
        errors.append("%s: %s" % (mirror, (r.stderr or r.stdout).strip().splitlines()[-1:]))
    shutil.rmtree(tmp, ignore_errors=True)
    pytest.skip("no Debian mirror reachable for a bullseye root: %s" % "; ".join(errors))


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
    if not (BULLSEYE / "usr/lib/x86_64-linux-gnu/libvirt.so.0").exists():
        _make_bullseye()
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
