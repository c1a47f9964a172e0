"""repin_migrate on the real lab (tests/lab/lab.sh up): field cases, block migration over SSH,
parallel migrations to one destination, faults, reboot safety, mode repin.

Lab facts these tests rely on: cmp1 (vcpu_pin_set 0-1) and cmp2 (vcpu_pin_set 1, seeded guest
c2-resident pinned to pCPU 1; nova-allcpus.conf allows 0-1), TCG guests of 64 MiB. Every test
makes its own guests (removed at teardown wherever they went) and leaves the seeded ones alone.
Most scenarios run through ansible-playbook (tests/playbooks/repin_*.yml).
"""
import json
import re
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lablib  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "tests" / "playbooks"
SRC, DST = "cmp1", "cmp2"


@pytest.fixture(scope="session", autouse=True)
def module_installed(lab):
    """Build and install the module into library/ when the installed one is missing or stale."""
    lib = REPO / "library" / "repin_migrate"
    srcs = [REPO / "src" / p for p in ("migrate.rs", "repin.rs", "ssh.rs", "bin/repin_migrate.rs")]
    if not lib.exists() or any(s.stat().st_mtime > lib.stat().st_mtime for s in srcs if s.exists()):
        # scripts/build.sh, not a plain cargo build: library/ holds the portable (glibc 2.17) builds
        subprocess.run(["bash", "scripts/build.sh"], cwd=REPO, check=True, timeout=1800)
    return lib


@pytest.fixture
def conf_allcpus(lab):
    return lab.hosts[DST]["nova_conf_allcpus"]


@pytest.fixture
def conf_only(lab, tmp_path):
    """A copy of cmp2's nova.conf with another vcpu_pin_set."""
    def make(pin_set):
        text = Path(lab.nova_conf(DST)).read_text()
        out = []
        for line in text.splitlines():
            out.append("vcpu_pin_set = %s" % pin_set if line.strip().startswith("vcpu_pin_set") else line)
        p = tmp_path / ("nova-%s.conf" % pin_set.replace(",", "_"))
        p.write_text("\n".join(out) + "\n")
        return str(p)
    return make


def free_cpus(lab, run_module, conf):
    f = lab.numa_facts(DST, conf)
    return sorted(c for cells in f["usage"]["free_cpus"].values() for c in cells)


def playbook(lab, name, extra, **kw):
    p = lab.ansible_playbook(PLAYBOOKS / name, extra_vars=extra, **kw)
    return p


def ok(p):
    assert p.returncode == 0, (p.stdout[-6000:] + p.stderr[-3000:])
    assert "failed=0" in p.stdout
    return p


def expect_pin(lab, run_module, conf):
    free = free_cpus(lab, run_module, conf)
    if not free:
        pytest.fail("cmp2 has no free allowed pCPU under %s (another test's guest there?): %s" % (conf, free),
                    pytrace=False)
    return free[0]


def assert_libvirt_pins(out, pin):
    """The check after read the live pins through libvirt's API (not /proc): vCPU pin info, emulator pin
    info and the running vCPU thread's affinity all on the planned pCPU."""
    v = out["verify"]
    assert v["libvirt_pins_match"], v
    lp = v["libvirt_pins"]
    assert lp["vcpu_pins"] == {"0": [pin]} and lp["vcpu_threads"] == {"0": [pin]}, lp
    assert lp["emulator_pins"] == [pin], lp


# ---------------------------------------------------------------------------------------------- field cases

def test_case1_destination_pcpu_taken_migrates_onto_free_one(lab, fresh_guest, run_module, conf_allcpus):
    """Source pin 1 is held by another guest on cmp2: the guest lands on the free pCPU instead."""
    f = lab.numa_facts(DST, conf_allcpus)
    if 1 not in f["usage"]["pinned_cpus"]:
        fresh_guest(DST, [1])  # the seeded c2-resident is not there (moved by another test): our own blocker
    pin = expect_pin(lab, run_module, conf_allcpus)
    g = fresh_guest(SRC, [1])
    ok(playbook(lab, "repin_migrate.yml", {"guest": g.name, "src": SRC, "dst": DST, "dest_conf": conf_allcpus,
                                           "expect_pins": {"0": pin}}, diff=True))
    assert lab.affinity(DST, g.name) == {"vcpus": {0: {pin}}, "emulator": {pin}}
    f = lab.numa_facts(DST, conf_allcpus)
    assert not [o for o in f["overlaps"] if g.name in o["guests"]]

    # Reboot safety: a hard restart on the destination keeps the new pins (persistent definition).
    lab.virsh(DST, "destroy", g.name)
    lab.virsh(DST, "start", g.name)
    lab.wait_running(DST, g.name)
    assert lab.affinity(DST, g.name) == {"vcpus": {0: {pin}}, "emulator": {pin}}
    assert "<vcpupin vcpu='0' cpuset='%d'/>" % pin in lab.dumpxml(DST, g.name)


def test_case2_pinned_pcpu_not_allowed_on_destination_is_remapped(lab, fresh_guest, run_module, conf_only):
    """The destination allows only pCPU 0 (vcpu_pin_set = 0): a guest pinned to 1 is remapped to 0."""
    conf = conf_only("0")
    assert expect_pin(lab, run_module, conf) == 0
    g = fresh_guest(SRC, [1])
    ok(playbook(lab, "repin_migrate.yml", {"guest": g.name, "src": SRC, "dst": DST, "dest_conf": conf,
                                           "expect_pins": {"0": 0}}))
    assert lab.affinity(DST, g.name)["vcpus"] == {0: {0}}


def test_case3_no_single_cell_fits_refused_before_anything_moves(lab, fresh_guest, run_module, conf_allcpus):
    """2 vCPUs, but cmp2 has one free pCPU: Nova's in-band message, guest untouched on the source."""
    f = lab.numa_facts(DST, conf_allcpus)
    if 1 not in f["usage"]["pinned_cpus"]:
        fresh_guest(DST, [1])
    g = fresh_guest(SRC, [0, 1])
    before = lab.dumpxml(SRC, g.name)
    ok(playbook(lab, "repin_refused.yml", {"guest": g.name, "src": SRC, "dst": DST, "dest_conf": conf_allcpus,
                                           "vcpus": 2, "memory_mb": 64}))
    assert lab.dumpxml(SRC, g.name) == before
    rc, out = run_module("repin_migrate", {"guest": g.name, "source_uri": lab.uri(SRC), "dest_uri": lab.uri(DST),
                                           "dest_nova_conf": conf_allcpus})
    assert rc == 1 and out["msg"] == "No numa available with 2 vcpu and 64 memory", out
    assert any("free pCPUs" in r for r in out["reasons"]), out


# ---------------------------------------------------------------------------------------------- block migration

def test_block_migration_qcow2_destination_prepared_over_ssh(lab, fresh_guest, run_module, conf_allcpus):
    pin = expect_pin(lab, run_module, conf_allcpus)
    g = fresh_guest(SRC, [1], disk_mib=16, start=False)
    src_disk = lab.images_dir(SRC) / ("%s.qcow2" % g.name)
    dst_disk = lab.images_dir(DST) / ("%s.qcow2" % g.name)
    assert not dst_disk.exists()
    # A recognisable pattern at 4 MiB, to prove the contents were copied.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 4M 1M", str(src_disk)], check=True,
                   capture_output=True)
    lab.virsh(SRC, "start", g.name)
    # The module runs on the destination host and prepares it over SSH (Kolla's nova_ssh port), with the
    # key and the instance directory as that host has them.
    ok(playbook(lab, "repin_migrate.yml", {
        "guest": g.name, "src": SRC, "dst": DST, "dest_conf": conf_allcpus, "expect_pins": {"0": pin},
        "storage": "block", "ssh_host": lab.nodes[DST]["address"], "ssh_port": lab.nodes[DST]["nova_ssh_port"],
        "ssh_user": "root", "ssh_key": "/root/.ssh/id_ed25519",
        "instance_dir": lab.hosts[DST]["images_dir_in_host"]}))
    assert dst_disk.exists()
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(dst_disk)], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 16 * 1024 * 1024
    r = subprocess.run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c", "read -P 0xab 4M 1M", str(dst_disk)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout + r.stderr
    assert lab.affinity(DST, g.name)["vcpus"] == {0: {pin}}


def test_block_migration_without_ssh_settings_fails_before_anything_moves(lab, fresh_guest, run_module,
                                                                           conf_allcpus):
    g = fresh_guest(SRC, [1], disk_mib=16)
    rc, out = run_module("repin_migrate", {"guest": g.name, "source_uri": lab.uri(SRC), "dest_uri": lab.uri(DST),
                                           "dest_nova_conf": conf_allcpus, "storage": "block"})
    assert rc == 1 and "ssh_host" in out["msg"], out
    assert lab.domstate(SRC, g.name) == "running"


# ---------------------------------------------------------------------------------------------- parallel

def _race(lab, run_module, names, conf):
    def one(n):
        return run_module("repin_migrate", {"guest": n, "source_uri": lab.uri(SRC), "dest_uri": lab.uri(DST),
                                            "dest_nova_conf": conf})
    with ThreadPoolExecutor(len(names)) as ex:
        return list(ex.map(one, names))


def _double_pinned(lab, run_module, conf, watched):
    """pCPUs on cmp2 pinned by more than one of `watched` (the racing guests and the guests that were there
    before the race), from the kernel's affinity of every running guest and from libvirt (numa_facts).
    Guests other tests create on cmp2 during the race (the lab is shared) bypass the claim and are not counted."""
    f = lab.numa_facts(DST, conf)
    holders = {}
    for g in f["guests"]:
        if g["state"] != "running" or g["name"] not in watched:
            continue
        aff = lab.affinity(DST, g["name"])
        for cpus in aff["vcpus"].values():
            if len(cpus) == 1:
                holders.setdefault(next(iter(cpus)), []).append(g["name"])
    kernel = {c: gs for c, gs in holders.items() if len(gs) > 1}
    return kernel, [o for o in f["overlaps"] if len(set(o["guests"]) & set(watched)) > 1]


def test_parallel_migrations_never_double_pin(lab, fresh_guest, run_module, conf_allcpus, tmp_path):
    """Repeated races of 3 guests for cmp2's free pCPUs: winners == free pCPUs, the others refused with the
    no-fit message, zero double-pinned pCPUs (kernel affinity and libvirt) after every trial. The first trial
    runs through ansible-playbook (one Ansible host per guest, parallel forks), the others as parallel
    module processes."""
    trials, per_trial = 6, 3
    stats = {"trials": 0, "migrated": 0, "refused": 0, "double_pinned": 0}
    for t in range(trials):
        free = free_cpus(lab, run_module, conf_allcpus)
        assert free, "cmp2 has no free pCPU: cannot run the race"
        residents = [g["name"] for g in lab.numa_facts(DST, conf_allcpus)["guests"]]
        names = [fresh_guest(SRC, [1]).name for _ in range(per_trial)]
        if t == 0:
            out = tmp_path / "results"
            out.mkdir()
            p = playbook(lab, "repin_parallel.yml", {"guests": names, "src": SRC, "dst": DST,
                                                     "dest_conf": conf_allcpus, "residents": residents,
                                                     "lock_dir": "/run/lock/numa-repin", "results_dir": str(out)},
                         extra_args=["-f", "10"])
            assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]
            # Each run's own result (failed, msg) as repin_migrate returned it, and where its guest is now.
            results = [(0, json.loads((out / ("%s.json" % n)).read_text())) for n in names]
            for n, (_, r) in zip(names, results):
                assert lab.guest_host(n) == (SRC if r["failed"] else DST), (n, r)
        else:
            results = _race(lab, run_module, names, conf_allcpus)
        won = [n for n, (rc, r) in zip(names, results) if not r["failed"]]
        lost = [r for rc, r in results if r["failed"]]
        assert all(r["msg"].startswith("No numa available with") for r in lost), lost
        assert len(won) == min(len(free), per_trial), (free, results)
        kernel, mine = _double_pinned(lab, run_module, conf_allcpus, names + residents)
        assert not kernel and not mine, (kernel, mine)
        stats["trials"] += 1
        stats["migrated"] += len(won)
        stats["refused"] += len(lost)
        stats["double_pinned"] += len(kernel) + len(mine)
        for n in names:
            lab.remove_guest(n)
    print("parallel:", json.dumps(stats))
    assert stats["double_pinned"] == 0


# ---------------------------------------------------------------------------------------------- faults

def busy_guest(lab, host, pins, request, once=False):
    """lablib.Lab.busy_guest, removed when the test ends."""
    name, cleanup = lab.busy_guest(host, pins, once=once)
    request.addfinalizer(cleanup)
    return name


def test_fault_timeout_abort_then_rerun(lab, run_module, conf_allcpus, request):
    pin = expect_pin(lab, run_module, conf_allcpus)
    name = busy_guest(lab, SRC, [1], request)
    ok(playbook(lab, "repin_fault.yml", {
        "guest": name, "src": SRC, "dst": DST, "dest_conf": conf_allcpus, "old_pins": {"0": [1]},
        "expect_msg": "not complete after 3 s",
        "mig_extra": {"bandwidth_mibps": 1, "max_downtime_ms": 10, "completion_timeout_s": 3,
                      "timeout_action": "abort"}}))
    assert lab.affinity(SRC, name)["vcpus"] == {0: {1}}
    ok(playbook(lab, "repin_migrate.yml", {"guest": name, "src": SRC, "dst": DST, "dest_conf": conf_allcpus,
                                           "expect_pins": {"0": pin}}))


def test_timeout_force_complete_pauses_and_completes(lab, run_module, conf_allcpus, request):
    pin = expect_pin(lab, run_module, conf_allcpus)
    name = busy_guest(lab, SRC, [1], request)
    rc, out = run_module("repin_migrate", {"guest": name, "source_uri": lab.uri(SRC), "dest_uri": lab.uri(DST),
                                           "dest_nova_conf": conf_allcpus, "bandwidth_mibps": 1,
                                           "max_downtime_ms": 10, "completion_timeout_s": 2,
                                           "timeout_action": "force_complete"})
    assert rc == 0 and out["changed"], out
    assert out["migration"]["monitor"]["action_taken"].startswith("force_complete")
    assert lab.domstate(DST, name) == "running"
    assert lab.affinity(DST, name)["vcpus"] == {0: {pin}}


def test_timeout_force_complete_switches_to_post_copy(lab, run_module, conf_allcpus, request):
    pin = expect_pin(lab, run_module, conf_allcpus)
    name = busy_guest(lab, SRC, [1], request)
    rc, out = run_module("repin_migrate", {"guest": name, "source_uri": lab.uri(SRC), "dest_uri": lab.uri(DST),
                                           "dest_nova_conf": conf_allcpus, "bandwidth_mibps": 1,
                                           "max_downtime_ms": 10, "completion_timeout_s": 2, "post_copy": True,
                                           "timeout_action": "force_complete"})
    assert rc == 0 and out["changed"], out
    assert out["migration"]["monitor"]["action_taken"] == "force_complete: switch to post-copy", out
    assert out["verify"]["affinity_match"] and out["verify"]["persistent_pins_match"]
    assert lab.affinity(DST, name)["vcpus"] == {0: {pin}}
    assert_libvirt_pins(out, pin)


def test_fault_migration_address_unreachable_then_rerun(lab, fresh_guest, run_module, conf_allcpus):
    pin = expect_pin(lab, run_module, conf_allcpus)
    g = fresh_guest(SRC, [1])
    ok(playbook(lab, "repin_fault.yml", {
        "guest": g.name, "src": SRC, "dst": DST, "dest_conf": conf_allcpus, "old_pins": {"0": [1]},
        "expect_msg": "migrate_uri", "mig_extra": {"migrate_uri": "tcp://127.0.0.9:49999"}}))
    ok(playbook(lab, "repin_migrate.yml", {"guest": g.name, "src": SRC, "dst": DST, "dest_conf": conf_allcpus,
                                           "expect_pins": {"0": pin}}))


def _incoming_qemu(uuid):
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-incoming" in args and uuid.encode() in args:
            return int(d.name)
    return None


def test_fault_destination_libvirtd_killed_mid_migration_then_rerun(lab, run_module, conf_allcpus, request):
    pin = expect_pin(lab, run_module, conf_allcpus)
    name = busy_guest(lab, SRC, [1], request)
    uuid = lab.virsh(SRC, "domuuid", name).stdout.strip()
    args = {"guest": name, "source_uri": lab.uri(SRC), "dest_uri": lab.uri(DST), "dest_nova_conf": conf_allcpus,
            "bandwidth_mibps": 1, "max_downtime_ms": 10, "completion_timeout_s": 120}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(args, f)
    proc = subprocess.Popen([str(REPO / "library" / "repin_migrate"), f.name], stdout=subprocess.PIPE, text=True)
    try:
        end = time.time() + 30
        while time.time() < end and _incoming_qemu(uuid) is None:
            time.sleep(0.02)
        assert _incoming_qemu(uuid), "the migration never reached the destination"
        time.sleep(1.0)  # well inside the memory copy (the guest keeps dirtying 8 MiB, sent at 1 MiB/s)
        libvirtd = lab.daemon_pid(DST)  # libvirtd's pid here (its pid file holds the host's own)
        os.kill(libvirtd, 9)
        out = json.loads(proc.communicate(timeout=180)[0])
    finally:
        os.unlink(f.name)
        if proc.poll() is None:
            proc.kill()
        r = lab.lab_sh("_phase", "hosts")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert out["failed"], out
    assert "keeps running on" in out["msg"] and out["source_pins_unchanged"] and out["guest_on_source"], out
    assert lab.domstate(SRC, name) == "running"
    assert lab.affinity(SRC, name)["vcpus"] == {0: {1}}
    # The restarted destination libvirtd cleans up the half-arrived guest; then a rerun succeeds.
    end = time.time() + 30
    while time.time() < end and (_incoming_qemu(uuid) or lab.guest_host(name) == DST):
        time.sleep(0.5)
    ok(playbook(lab, "repin_migrate.yml", {"guest": name, "src": SRC, "dst": DST, "dest_conf": conf_allcpus,
                                           "expect_pins": {"0": pin}}))


# ---------------------------------------------------------------------------------------------- mode repin, misc

def test_mode_repin_moves_pins_live_and_persistently(lab, fresh_guest, run_module, conf_allcpus):
    pin = expect_pin(lab, run_module, conf_allcpus)
    g = fresh_guest(DST, [1])  # overlaps c2-resident on pCPU 1
    args = {"guest": g.name, "mode": "repin", "source_uri": lab.uri(DST), "dest_nova_conf": conf_allcpus}
    rc, plan = run_module("repin_migrate", args, check_mode=True, diff=True)
    assert rc == 0 and plan["changed"] and plan["placement"]["cells"][0]["vcpu_pins"] == {"0": pin}, plan
    assert "cpuset='%d'" % pin in plan["diff"]["after"]
    assert lab.affinity(DST, g.name)["vcpus"] == {0: {1}}, "check mode changed nothing"
    rc, out = run_module("repin_migrate", args)
    assert rc == 0 and out["changed"] and out["verify"]["affinity_match"], out
    assert lab.affinity(DST, g.name) == {"vcpus": {0: {pin}}, "emulator": {pin}}
    assert_libvirt_pins(out, pin)
    assert "<vcpupin vcpu='0' cpuset='%d'/>" % pin in lab.dumpxml(DST, g.name, inactive=True)
    rc, again = run_module("repin_migrate", args)
    assert rc == 0 and not again["changed"], again


def test_mode_repin_refuses_when_no_free_pcpu(lab, fresh_guest, run_module, conf_only):
    g = fresh_guest(DST, [1])
    rc, out = run_module("repin_migrate", {"guest": g.name, "mode": "repin", "source_uri": lab.uri(DST),
                                           "dest_nova_conf": conf_only("1")})
    assert rc == 1 and "No numa available" in out["msg"] and "nothing was changed" in out["msg"], out
    assert lab.affinity(DST, g.name)["vcpus"] == {0: {1}}


def test_arguments_and_never_a_trace(lab, run_module):
    rc, out = run_module("repin_migrate", {"guest": "x", "source_uri": lab.uri(SRC), "bogus": 1})
    assert rc == 1 and "unsupported argument(s): bogus" in out["msg"]
    rc, out = run_module("repin_migrate", {"guest": "nope-nope", "source_uri": lab.uri(SRC),
                                           "dest_uri": lab.uri(DST)})
    assert rc == 1 and "no guest named" in out["msg"], out
    rc, out = run_module("repin_migrate", {"guest": "x", "source_uri": lab.uri(SRC), "dest_uri": lab.uri(SRC)})
    assert rc == 1 and "mode: repin" in out["msg"]
    rc, out = run_module("repin_migrate", {"guest": "x", "source_uri": "qemu+tcp://127.0.0.9/system",
                                           "dest_uri": lab.uri(DST)})
    assert rc == 1 and "cannot connect to libvirt" in out["msg"]
    for r in (out,):
        assert "panicked" not in json.dumps(r)


# ---------------------------------------------------------------------------------------------- destination claim
# The claim lives in the destination's libvirtd (a never-started domain numa-repin-claim), so runs on
# different machines (each with its own lock_dir) exclude each other. See src/io/claim.rs.

CLAIM = "numa-repin-claim"
CLAIM_NS = "http://numa-repin/xmlns/claim/1"


def claim_xml(uuid, host, pid, guest, source, started, boot_id="", pid_ns="", pid_start="", beat=""):
    return """<domain type='qemu'>
  <name>%s</name>
  <uuid>%s</uuid>
  <description>claim defined by hand by a test</description>
  <metadata>
    <nrc:claim xmlns:nrc='%s'>
      <nrc:host>%s</nrc:host><nrc:pid>%d</nrc:pid><nrc:pid_start>%s</nrc:pid_start><nrc:pid_ns>%s</nrc:pid_ns>
      <nrc:boot_id>%s</nrc:boot_id><nrc:started>%d</nrc:started><nrc:guest>%s</nrc:guest><nrc:source>%s</nrc:source>
      <nrc:destination></nrc:destination><nrc:mode>migrate</nrc:mode><nrc:beat>%s</nrc:beat>
    </nrc:claim>
  </metadata>
  <memory unit='KiB'>16384</memory>
  <vcpu>1</vcpu>
  <os><type>hvm</type></os>
</domain>
""" % (CLAIM, uuid, CLAIM_NS, host, pid, pid_start, pid_ns, boot_id, started, guest, source, beat)


def define_claim(lab, on, **owner):
    """A claim defined by hand (virsh define) on lab host `on`, as another runner would hold it. Returns its uuid."""
    import uuid as uuidlib
    u = str(uuidlib.uuid4())
    with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as f:
        f.write(claim_xml(u, **owner))
    try:
        lab.virsh(on, "define", f.name)
    finally:
        os.unlink(f.name)
    return u


def claim_uuid(lab, host):
    r = lab.virsh(host, "domuuid", CLAIM, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


@pytest.fixture
def no_claim(lab):
    """No claim on the destination before and after the test (a leftover of an earlier failed run is removed)."""
    for h in (SRC, DST):
        lab.virsh(h, "undefine", CLAIM, check=False)
    yield
    for h in (SRC, DST):
        lab.virsh(h, "undefine", CLAIM, check=False)


def live_vcpupin(lab, host, name):
    """{vcpu: {pCPUs}} of a running guest as libvirt reports it (`virsh vcpupin --live`); works whether or not
    the guest's QEMU is visible in this machine's /proc (lab hosts in their own namespaces)."""
    out = {}
    for line in lab.virsh(host, "vcpupin", "--live", name).stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            out[int(parts[0])] = lablib.cpuset(parts[1])
    return out


def real_pins(lab, host, name):
    """The kernel's affinity when the guest's QEMU is visible here, else libvirt's live pins."""
    try:
        return lab.affinity(host, name)["vcpus"]
    except OSError:
        return live_vcpupin(lab, host, name)


def _claim_double_pinned(lab, run_module, conf, racers, residents):
    """pCPUs of cmp2 pinned by two guests of which at least one is a racer (the others: `residents`, on cmp2
    before the trial): from each running guest's live pins (virsh vcpupin, plus /proc where visible) and from
    numa_facts' overlaps. Overlaps among residents only (other tests on the shared lab pin guests onto cmp2
    directly, some on purpose) and guests created there during the trial by others are not the trial's doing."""
    watched = set(racers) | set(residents)
    f = lab.numa_facts(DST, conf)
    holders = {}
    for g in f["guests"]:
        if g["state"] != "running" or g["name"] not in watched:
            continue
        for src in (live_vcpupin(lab, DST, g["name"]), real_pins(lab, DST, g["name"])):
            for cpus in src.values():
                if len(cpus) == 1:
                    holders.setdefault(next(iter(cpus)), set()).add(g["name"])
    live = {c: sorted(gs) for c, gs in holders.items() if len(gs) > 1 and gs & set(racers)}
    return live, [o for o in f["overlaps"] if len(set(o["guests"]) & watched) > 1 and set(o["guests"]) & set(racers)]


def mig_args(lab, name, conf, **extra):
    a = {"guest": name, "source_uri": lab.uri(SRC), "dest_uri": lab.uri(DST), "dest_nova_conf": conf}
    a.update(extra)
    return a


def test_claim_of_another_machine_times_out_naming_the_holder(lab, fresh_guest, run_module, conf_allcpus, no_claim):
    """(a) A claim held on cmp2 by another machine: repin_migrate waits lock_timeout_s, then fails naming the
    holder and the command to remove a stale claim; nothing changed, the foreign claim is untouched; numa_facts
    does not count it as a guest and reports it under claims. Check mode takes no claim. Once removed, the run
    migrates and reports its own claim, released."""
    pin = expect_pin(lab, run_module, conf_allcpus)
    g = fresh_guest(SRC, [1])
    before = lab.dumpxml(SRC, g.name)
    u = define_claim(lab, DST, host="ctl-other", pid=4242, guest="vm-elsewhere", source="qemu+tcp://cmp9/system",
                     started=int(time.time()) - 90, boot_id="0000-other-boot", pid_ns="pid:[1]")
    t0 = time.time()
    rc, out = run_module("repin_migrate", mig_args(lab, g.name, conf_allcpus, lock_timeout_s=2))
    took = time.time() - t0
    assert rc == 1 and out["failed"], out
    m = out["msg"]
    assert "the destination %s is claimed" % lab.uri(DST) in m, m
    assert "host ctl-other pid 4242, guest vm-elsewhere from qemu+tcp://cmp9/system" in m, m
    assert "virsh -c %s undefine numa-repin-claim" % lab.uri(DST) in m, m
    assert "Nothing was changed" in m, m
    assert 2 <= took < 30, took
    h = out["claim_holder"]
    assert h["host"] == "ctl-other" and h["pid"] == 4242 and h["guest"] == "vm-elsewhere" and h["age_s"] >= 90, h
    assert out["claim_uuid"] == u and out["guest_on_source"] is True
    # Nothing changed: the guest runs on its source with its pins; the foreign claim is still there.
    assert lab.guest_host(g.name) == SRC and lab.domstate(SRC, g.name) == "running"
    assert lab.dumpxml(SRC, g.name) == before
    assert real_pins(lab, SRC, g.name) == {0: {1}}
    assert claim_uuid(lab, DST) == u

    # numa_facts: the claim domain is no guest; it is reported under claims (with a warning).
    rc, fo = run_module("numa_facts", {"uri": lab.uri(DST), "nova_conf": conf_allcpus})
    assert rc == 0, fo
    f = fo["ansible_facts"]["numa"]
    assert CLAIM not in [x["name"] for x in f["guests"]]
    [c] = [c for c in f["claims"] if c["uuid"] == u]
    assert (c["host"], c["pid"], c["guest"]) == ("ctl-other", 4242, "vm-elsewhere") and c["age_s"] >= 90, c
    assert any("numa-repin claim %s" % u in w for w in fo.get("warnings", [])), fo.get("warnings")
    # pin_fit_check (uri mode) reads the same listing: the claim is no guest there either.
    rc, pf = run_module("pin_fit_check", {"uri": lab.uri(DST), "nova_conf": conf_allcpus, "guest": g.name,
                                          "source_uri": lab.uri(SRC)})
    assert rc == 0 and pf.get("fits") is True and CLAIM not in json.dumps(pf), pf

    # Check mode takes no claim at all (and so does not wait for one).
    t0 = time.time()
    rc, plan = run_module("repin_migrate", mig_args(lab, g.name, conf_allcpus, lock_timeout_s=30), check_mode=True)
    assert rc == 0 and plan["changed"] and "claim" not in plan, plan
    assert time.time() - t0 < 20
    assert claim_uuid(lab, DST) == u

    # The operator removes the stale claim: the run migrates and reports (and releases) its own claim.
    lab.virsh(DST, "undefine", CLAIM)
    rc, out = run_module("repin_migrate", mig_args(lab, g.name, conf_allcpus, lock_timeout_s=2))
    assert rc == 0 and out["changed"], out
    c = out["claim"]
    assert c["name"] == CLAIM and c["destination"] == lab.uri(DST) and c["took_over"] is False, c
    assert c["released"] is True and c["uuid"] != u and isinstance(c["waited_ms"], int), c
    assert claim_uuid(lab, DST) is None
    assert real_pins(lab, DST, g.name) == {0: {pin}}


def test_claim_of_this_machine_with_dead_pid_is_taken_over(lab, fresh_guest, run_module, conf_allcpus, no_claim):
    """A claim recorded by this machine (same hostname, boot id, pid namespace) whose process is gone is taken
    over, and the result says so; the same with a live pid is waited for."""
    expect_pin(lab, run_module, conf_allcpus)
    g = fresh_guest(SRC, [1])
    me = dict(host=Path("/proc/sys/kernel/hostname").read_text().strip(),
              boot_id=Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
              pid_ns=os.readlink("/proc/self/ns/pid"), guest="vm-dead", source=lab.uri(SRC),
              started=int(time.time()) - 60)
    # Alive: this test process itself holds it -> waited for, then refused.
    u = define_claim(lab, DST, pid=os.getpid(), **me)
    rc, out = run_module("repin_migrate", mig_args(lab, g.name, conf_allcpus, lock_timeout_s=1))
    assert rc == 1 and "pid %d" % os.getpid() in out["msg"], out
    assert claim_uuid(lab, DST) == u
    lab.virsh(DST, "undefine", CLAIM)
    # Dead: a process that has exited.
    p = subprocess.Popen(["true"])
    p.wait()
    u = define_claim(lab, DST, pid=p.pid, **me)
    rc, out = run_module("repin_migrate", mig_args(lab, g.name, conf_allcpus, lock_timeout_s=5))
    assert rc == 0 and out["changed"], out
    t = out["claim"]["took_over"]
    assert t and t["uuid"] == u and t["pid"] == p.pid and t["guest"] == "vm-dead", out["claim"]
    assert any("took over a stale claim" in w for w in out.get("warnings", [])), out.get("warnings")
    assert claim_uuid(lab, DST) is None


def test_claim_whose_lease_runs_out_is_taken_over(lab, fresh_guest, run_module, conf_allcpus, no_claim):
    """A claim of another machine that is no longer renewed (its holder died, or its release never reached a
    restarting libvirtd): once its beat has stayed unchanged for claim_lease_s of this run's clock, the run
    takes it over, migrates, and says so; a claim that is renewed meanwhile is waited for instead."""
    pin = expect_pin(lab, run_module, conf_allcpus)
    g = fresh_guest(SRC, [1])
    other = dict(host="ctl-gone", pid=4242, guest="vm-gone", source=lab.uri(SRC), started=int(time.time()) - 600,
                 boot_id="00000000-0000-4000-8000-000000000000", beat=17)
    u = define_claim(lab, DST, **other)
    t0 = time.time()
    rc, out = run_module("repin_migrate", mig_args(lab, g.name, conf_allcpus, lock_timeout_s=30, claim_lease_s=3))
    assert rc == 0 and out["changed"], out
    assert time.time() - t0 >= 3  # not before the lease ran out
    t = out["claim"]["took_over"]
    assert t["uuid"] == u and t["host"] == "ctl-gone" and "lease" in t["why"], out["claim"]
    assert any("took over a stale claim" in w and "ctl-gone" in w for w in out.get("warnings", [])), out
    assert claim_uuid(lab, DST) is None and lab.guest_host(g.name) == DST
    assert real_pins(lab, DST, g.name) == {0: {pin}}

    # Renewed: the holder's beat moves on every 1 s, so with a 3 s lease the run waits its timeout and fails.
    g2 = fresh_guest(SRC, [1])
    u = define_claim(lab, DST, **dict(other, beat=1))
    import threading
    stop = threading.Event()

    def renew():
        b = 1
        while not stop.wait(1.0):
            b += 1
            with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as f:
                f.write(claim_xml(u, **dict(other, beat=b)))
            lab.virsh(DST, "define", f.name, check=False)
            os.unlink(f.name)
    th = threading.Thread(target=renew)
    th.start()
    try:
        rc, out = run_module("repin_migrate", mig_args(lab, g2.name, conf_allcpus, lock_timeout_s=6, claim_lease_s=3))
    finally:
        stop.set()
        th.join()
    assert rc == 1 and "ctl-gone" in out["msg"] and out.get("guest_on_source") is True, out
    assert claim_uuid(lab, DST) == u and lab.guest_host(g2.name) == SRC


def local_runner(lab):
    """Runs the module as process `i` of a trial on this machine. The signature is what a runner on another lab
    host (over SSH) provides: runner(i, module, args) -> (rc, result dict)."""
    def run(i, module, args):
        return lab.run_module(module, args)
    return run


def remote_runner(lab, hosts=("cmp1", "control")):
    """Runs process `i` of a trial on lab host hosts[i] over SSH, the way Ansible runs a module there: two
    separate machines (the source compute and the control host), each with its own /run/lock and /proc. A
    nova.conf given as a path on this machine is copied to the host first."""
    s = lab.data["ssh"]

    def run(i, module, args):
        h = hosts[i]
        a = dict(args)
        conf = a.get("dest_nova_conf")
        if conf and os.path.exists(conf):
            remote = "/tmp/numa-repin-trial-%s" % os.path.basename(conf)
            subprocess.run(["scp", "-q", "-F", s["config"], "-i", s["key"], conf,
                            "root@%s:%s" % (lab.nodes[h]["address"], remote)], check=True, capture_output=True)
            a["dest_nova_conf"] = remote
        a["lock_dir"] = "/run/lock/numa-repin"  # each machine's own default: they do not see each other's
        return lab.run_module_on(h, module, a)
    return run


def claim_trial(lab, run_module, fresh_guest, runner, conf, lock_root, t):
    """Two repin_migrate runs started at the same moment toward cmp2, each with its OWN lock_dir, for two fresh
    guests on cmp1 pinned alike (both would take the same free pCPU of cmp2 if both fitted blindly). Returns
    (free pCPUs before, [(guest, rc, result)], double-pinned)."""
    import threading
    end = time.time() + 120  # the lab is shared: wait for other runs to leave cmp2 a free pCPU
    free = free_cpus(lab, run_module, conf)
    while not free and time.time() < end:
        time.sleep(1)
        free = free_cpus(lab, run_module, conf)
    before = {x["name"]: (x["uuid"], x["vcpu_pins"]) for x in lab.numa_facts(DST, conf)["guests"]}
    names = [fresh_guest(SRC, [1]).name for _ in range(2)]
    barrier = threading.Barrier(2)

    def one(i):
        lock_dir = lock_root / ("trial%d-runner%d" % (t, i))
        lock_dir.mkdir(parents=True)
        barrier.wait()
        return runner(i, "repin_migrate", mig_args(lab, names[i], conf, lock_dir=str(lock_dir), lock_timeout_s=120))

    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(one, range(2)))
    # Residents: guests that were on cmp2 before the trial and are the same domain with the same pins after
    # (the lab is shared: other runs, with binaries that do not take the claim, move guests to and from cmp2).
    after = {x["name"]: (x["uuid"], x["vcpu_pins"]) for x in lab.numa_facts(DST, conf)["guests"]}
    residents = [n for n, v in before.items() if after.get(n) == v]
    live, mine = _claim_double_pinned(lab, run_module, conf, names, residents)
    return free, [(n, rc, r) for n, (rc, r) in zip(names, results)], {"live": live, "libvirt": mine}, names


def test_claim_two_runners_on_two_hosts_never_double_pin(lab, fresh_guest, run_module, conf_allcpus, no_claim,
                                                        tmp_path, runner=None):
    """(b) 20 trials of two simultaneous runs started from two separate lab hosts (cmp1 and control, each with its
    own /run/lock): no pCPU of cmp2 is pinned by two guests after any trial; each run migrated or failed cleanly
    with its guest running on its source with its old pins; no claim is left behind."""
    runner = runner or remote_runner(lab)
    trials = 20
    stats = {"trials": 0, "migrated": 0, "refused": 0, "double_pinned": 0, "waited_ms": []}
    for t in range(trials):
        free, results, double, names = claim_trial(lab, run_module, fresh_guest, runner, conf_allcpus, tmp_path, t)
        assert free, "cmp2 has no free pCPU under %s: cannot run the trial" % conf_allcpus
        won = []
        for n, rc, r in results:
            if not r["failed"]:
                won.append(n)
                assert r["claim"]["released"] and r["claim"]["name"] == CLAIM, r
                stats["waited_ms"].append(r["claim"]["waited_ms"])
            else:
                assert r["msg"].startswith("No numa available with"), r
                assert r.get("guest_on_source") is True, r
                assert lab.guest_host(n) == SRC and lab.domstate(SRC, n) == "running", (n, r)
                assert real_pins(lab, SRC, n) == {0: {1}}, n
        # At most as many winners on cmp2 as it had free pCPUs (fewer when another run on the shared lab took
        # one meanwhile; a winner that another run, e.g. a drain, moved on again frees its pCPU).
        on_dst = [n for n in won if lab.guest_host(n) == DST]
        assert len(on_dst) <= min(len(free), 2), (free, results)
        stats["double_pinned"] += len(double["live"]) + len(double["libvirt"])
        assert not double["live"] and not double["libvirt"], (t, double, results)
        assert claim_uuid(lab, DST) is None, "a claim was left on %s after trial %d" % (DST, t)
        stats["trials"] += 1
        stats["migrated"] += len(won)
        stats["refused"] += len(results) - len(won)
        for n in names:
            lab.remove_guest(n)
    stats["max_waited_ms"] = max(stats.pop("waited_ms") or [0])
    print("claim trials:", json.dumps(stats))
    assert stats["trials"] == trials and stats["double_pinned"] == 0


# ---------------------------------------------------------------------------------------------- late daemon kills

def _defined_on(lab, uuid):
    """{host: state} of every lab host that has the guest defined (virsh answers there)."""
    out = {}
    for h in lab.hosts:
        r = lab.virsh(h, "domstate", uuid, check=False)
        if r.returncode == 0:
            out[h] = r.stdout.strip()
    return out


def _late_kill_trial(lab, conf, victim, delay):
    """Migrate an idle guest cmp1 -> cmp2 and kill `victim`'s libvirtd `delay` s after the incoming QEMU
    appeared on cmp2 (late: around the end of the memory copy, or after it). Returns (result, where the guest
    was defined and how, right after the module returned, before the daemon is restarted)."""
    name = "t-late-%s" % os.urandom(3).hex()
    g = lab.define_guest(SRC, name, [1])
    args = {"guest": name, "source_uri": lab.uri(SRC), "dest_uri": lab.uri(DST), "dest_nova_conf": conf}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(args, f)
    proc = subprocess.Popen([str(REPO / "library" / "repin_migrate"), f.name], stdout=subprocess.PIPE, text=True)
    try:
        end = time.time() + 30
        while time.time() < end and _incoming_qemu(g.uuid) is None and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(lab.daemon_pid(victim), 9)
        out = json.loads(proc.communicate(timeout=180)[0])
    finally:
        os.unlink(f.name)
        if proc.poll() is None:
            proc.kill()
    r = lab.lab_sh("_phase", "hosts")  # restart the killed daemon
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    # With both daemons back (they reconnect to the QEMUs that run), libvirt says where it runs; a
    # half-arrived incoming copy is cleaned up by the restarted daemon within seconds. A source copy
    # left paused inside the migration (its daemon died before Confirm) does not run: the rerun removes it.
    end = time.time() + 20
    while True:
        defined = _defined_on(lab, g.uuid)
        running = [h for h, st in defined.items() if st == "running"]
        if len(running) == 1 or time.time() > end:
            return g, out, running, defined
        time.sleep(0.5)


@pytest.mark.parametrize("victim", [SRC, DST])
def test_late_daemon_kill_one_host_per_guest_and_the_truth_reported(lab, run_module, conf_allcpus, victim):
    """10 trials each: the source's (or the destination's) libvirtd is killed late in or right after the
    migration. The result never says "absent" / "not running" of a host whose daemon could not be asked; after
    the daemon is back, a rerun leaves the guest defined on exactly one host, running, pinned as planned."""
    expect_pin(lab, run_module, conf_allcpus)
    seen = []
    for i in range(10):
        delay = 0.1 * i  # 0-0.9 s: an idle 64 MiB guest moves in about 0.6 s here
        g, out, running, defined = _late_kill_trial(lab, conf_allcpus, victim, delay)
        try:
            assert len(running) == 1, (defined, out)  # a migration hands over, it never copies
            where = running[0]
            seen.append((round(delay, 2), where, sorted(defined.items()), out.get("failed") and out["msg"][-300:]))
            if out.get("failed"):
                # Never "absent" for a host that runs it: False only where libvirtd answered so.
                if where == SRC:
                    assert out.get("guest_on_source") is not False, out
                else:
                    assert out.get("running_on_destination") is not False, out
                    assert "is not on" not in out["msg"] or "cannot be asked" in out["msg"], out
                # "No" only where the daemon answered: a host that could not be asked is "unknown".
                if out.get("guest_on_source") is False:
                    assert not out.get("source_state", "").startswith("unknown"), out
                if out.get("running_on_destination") is False:
                    assert not out.get("dest_state", "").startswith("unknown"), out
                assert "Traceback" not in out["msg"] and "panic" not in out["msg"], out
            # The rerun, with both daemons back: the guest ends defined on one host only, running on cmp2.
            rc, again = run_module("repin_migrate", {"guest": g.uuid, "source_uri": lab.uri(SRC),
                                                     "dest_uri": lab.uri(DST), "dest_nova_conf": conf_allcpus})
            assert rc == 0 and not again.get("failed"), (again, out)
            defined = _defined_on(lab, g.uuid)
            assert defined == {DST: "running"}, (defined, again, out)
            stale = again.get("stale_source_copy") or again.get("verify", {}).get("stale_source_copy")
            if stale and stale["status"] == "removed":
                assert "removed the stale" in again["msg"] and again["changed"], again
        finally:
            lab.remove_guest(g.name)
    print("late kills of %s: (delay s, where it ran, defined where, the failure's message): %s" % (victim, seen))


def test_role_shows_progress_and_a_stall_before_progress_timeout_aborts(lab, run_module, request):
    """A busy guest (8 MiB dirtied in a loop) sent at 1 MiB/s never converges: while the role waits it shows
    data remaining, dirty rate and downtime step, then the stall with the time left before
    progress_timeout_s acts; then the abort, the guest still on the source with its pins."""
    expect_pin(lab, run_module, lab.nova_conf(DST))
    name = busy_guest(lab, SRC, [1], request)
    uuid = lab.virsh(SRC, "domuuid", name).stdout.strip()
    p = playbook(lab, "move_one.yml", {"guest": name, "uuid": uuid, "src": SRC, "dst": DST, "numa_repin_fixup": False,
                                       "numa_repin_bandwidth_mibps": 1, "numa_repin_max_downtime_ms": 10,
                                       "numa_repin_progress_timeout_s": 12, "numa_repin_timeout_action": "abort",
                                       "numa_repin_progress_every_s": 2})
    assert p.returncode != 0, p.stdout[-3000:]
    progress = re.findall(r"Migration of %s to cmp2: (\d+) s: (\d+) MiB remaining of (\d+) MiB, dirtying ([\d.]+) MiB/s"
                          % name, p.stdout)
    assert len(progress) >= 2, p.stdout[-4000:]
    stalls = re.findall(r"STALLED: no progress for (\d+) s: aborts in (\d+) s \(progress_timeout_s 12\)", p.stdout)
    assert stalls and int(stalls[-1][1]) < 12, p.stdout[-4000:]  # shown before it acted
    assert "no progress for 12 s (progress_timeout_s" in p.stdout, p.stdout[-3000:]
    assert lab.domstate(SRC, name) == "running" and lab.affinity(SRC, name)["vcpus"] == {0: {1}}
    print("progress lines: %d, stall lines: %d, e.g. %s" % (len(progress), len(stalls), progress[-1]))
