"""deploy_patched_nova under podman (as on CentOS 8 / RHEL-style Kolla hosts) in a real podman container of
the lab's Nova 19.3.2 image (loaded from docker's copy): check mode with its diff, apply with restart and the
import health gate, an unchanged rerun, state absent back to sha256-identical files; and a container that dies
on its restart rolled back. The same module and patch set as the docker tests (test_deploy_patch.py)."""
import subprocess
import uuid as uuidlib

import pytest

from lablib import rollout_args
from test_deploy_patch import ALL_PARTS, PATHS, patched, pristine

def pod(*a, check=True, timeout=300):  # podman comes with tests/lab/lab.sh up
    r = subprocess.run(["podman"] + [str(x) for x in a], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError("podman %s: %s" % (" ".join(map(str, a)), r.stderr.strip()))
    return r


@pytest.fixture
def podman_container(lab):
    image = lab.data["containers"]["nova_image"]
    if pod("image", "exists", image, check=False).returncode != 0:
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        load = subprocess.run(["podman", "load"], stdin=save.stdout, capture_output=True, text=True, timeout=600)
        save.wait()
        assert save.returncode == 0 and load.returncode == 0, load.stderr
    made = []

    def make(command=("sleep", "infinity"), flags=()):
        name = "nrl-podman-%s" % uuidlib.uuid4().hex[:8]
        pod("run", "-d", "--init", "--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit",
            "nproc=4096:4096", "--name", name, "--label", "numa-repin-lab=test", *flags, image, *command)
        made.append(name)
        return name

    yield make
    for n in made:
        pod("rm", "-f", n, check=False)


def sums(lab, name):
    r = pod("exec", name, "sha256sum", *[lab.nova_dir() + "/" + p for p in PATHS], check=False)
    got = {}
    for line in r.stdout.splitlines():
        digest, path = line.split(None, 1)
        got[path[len(lab.nova_dir()) + 1:]] = digest
    return {p: got.get(p) for p in PATHS}


def test_apply_rerun_absent_under_podman(lab, podman_container, run_module, tmp_path):
    c = podman_container()
    assert sums(lab, c) == pristine()
    a = rollout_args(tmp_path / "backup", containers={c: ALL_PARTS}, container_engine="podman")
    rc, res = run_module("deploy_patched_nova", a, check_mode=True, diff=True)
    assert res["changed"] and not res.get("failed"), res
    assert "+from nova import numa_repin_patch" in "".join(d.get("prepared", "") for d in res["diff"])
    assert sums(lab, c) == pristine(), "check mode changed nothing"

    rc, res = run_module("deploy_patched_nova", a)
    assert res["changed"] and not res.get("failed"), res
    assert res["release"] == "19.3.2" and res["containers"][c]["restarted"]
    assert sums(lab, c) == patched()
    assert pod("inspect", "-f", "{{.State.Running}}", c).stdout.strip() == "true"
    imp = pod("exec", c, lab.data["containers"]["nova_python"], "-c",
              "import nova.numa_repin_patch, nova.conductor.tasks.live_migrate; print('ok')", check=False)
    assert imp.returncode == 0 and "ok" in imp.stdout, imp.stderr[-1500:]

    rc, res = run_module("deploy_patched_nova", a)
    assert not res["changed"] and not res.get("failed"), res

    rc, res = run_module("deploy_patched_nova", dict(a, state="absent"))
    assert res["changed"] and not res.get("failed"), res
    assert sums(lab, c) == pristine(), "sha256-identical pristine files"


def test_a_container_that_dies_on_restart_is_rolled_back_under_podman(lab, podman_container, run_module, tmp_path):
    """The container dies when restarted with the patch (exit 3): the files are put back into the stopped
    container, it is started, and it runs byte-identical to before."""
    c = podman_container(command=("sh", "-c", "if [ -e /fail-once ]; then rm -f /fail-once; exit 3; fi; "
                                             "exec sleep infinity"))
    pod("exec", c, "touch", "/fail-once")
    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup", containers={c: ALL_PARTS}, container_engine="podman"))
    assert res.get("failed") and res.get("rolled_back") is True, res
    assert "exit code 3" in res["msg"], res["msg"]
    assert sums(lab, c) == pristine(), "byte-identical files after the rollback"
    assert pod("inspect", "-f", "{{.State.Running}}", c).stdout.strip() == "true"
