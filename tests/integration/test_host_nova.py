"""Nova installed on the host rather than in a container: lab host cmp4 is Ubuntu 18.04 with its own
python-nova package (Ubuntu's Queens build, with Ubuntu's backports) under
/usr/lib/python2.7/dist-packages, systemd as its PID 1, and the unit nova-compute running from that
package. deploy_patched_nova (`path:` + `services:`) runs there over SSH, as Ansible runs it: the hooks
apply to Ubuntu's files, the unit is restarted and must stay up, a unit that dies on the new files is
rolled back; and the playbooks patch it together with the lab's containers."""
import hashlib
import json
import subprocess
import uuid as uuidlib

import pytest

import nova_hooks
from lablib import rollout_args

REPO = nova_hooks.REPO
MODULE = "deploy_patched_nova"


@pytest.fixture(scope="module")
def hn(lab):
    return lab.data["host_nova"]


def sh(lab, hn, cmd, check=True):
    r = lab.ssh(cmd, host=hn["host"], timeout=120)
    if check:
        assert r.returncode == 0, "%s: %s" % (cmd, r.stderr[-800:])
    return r.stdout


def sums(lab, hn):
    """{path: sha256 or None} of every file the patch touches, on the host."""
    out = {}
    for p in nova_hooks.paths():
        r = lab.ssh("sha256sum %s/%s" % (hn["path"], p), host=hn["host"])
        out[p] = r.stdout.split()[0] if r.returncode == 0 else None
    return out


def unit(lab, hn):
    text = sh(lab, hn, "systemctl show -p ActiveState,MainPID,ActiveEnterTimestampMonotonic %s" % hn["services"][0])
    return dict(l.split("=", 1) for l in text.splitlines() if "=" in l)


@pytest.fixture
def backup(lab, hn):
    d = "/var/lib/numa-repin/test-backup-%s" % uuidlib.uuid4().hex[:8]
    yield d
    lab.ssh("rm -rf %s" % d, host=hn["host"])


@pytest.fixture
def pristine(lab, hn):
    """The host's Nova must be unpatched before and after each test."""
    before = sums(lab, hn)
    assert before["numa_repin_patch.py"] is None, "cmp4's Nova is unpatched at the start"
    yield before
    assert sums(lab, hn) == before, "the test left cmp4's Nova as it found it"


def test_the_host_boots_systemd_and_runs_ubuntus_nova(lab, hn):
    out = sh(lab, hn, "cat /proc/1/comm; systemctl is-system-running || true; . /etc/os-release; echo $VERSION_ID;"
                      " dpkg-query -W -f '${Version}\\n' python-nova; systemctl is-active %s" % hn["services"][0])
    comm, state, os_version, version, active = out.split("\n")[:5]
    assert comm == "systemd" and state in ("running", "degraded"), out
    assert os_version == "18.04", out
    assert version.startswith("2:17.0.") and "ubuntu" in version, "Ubuntu's own Queens build: %s" % version
    assert active == "active"
    pid = unit(lab, hn)["MainPID"]
    cmdline = sh(lab, hn, "tr '\\0' ' ' </proc/%s/cmdline" % pid)
    assert cmdline.startswith(hn["python"]) and "nova.compute.manager" in cmdline, cmdline
    assert sh(lab, hn, "test -f %s/compute/manager.py && echo yes" % hn["path"]).strip() == "yes"


def test_rollout_restarts_the_unit_rerun_and_absent(lab, hn, backup, pristine):
    originals = {p: sh(lab, hn, "cat %s/%s" % (hn["path"], p)) for p in nova_hooks.hooks()}
    u0 = unit(lab, hn)

    rc, res = lab.run_module_on(hn["host"], MODULE,
                                rollout_args(backup, host_nova=hn, health_timeout_s=60), check_mode=True)
    assert rc == 0 and res["changed"] and res["status"] == "unpatched", res
    assert set(res["files"].values()) == {"would patch"}
    assert sums(lab, hn) == pristine and unit(lab, hn)["MainPID"] == u0["MainPID"], "check mode changed nothing"

    rc, res = lab.run_module_on(hn["host"], MODULE, rollout_args(backup, host_nova=hn, health_timeout_s=60))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert res["status"] == "patched" and res["restarted"] is True, res
    assert "restarted %s, active" % hn["services"][0] in res["msg"], res["msg"]
    assert res["nova_version"].startswith("17.0."), res
    u1 = unit(lab, hn)
    assert u1["ActiveState"] == "active" and u1["MainPID"] != u0["MainPID"], (u0, u1)
    # Ubuntu's files, hooked exactly as hooks.toml says (nova_hooks' own reading of it)
    hooks = nova_hooks.hooks()
    want = {p: hashlib.sha256(nova_hooks.apply(originals[p], hooks[p]).encode()).hexdigest() for p in hooks}
    want["numa_repin_patch.py"] = nova_hooks.sha(nova_hooks.CORE.read_bytes())
    assert sums(lab, hn) == want
    # the restarted service runs the patched modules
    imp = sh(lab, hn, "%s -c 'import nova.compute.manager as m; print(m.numa_repin_patch.__name__)'" % hn["python"])
    assert imp.strip() == "nova.numa_repin_patch"

    rc, res = lab.run_module_on(hn["host"], MODULE, rollout_args(backup, host_nova=hn, health_timeout_s=60))
    assert rc == 0 and res["changed"] is False and res["status"] == "patched", res
    assert unit(lab, hn)["MainPID"] == u1["MainPID"], "a rerun restarts nothing"

    rc, res = lab.run_module_on(hn["host"], MODULE,
                                rollout_args(backup, host_nova=hn, health_timeout_s=60, state="absent"))
    assert rc == 0 and res["changed"] and res["restarted"] is True, res
    assert sums(lab, hn) == pristine, "Ubuntu's files back, byte for byte"
    u2 = unit(lab, hn)
    assert u2["ActiveState"] == "active" and u2["MainPID"] != u1["MainPID"]


def test_a_unit_that_dies_on_the_new_files_is_rolled_back(lab, hn, backup, pristine, tmp_path):
    """A core that breaks nova-compute's imports (the import gate off, so the unit's own death is what
    the gate sees): the unit crash-loops, the gate fails, Ubuntu's files come back and the unit runs."""
    patch = tmp_path / "patch"
    (patch / "src").mkdir(parents=True)
    (patch / "hooks.toml").write_bytes(nova_hooks.HOOKS.read_bytes())
    (patch / "src" / "numa_repin_patch.py").write_text("raise ImportError('numa-repin test: a broken core')\n")
    remote = "/tmp/numa-repin-broken-%s" % uuidlib.uuid4().hex[:8]
    s = lab.data["ssh"]
    subprocess.run(["scp", "-q", "-r", "-F", s["config"], "-i", s["key"], str(patch),
                    "root@%s:%s" % (lab.nodes[hn["host"]]["address"], remote)], check=True, timeout=60)
    # The crash-loop must hit systemd's start limit whatever this machine's speed (Ubuntu's unit, restarting
    # every 100 ms, hits it within a second or two): systemd then refuses every start until reset-failed.
    limit = "/run/systemd/system/%s.service.d/numa-repin-test-limit.conf" % hn["services"][0]
    sh(lab, hn, "mkdir -p %s && printf '[Unit]\\nStartLimitIntervalSec=120\\nStartLimitBurst=2\\n' > %s"
       " && systemctl daemon-reload" % (limit.rsplit("/", 1)[0], limit))
    try:
        assert sh(lab, hn, "systemctl show -p StartLimitBurst %s" % hn["services"][0]).strip() == "StartLimitBurst=2"
        u0 = unit(lab, hn)
        rc, res = lab.run_module_on(hn["host"], MODULE,
                                    rollout_args(backup, host_nova=hn, patch_dir=remote, health_import=False,
                                                 health_timeout_s=20))
        assert rc != 0 and res["failed"] and res["changed"] is False, res
        assert res["failed_step"] == "health gate" and res["rolled_back"] is True, res
        assert "systemd unit %s did not stay active" % hn["services"][0] in res["msg"], res["msg"]
        assert "byte-identical to before and its services are active" in res["msg"], res["msg"]
        assert sums(lab, hn) == pristine
        u1 = unit(lab, hn)
        assert u1["ActiveState"] == "active" and u1["MainPID"] != u0["MainPID"]
    finally:
        # Whatever happened, the next tests find the unit startable (not in the start limit).
        lab.ssh("rm -rf %s %s; systemctl daemon-reload; systemctl reset-failed %s" % (remote, limit, hn["services"][0]),
                host=hn["host"])


def test_a_stopped_unit_is_refused(lab, hn, backup, pristine):
    sh(lab, hn, "systemctl stop %s" % hn["services"][0])
    try:
        rc, res = lab.run_module_on(hn["host"], MODULE, rollout_args(backup, host_nova=hn, health_timeout_s=60))
        assert rc != 0 and res["failed"] and "is inactive, not active" in res["msg"], res
        assert "nothing was changed" in res["msg"]
        rc, res = lab.run_module_on(hn["host"], MODULE,
                                    rollout_args(backup, host_nova=hn, health_timeout_s=60, services=["no-such-unit"]))
        assert rc != 0 and "no-such-unit" in res["msg"] and "not loaded" in res["msg"], res
    finally:
        sh(lab, hn, "systemctl start %s" % hn["services"][0])


def patch_status(lab, both, tmp_path):
    out = tmp_path / "patch-status.json"
    r = lab.ansible_playbook(REPO / "tests" / "playbooks" / "patch_status.yml", extra_args=both,
                             extra_vars={"patch_status_out": str(out)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    return {(s["host"], s["container"]): s for s in json.loads(out.read_text())}


def test_playbooks_patch_the_containers_and_the_host_nova(lab, hn, pristine, tmp_path):
    """deploy_nova_patch.yml with the lab inventory and cmp4's: every target patched (cmp4 through
    nova_patch_host_installed), the audit's status says so per target; rollback_nova_patch.yml
    takes both back."""
    both = ["-i", hn["inventory"]]
    key = (hn["host"], "host: " + hn["path"])
    st = patch_status(lab, both, tmp_path)
    assert st[key]["status"] == "unpatched" and st[key]["release"].startswith("17.0."), st
    assert st[("cmp1", "nova_compute")]["status"] == "unpatched", st
    r = lab.ansible_playbook(REPO / "playbooks" / "deploy_nova_patch.yml", extra_args=both)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "cmp4: Nova 17.0." in r.stdout and "restarted nova-compute, active" in r.stdout, r.stdout[-4000:]
    got = sums(lab, hn)
    # the parts a compute gets (inventory-hostnova.yml): compute/, virt/ and the core
    compute_side = [p for p in nova_hooks.hooks() if p.startswith(("compute/", "virt/"))]
    assert got["numa_repin_patch.py"] and all(got[p] != pristine[p] for p in compute_side), got
    assert got["conductor/tasks/live_migrate.py"] == pristine["conductor/tasks/live_migrate.py"]
    st = patch_status(lab, both, tmp_path)
    assert st[key]["status"] == "patched" and st[("cmp1", "nova_compute")]["status"] == "patched", st
    r = lab.ansible_playbook(REPO / "playbooks" / "rollback_nova_patch.yml", extra_args=both)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert sums(lab, hn) == pristine
    c = lab.data["containers"]
    check = lab.engine("exec", "nova_compute", "test", "-e", c["nova_site_packages"] + "/nova/numa_repin_patch.py",
                       check=False)
    assert check.returncode != 0, "the container is back to pristine too"
