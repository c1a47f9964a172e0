"""deploy_patched_nova and playbooks/deploy_nova_patch.yml in the lab's real containers (docker,
Kolla venv layout, Nova 19.3.2): apply, rerun, absent, refusal of a different Nova, injected
failing health check and failing restart with automatic rollback, bad input."""
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PATCH = REPO / "roles" / "nova_patch" / "files"
MANIFEST = json.loads((PATCH / "19.3.2" / "manifest.json").read_text())
CONDUCTOR_PARTS = ["conductor/", "db/", "numa_repin_patch.py"]
COMPUTE_PARTS = ["compute/", "virt/", "numa_repin_patch.py"]
ALL_PARTS = CONDUCTOR_PARTS + COMPUTE_PARTS


def nova_dir(lab):
    return lab.data["containers"]["nova_site_packages"] + "/nova"


def raw_sums(lab, name, paths):
    """sha256sum inside the container (bytes exact), for the byte-identical checks."""
    r = lab.engine("exec", name, "sha256sum", *[nova_dir(lab) + "/" + p for p in paths], check=False)
    got = {}
    for line in r.stdout.splitlines():
        digest, path = line.split(None, 1)
        got[path[len(nova_dir(lab)) + 1:]] = digest
    return {p: got.get(p) for p in paths}


def pristine(parts=ALL_PARTS):
    return {f["path"]: f["pristine_sha256"] for f in MANIFEST["files"]
            if any(f["path"] == p or (p.endswith("/") and f["path"].startswith(p)) for p in parts)}


def patched(parts=ALL_PARTS):
    return {f["path"]: f["patched_sha256"] for f in MANIFEST["files"]
            if any(f["path"] == p or (p.endswith("/") and f["path"].startswith(p)) for p in parts)}


PATHS = [f["path"] for f in MANIFEST["files"]]


def running(lab, name):
    return lab.engine("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"


def args(lab, containers, tmp_path, **kw):
    a = {"patch_dir": str(PATCH), "containers": containers, "backup_dir": str(tmp_path / "backup"),
         "health_timeout_s": 30}
    a.update(kw)
    return a


def test_apply_rerun_absent_on_a_fresh_container(lab, fresh_container, run_module, tmp_path):
    c = fresh_container()
    assert raw_sums(lab, c, PATHS) == pristine()
    rc, res = run_module("deploy_patched_nova", args(lab, {c: ALL_PARTS}, tmp_path), check_mode=True, diff=True)
    assert res["changed"] and not res.get("failed"), res
    assert set(res["containers"][c]["files"].values()) == {"would patch"}
    assert "+from nova import numa_repin_patch" in "".join(d.get("prepared", "") for d in res["diff"])
    assert raw_sums(lab, c, PATHS) == pristine(), "check mode changed nothing"

    rc, res = run_module("deploy_patched_nova", args(lab, {c: ALL_PARTS}, tmp_path))
    assert res["changed"] and not res.get("failed"), res
    assert res["release"] == "19.3.2" and res["containers"][c]["restarted"]
    assert res["containers"][c]["nova_path"] == nova_dir(lab)
    assert raw_sums(lab, c, PATHS) == patched()
    assert running(lab, c)
    # the patched modules import with the container's own Python
    imp = lab.engine("exec", c, lab.data["containers"]["nova_python"], "-c",
                     "import nova.numa_repin_patch, nova.conductor.tasks.live_migrate, nova.compute.manager, "
                     "nova.virt.libvirt.driver; print('ok')", check=False)
    assert imp.returncode == 0 and "ok" in imp.stdout, imp.stderr[-1500:]
    # fresh bytecode of the patched file, none stale
    pyc = lab.engine("exec", c, "sh", "-c", "ls %s/conductor/tasks/__pycache__/ | grep live_migrate" % nova_dir(lab))
    assert "live_migrate.cpython-37.pyc" in pyc.stdout

    rc, res = run_module("deploy_patched_nova", args(lab, {c: ALL_PARTS}, tmp_path))
    assert not res["changed"] and not res.get("failed"), res

    rc, res = run_module("deploy_patched_nova", args(lab, {c: ALL_PARTS}, tmp_path, state="absent"), diff=True)
    assert res["changed"] and not res.get("failed"), res
    assert raw_sums(lab, c, PATHS) == pristine(), "sha256-identical pristine files, new file gone"
    left = lab.engine("exec", c, "sh", "-c", "find %s -name '*.numa-repin.orig'" % nova_dir(lab)).stdout.strip()
    assert left == ""
    rc, res = run_module("deploy_patched_nova", args(lab, {c: ALL_PARTS}, tmp_path, state="absent"))
    assert not res["changed"] and not res.get("failed"), res


def test_absent_restores_from_the_container_copy_when_the_host_backup_is_gone(lab, fresh_container, run_module,
                                                                             tmp_path):
    c = fresh_container()
    rc, res = run_module("deploy_patched_nova", args(lab, {c: CONDUCTOR_PARTS}, tmp_path, restart=False))
    assert res["changed"] and "not restarted" in res["msg"], res
    subprocess.run(["rm", "-rf", str(tmp_path / "backup")], check=True)
    rc, res = run_module("deploy_patched_nova", args(lab, {c: CONDUCTOR_PARTS}, tmp_path, state="absent"))
    assert res["changed"] and not res.get("failed"), res
    assert raw_sums(lab, c, PATHS) == pristine()


def test_an_earlier_patch_build_is_updated_and_a_local_edit_refused(lab, fresh_container, run_module, tmp_path):
    """A container patched with an earlier build of the patch (recorded when written) takes the
    new build ("would update"); the pristine backup stays the original; a local edit is refused."""
    import shutil
    old = tmp_path / "old"
    shutil.copytree(PATCH / "19.3.2", old / "19.3.2")
    core = old / "19.3.2" / "nova" / "numa_repin_patch.py"
    core.write_bytes(core.read_bytes() + b"# an earlier build\n")
    m = json.loads((old / "19.3.2" / "manifest.json").read_text())
    for f in m["files"]:
        if f["path"] == "numa_repin_patch.py":
            f["patched_sha256"] = hashlib.sha256(core.read_bytes()).hexdigest()
    (old / "19.3.2" / "manifest.json").write_text(json.dumps(m))
    c = fresh_container()
    rc, res = run_module("deploy_patched_nova", dict(args(lab, {c: ALL_PARTS}, tmp_path), patch_dir=str(old),
                                                     restart=False))
    assert res["changed"] and not res.get("failed"), res

    rc, res = run_module("deploy_patched_nova", args(lab, {c: ALL_PARTS}, tmp_path, restart=False), check_mode=True)
    assert res["changed"] and res["containers"][c]["files"]["numa_repin_patch.py"] == "would update", res
    rc, res = run_module("deploy_patched_nova", args(lab, {c: ALL_PARTS}, tmp_path))
    assert res["changed"] and not res.get("failed"), res
    assert raw_sums(lab, c, PATHS) == patched()

    lab.engine("exec", c, "sh", "-c", "echo '# local' >> %s/numa_repin_patch.py" % nova_dir(lab))
    rc, res = run_module("deploy_patched_nova", args(lab, {c: ALL_PARTS}, tmp_path))
    assert res.get("failed") and "numa_repin_patch.py is neither" in res["msg"], res
    lab.engine("exec", c, "sh", "-c", "sed -i '$d' %s/numa_repin_patch.py" % nova_dir(lab))

    rc, res = run_module("deploy_patched_nova", args(lab, {c: ALL_PARTS}, tmp_path, state="absent"))
    assert res["changed"] and not res.get("failed"), res
    assert raw_sums(lab, c, PATHS) == pristine()


def test_two_rollouts_at_once_do_not_interleave(lab, fresh_container, run_module, tmp_path):
    """Two runs against one container at the same time: the host lock serialises them; one
    patches, the other then finds it patched; neither fails."""
    from concurrent.futures import ThreadPoolExecutor
    c = fresh_container()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run_module("deploy_patched_nova", args(lab, {c: ALL_PARTS}, tmp_path))[1],
                                range(2)))
    assert not any(r.get("failed") for r in results), results
    assert sorted(r["changed"] for r in results) == [False, True]
    assert raw_sums(lab, c, PATHS) == patched()


def test_different_nova_version_is_refused_and_nothing_changes(lab, fresh_container, run_module, tmp_path):
    """A second container whose Nova is not 19.3.2 (here: its conductor file is Rocky's): refused by
    checksum, naming the file, and the good container beside it is not touched either."""
    good, other = fresh_container(), fresh_container()
    wheel = Path("/var/cache/numa-repin/nova-wheels/nova-18.3.0-py2.py3-none-any.whl")
    if not wheel.exists():
        subprocess.run(["python3", "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "nova==18.3.0", "-d", str(wheel.parent)], check=True)
    rocky = tmp_path / "live_migrate.py"
    import zipfile
    with zipfile.ZipFile(wheel) as z:
        rocky.write_bytes(z.read("nova/conductor/tasks/live_migrate.py"))
    lab.engine("cp", str(rocky), "%s:%s/conductor/tasks/live_migrate.py" % (other, nova_dir(lab)))
    before = {n: raw_sums(lab, n, PATHS) for n in (good, other)}
    rc, res = run_module("deploy_patched_nova", args(lab, {good: ALL_PARTS, other: CONDUCTOR_PARTS}, tmp_path,
                                                     release="19.3.2"))
    assert res.get("failed") and not res.get("changed"), res
    assert "conductor/tasks/live_migrate.py" in res["msg"] and other in res["msg"]
    assert "nothing was changed" in res["msg"]
    assert {n: raw_sums(lab, n, PATHS) for n in (good, other)} == before
    backups = [p for p in (tmp_path / "backup").rglob("*") if p.is_file() and p.name != ".rollout.lock"]
    assert backups == [], "nothing backed up, nothing written"


def test_auto_detects_another_release_and_takes_its_patch(lab, fresh_container, run_module, tmp_path):
    """A container holding Nova 18.3.0 (package and metadata): release auto picks the Rocky patch set,
    whose pristine checksums match (check mode: Rocky itself does not import on this image's
    Python 3.7, so the health gate could not pass here)."""
    c = fresh_container()
    wheel = Path("/var/cache/numa-repin/nova-wheels/nova-18.3.0-py2.py3-none-any.whl")
    site = lab.data["containers"]["nova_site_packages"]
    import zipfile
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "rocky")
    lab.engine("exec", c, "rm", "-rf", site + "/nova", site + "/nova-19.3.2.dist-info")
    lab.engine("cp", str(tmp_path / "rocky" / "nova"), "%s:%s/nova" % (c, site))
    lab.engine("cp", str(tmp_path / "rocky" / "nova-18.3.0.dist-info"), "%s:%s/nova-18.3.0.dist-info" % (c, site))
    rc, res = run_module("deploy_patched_nova", args(lab, {c: ALL_PARTS}, tmp_path), check_mode=True)
    assert res["changed"] and not res.get("failed"), res
    assert res["release"] == "18.3.0" and res["containers"][c]["nova_version"] == "18.3.0"
    assert set(res["containers"][c]["files"].values()) == {"would patch"}


def test_failing_health_check_rolls_back(lab, custom_container, run_module, tmp_path):
    """The container's own healthcheck turns unhealthy once the patch is in: rollback, files
    byte-identical, container running and healthy again."""
    marker = nova_dir(lab) + "/numa_repin_patch.py"
    c = custom_container(["--health-cmd", "test ! -e %s" % marker, "--health-interval", "1s",
                          "--health-retries", "1", "--health-start-period", "0s"])
    before = raw_sums(lab, c, PATHS)
    rc, res = run_module("deploy_patched_nova", args(lab, {c: ALL_PARTS}, tmp_path))
    assert res.get("failed") and res.get("rolled_back") is True, res
    assert res["failed_step"] == "health gate" and "unhealthy" in res["msg"]
    assert raw_sums(lab, c, PATHS) == before
    assert running(lab, c)


def test_failing_restart_rolls_back(lab, custom_container, run_module, tmp_path):
    """The container dies when restarted with the patch (exit 3): the files are put back into the
    stopped container, it is started, and it runs byte-identical to before."""
    c = custom_container(command=["sh", "-c", "if [ -e /fail-once ]; then rm -f /fail-once; exit 3; fi; "
                                              "exec sleep infinity"])
    lab.engine("exec", c, "touch", "/fail-once")
    before = raw_sums(lab, c, PATHS)
    rc, res = run_module("deploy_patched_nova", args(lab, {c: ALL_PARTS}, tmp_path))
    assert res.get("failed") and res.get("rolled_back") is True, res
    assert "exit code 3" in res["msg"], res["msg"]
    assert raw_sums(lab, c, PATHS) == before
    assert running(lab, c)


PY27_HOME = "/root/.pyenv/versions/2.7.18"


def test_queens_on_python27_binary_layout(lab, custom_container, run_module, tmp_path):
    """A Queens-style container: Python 2.7 as /usr/bin/python, Nova 17.0.13 in the interpreter's
    site-packages (a binary image's layout), no Kolla venv. Release and path are found by asking
    that Python; bytecode is Python 2's (.pyc beside the file), stale .pyc replaced; the core runs
    there. Nova 17's dependencies are not installed, so the import gate is off (health_import)."""
    import zipfile
    wheel = Path("/var/cache/numa-repin/nova-wheels/nova-17.0.13-py2.py3-none-any.whl")
    if not wheel.exists():
        subprocess.run(["python3", "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "nova==17.0.13", "-d", str(wheel.parent)], check=True)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "queens")
    c = custom_container(image=lab.data["containers"]["base_image"])
    site = PY27_HOME + "/lib/python2.7/site-packages"
    lab.engine("exec", c, "mkdir", "-p", str(Path(PY27_HOME).parent))
    lab.engine("cp", PY27_HOME, "%s:%s" % (c, PY27_HOME))
    lab.engine("exec", c, "ln", "-sf", PY27_HOME + "/bin/python", "/usr/bin/python")
    lab.engine("cp", str(tmp_path / "queens" / "nova"), "%s:%s/nova" % (c, site))
    lab.engine("cp", str(tmp_path / "queens" / "nova-17.0.13.dist-info"), "%s:%s/nova-17.0.13.dist-info" % (c, site))
    target = site + "/nova/conductor/tasks/live_migrate.py"
    lab.engine("exec", c, "python", "-m", "py_compile", target)       # bytecode of pristine Nova
    stale = lab.engine("exec", c, "sha256sum", target + "c").stdout.split()[0]
    q = json.loads((PATCH / "17.0.13" / "manifest.json").read_text())
    rel = [f["path"] for f in q["files"]]

    a = args(lab, {c: ALL_PARTS}, tmp_path, health_import=False)
    rc, res = run_module("deploy_patched_nova", a)
    assert res["changed"] and not res.get("failed"), res
    info = res["containers"][c]
    assert (res["release"], info["python_version"], info["nova_path"]) == ("17.0.13", "2.7", site + "/nova")
    r = lab.engine("exec", c, "sha256sum", *[site + "/nova/" + p for p in rel])
    assert sorted(l.split()[0] for l in r.stdout.splitlines()) == sorted(f["patched_sha256"] for f in q["files"])
    fresh = lab.engine("exec", c, "sha256sum", target + "c").stdout.split()[0]
    assert fresh != stale, "the pristine .pyc was replaced"
    assert lab.engine("exec", c, "test", "-e", site + "/nova/numa_repin_patch.pyc", check=False).returncode == 0
    # the core, on this Python 2.7: a fitted topology becomes the XML rewrite's placement
    core = lab.engine("exec", c, "python", "-c", (
        "import imp, json; p = imp.load_source('p', '%s/nova/numa_repin_patch.py');"
        "env = lambda n, d: {'nova_object.name': n, 'nova_object.data': d};"
        "inst = env('InstanceNUMATopology', {'cells': [env('InstanceNUMACell', {'id': 1, 'cpuset': [0], 'memory': 64,"
        " 'cpu_pinning_raw': {'0': 3}, 'cpu_policy': 'dedicated'})]});"
        "print(json.dumps(p.placement_from_topology(inst)))") % site)
    assert json.loads(core.stdout)[0]["pins"] == {"0": 3}
    assert json.loads(core.stdout)[0]["host_cell"] == 1

    assert not run_module("deploy_patched_nova", a)[1]["changed"]
    rc, res = run_module("deploy_patched_nova", dict(a, state="absent"))
    assert res["changed"] and not res.get("failed"), res
    r = lab.engine("exec", c, "sha256sum", *[site + "/nova/" + p for p in rel[:-1]])
    assert sorted(l.split()[0] for l in r.stdout.splitlines()) == sorted(
        f["pristine_sha256"] for f in q["files"] if f["pristine_sha256"])
    assert lab.engine("exec", c, "sh", "-c", "ls %s/nova/ | grep numa_repin" % site, check=False).stdout == ""


def test_bad_input_fails_clearly(lab, run_module, tmp_path):
    rc, res = run_module("deploy_patched_nova", args(lab, {"no-such-container-x": ALL_PARTS}, tmp_path))
    assert res.get("failed") and "no container named no-such-container-x" in res["msg"], res
    rc, res = run_module("deploy_patched_nova", args(lab, {"nova_compute": ALL_PARTS}, tmp_path, state="gone"))
    assert res.get("failed") and "state" in res["msg"], res
    rc, res = run_module("deploy_patched_nova", args(lab, {"nova_compute": ALL_PARTS}, tmp_path, releases="x"))
    assert res.get("failed") and "releases" in res["msg"], res
    rc, res = run_module("deploy_patched_nova", dict(args(lab, {"nova_compute": ALL_PARTS}, tmp_path),
                                                     patch_dir=str(tmp_path / "none")))
    assert res.get("failed") and "no patch for Nova 19.3.2" in res["msg"], res
    assert "Traceback" not in json.dumps(res) and "panicked" not in json.dumps(res)


def report_dir(out):
    """The report directory the audit printed (report.yml's last message)."""
    import re
    m = re.findall(r"(/\S+)/patch-test\.html", out)
    assert m, out[-3000:]
    return m[-1]


def recap(out):
    """{host: {'changed': n, 'failed': n}} from ansible-playbook's PLAY RECAP."""
    got = {}
    for line in out.split("PLAY RECAP")[-1].splitlines():
        if ":" in line and "ok=" in line:
            host, rest = line.split(":", 1)
            kv = dict(x.split("=") for x in rest.split())
            got[host.strip()] = {"changed": int(kv["changed"]), "failed": int(kv["failed"])}
    return got


def test_playbook_rolls_into_the_lab_containers_and_back(lab, ansible_playbook):
    """deploy_nova_patch.yml on the lab inventory: nova_compute (cmp1) and nova_conductor (control);
    check mode changes nothing; rerun unchanged; the audit reports patched; the rollback playbook
    restores sha256-identical files."""
    r = ansible_playbook(REPO / "playbooks" / "rollback_nova_patch.yml")     # start from pristine
    assert r.returncode == 0, r.stdout[-3000:]
    assert raw_sums(lab, "nova_conductor", PATHS) == pristine() and raw_sums(lab, "nova_compute", PATHS) == pristine()

    r = ansible_playbook(REPO / "playbooks" / "deploy_nova_patch.yml", check=True, diff=True)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "+from nova import numa_repin_patch" in r.stdout
    assert raw_sums(lab, "nova_conductor", PATHS) == pristine() and raw_sums(lab, "nova_compute", PATHS) == pristine()

    r = ansible_playbook(REPO / "playbooks" / "deploy_nova_patch.yml")
    assert r.returncode == 0, r.stdout[-3000:]
    rc = recap(r.stdout)
    assert rc["cmp1"]["changed"] >= 1 and rc["control01"]["changed"] >= 1 and rc["cmp2"]["changed"] == 0, rc
    # compute first, conductor last
    assert r.stdout.index("nova_compute") < r.stdout.index("nova_conductor")
    assert raw_sums(lab, "nova_conductor", PATHS) == dict(pristine(), **patched(CONDUCTOR_PARTS))
    assert raw_sums(lab, "nova_compute", PATHS) == dict(pristine(), **patched(COMPUTE_PARTS))
    assert running(lab, "nova_conductor") and running(lab, "nova_compute")

    r = ansible_playbook(REPO / "playbooks" / "deploy_nova_patch.yml")
    assert r.returncode == 0 and all(v["changed"] == 0 for v in recap(r.stdout).values()), r.stdout[-3000:]

    r = ansible_playbook(REPO / "playbooks" / "numa_audit.yml", extra_vars={"numa_audit_report_name": "patch-test", "numa_repin_allow_leftovers": True})
    assert r.returncode == 0, r.stdout[-3000:]
    assert "cmp1 nova_compute: patched (Nova 19.3.2)" in r.stdout
    assert "control01 nova_conductor: patched (Nova 19.3.2)" in r.stdout
    assert all(v["changed"] == 0 for v in recap(r.stdout).values())
    html = Path(report_dir(r.stdout), "patch-test.html").read_text()
    assert "Nova patch status" in html and "nova_conductor" in html and ">patched<" in html

    r = ansible_playbook(REPO / "playbooks" / "rollback_nova_patch.yml", check=True, diff=True)
    assert r.returncode == 0 and "-from nova import numa_repin_patch" in r.stdout, r.stdout[-3000:]
    assert raw_sums(lab, "nova_compute", PATHS) == dict(pristine(), **patched(COMPUTE_PARTS)), "check changed nothing"

    r = ansible_playbook(REPO / "playbooks" / "rollback_nova_patch.yml")
    assert r.returncode == 0, r.stdout[-3000:]
    assert raw_sums(lab, "nova_conductor", PATHS) == pristine() and raw_sums(lab, "nova_compute", PATHS) == pristine()
    assert running(lab, "nova_conductor") and running(lab, "nova_compute")
    r = ansible_playbook(REPO / "playbooks" / "numa_audit.yml", extra_vars={"numa_audit_report_name": "patch-test", "numa_repin_allow_leftovers": True})
    assert "cmp1 nova_compute: unpatched (Nova 19.3.2)" in r.stdout, r.stdout[-3000:]
