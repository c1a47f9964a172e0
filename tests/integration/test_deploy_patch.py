"""deploy_patched_nova (the hooks and core built into it, no patch_dir) and
playbooks/deploy_nova_patch.yml in the lab's real containers (docker, Kolla venv layout, Nova
19.3.2): apply, rerun, absent, status and hooks in the report, absent from the in-container copy,
an older build of the patch updated, hand edits refused, two rollouts at once, builds whose code
under an anchor differs refused by hook name (one hook, and a hook none of whose variants
matches), another release (Rocky) hooked with its own variants, injected failing health check and
failing restart with automatic rollback, Queens on Python 2.7, bad input, the playbooks.
The expected sha256 of every file is nova_hooks.py's independent reading of hooks.toml applied to
the release's PyPI wheel (the lab image's Nova is that wheel's, checked below)."""
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import nova_hooks
from lablib import backup_files, rollout_args

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "nova_patch"
RELEASE = "19.3.2"
EXPECTED = nova_hooks.expected(RELEASE)
CONDUCTOR_PARTS = ["conductor/", "db/", "numa_repin_patch.py"]
COMPUTE_PARTS = ["compute/", "virt/", "numa_repin_patch.py"]
ALL_PARTS = CONDUCTOR_PARTS + COMPUTE_PARTS


def raw_sums(lab, name, paths):
    """sha256sum inside the container (bytes exact), for the byte-identical checks."""
    r = lab.engine("exec", name, "sha256sum", *[lab.nova_dir() + "/" + p for p in paths], check=False)
    got = {}
    for line in r.stdout.splitlines():
        digest, path = line.split(None, 1)
        got[path[len(lab.nova_dir()) + 1:]] = digest
    return {p: got.get(p) for p in paths}


def in_parts(path, parts):
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in parts)


def pristine(parts=ALL_PARTS, expected=EXPECTED):
    """{path: the wheel's sha256, None for the core} of the files the parts select."""
    return {p: e[0] for p, e in expected.items() if in_parts(p, parts)}


def patched(parts=ALL_PARTS, expected=EXPECTED):
    return {p: e[1] for p, e in expected.items() if in_parts(p, parts)}


PATHS = nova_hooks.paths()
CORE = "numa_repin_patch.py"


def wheel_texts(release):
    with zipfile.ZipFile(nova_hooks.wheel(release)) as z:
        return {p: z.read("nova/" + p).decode("utf-8") for p in nova_hooks.hooks()}


def test_the_image_holds_the_wheels_files(lab):
    """The premise of every expected sum here: a fresh container of the lab image holds the 19.3.2
    wheel's files byte for byte, and no core."""
    c = lab.data["containers"]
    r = subprocess.run([c["engine"], "run", "--rm", c["nova_image"], "sh", "-c",
                        "cd %s && sha256sum %s; test ! -e %s" % (lab.nova_dir(), " ".join(PATHS[:-1]), CORE)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = {line.split()[1]: line.split()[0] for line in r.stdout.splitlines()}
    assert got == {p: EXPECTED[p][0] for p in PATHS[:-1]}
    assert EXPECTED[CORE] == (None, hashlib.sha256((ROLE / "src" / CORE).read_bytes()).hexdigest())


def test_apply_rerun_absent_on_a_fresh_container(lab, fresh_container, run_module, tmp_path):
    c = fresh_container()
    assert raw_sums(lab, c, PATHS) == pristine()
    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup",
                                                             containers={c: ALL_PARTS}), check_mode=True, diff=True)
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert res["containers"][c]["files"] == {p: "would patch" for p in PATHS}, res
    assert res["containers"][c]["status"] == "unpatched"
    diff = "".join(d.get("prepared", "") for d in res["diff"])
    assert "+from nova import numa_repin_patch" in diff and "+        numa_repin_patch.check_destination(" in diff
    assert raw_sums(lab, c, PATHS) == pristine(), "check mode changed nothing"

    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup", containers={c: ALL_PARTS}))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    info = res["containers"][c]
    assert res["release"] == RELEASE and info["restarted"] and info["release"] == RELEASE
    assert info["nova_path"] == lab.nova_dir()
    assert info["files"] == {p: "patched" for p in PATHS} and info["status"] == "patched", info
    texts, hooks = wheel_texts(RELEASE), nova_hooks.hooks()
    assert info["hooks"] == {p: nova_hooks.used(texts[p], hooks[p]) for p in hooks}, info["hooks"]
    assert any("refusal present" in h for h in info["hooks"]["conductor/tasks/live_migrate.py"])
    assert raw_sums(lab, c, PATHS) == patched()
    assert lab.container_running(c)
    written = json.loads((tmp_path / "backup" / c / RELEASE / "written.json").read_text())
    assert written == {p: {"original_sha256": EXPECTED[p][0], "patched_sha256": EXPECTED[p][1]} for p in PATHS}
    # the patched modules import with the container's own Python
    imp = lab.engine("exec", c, lab.data["containers"]["nova_python"], "-c",
                     "import nova.numa_repin_patch, nova.conductor.tasks.live_migrate, nova.compute.manager, "
                     "nova.compute.resource_tracker, nova.virt.libvirt.driver; print('ok')", check=False)
    assert imp.returncode == 0 and "ok" in imp.stdout, imp.stderr[-1500:]
    # fresh bytecode of the patched file, none stale
    pyc = lab.engine("exec", c, "sh", "-c", "ls %s/conductor/tasks/__pycache__/ | grep live_migrate" % lab.nova_dir())
    assert "live_migrate.cpython-37.pyc" in pyc.stdout

    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup", containers={c: ALL_PARTS}))
    assert rc == 0 and not res["changed"] and not res.get("failed"), res
    assert res["containers"][c]["status"] == "patched"

    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup",
                                                             containers={c: ALL_PARTS}, state="absent"), diff=True)
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert "-from nova import numa_repin_patch" in "".join(d.get("prepared", "") for d in res["diff"])
    assert res["containers"][c]["files"] == {p: "unpatched" for p in PATHS}
    assert res["containers"][c]["status"] == "unpatched"
    assert raw_sums(lab, c, PATHS) == pristine(), "sha256-identical pristine files, new file gone"
    assert lab.patch_leftovers(c) == []
    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup",
                                                             containers={c: ALL_PARTS}, state="absent"))
    assert rc == 0 and not res["changed"] and not res.get("failed"), res


def test_absent_restores_from_the_container_copy_when_the_host_backup_is_gone(lab, fresh_container, run_module,
                                                                             tmp_path):
    c = fresh_container()
    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup",
                                                             containers={c: CONDUCTOR_PARTS}, restart=False))
    assert res["changed"] and "not restarted" in res["msg"], res
    assert raw_sums(lab, c, PATHS) == dict(pristine(), **patched(CONDUCTOR_PARTS))
    subprocess.run(["rm", "-rf", str(tmp_path / "backup")], check=True)
    # recognised as ours from the in-container original alone
    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup",
                                                             containers={c: CONDUCTOR_PARTS}), check_mode=True)
    assert rc == 0 and res["changed"] is False and res["containers"][c]["status"] == "patched", res
    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup",
                                                             containers={c: CONDUCTOR_PARTS}, state="absent"))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert raw_sums(lab, c, PATHS) == pristine()
    assert lab.patch_leftovers(c) == []


def test_a_hooked_file_without_any_original_left_is_refused(lab, fresh_container, run_module, tmp_path):
    """Patched, then both originals lost (host backup and in-container copy): the file carries
    our hooks but nothing proves it is ours nor restores it: refused, nothing changes."""
    c = fresh_container()
    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup",
                                                             containers={c: CONDUCTOR_PARTS}, restart=False))
    assert rc == 0 and res["changed"], res
    subprocess.run(["rm", "-rf", str(tmp_path / "backup")], check=True)
    lab.engine("exec", c, "rm", lab.nova_dir() + "/conductor/tasks/live_migrate.py.numa-repin.orig")
    before = raw_sums(lab, c, PATHS)
    for state in ("present", "absent"):
        rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup",
                                                                 containers={c: CONDUCTOR_PARTS}, state=state))
        assert rc != 0 and res.get("failed") and res["changed"] is False, res
        assert "conductor/tasks/live_migrate.py holds numa-repin hooks, but no original is kept" in res["msg"], res
        assert "reinstall" in res["msg"] and res["containers"][c]["status"].startswith("refused ("), res
        assert raw_sums(lab, c, PATHS) == before


def test_an_earlier_patch_build_is_updated_and_a_local_edit_refused(lab, fresh_container, run_module, tmp_path):
    """A container patched with an earlier build of the patch (a patch_dir whose hooks.toml inserts
    one more comment line, and whose core differs; recorded when written) takes the built-in build
    ("would update", "patched by an older build"); the pristine backup stays the original; a local
    edit of the core or of a hooked file is refused."""
    old = tmp_path / "old"
    (old / "src").mkdir(parents=True)
    hooks_text = (ROLE / "hooks.toml").read_text()
    imp = "after = '''\nfrom nova import numa_repin_patch\n'''"
    assert hooks_text.count(imp) >= 1
    old_text = hooks_text.replace(imp, "after = '''\nfrom nova import numa_repin_patch\n# numa-repin: an older build\n'''",
                                  1)
    (old / "hooks.toml").write_text(old_text)
    old_groups = nova_hooks.groups(old_text)
    assert old_groups["conductor/tasks/live_migrate.py"] != nova_hooks.hooks()["conductor/tasks/live_migrate.py"]
    old_core = (ROLE / "src" / CORE).read_bytes() + b"# an earlier build\n"
    (old / "src" / CORE).write_bytes(old_core)
    texts = wheel_texts(RELEASE)
    old_sums = {p: hashlib.sha256(nova_hooks.apply(texts[p], old_groups[p]).encode()).hexdigest() for p in old_groups}
    old_sums[CORE] = hashlib.sha256(old_core).hexdigest()
    assert old_sums["conductor/tasks/live_migrate.py"] != EXPECTED["conductor/tasks/live_migrate.py"][1]
    assert {p: old_sums[p] for p in PATHS[1:-1]} == {p: EXPECTED[p][1] for p in PATHS[1:-1]}, "only one file differs"

    c = fresh_container()
    rc, res = run_module("deploy_patched_nova", dict(rollout_args(tmp_path / "backup",
                                                                  containers={c: ALL_PARTS}), patch_dir=str(old),
                                                     restart=False))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert raw_sums(lab, c, PATHS) == old_sums

    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup",
                                                             containers={c: ALL_PARTS}, restart=False), check_mode=True)
    assert rc == 0 and res["changed"], res
    assert res["containers"][c]["files"] == dict({p: "patched" for p in PATHS}, **{
        "conductor/tasks/live_migrate.py": "would update", CORE: "would update"}), res
    assert res["containers"][c]["status"] == "patched by an older build"
    assert raw_sums(lab, c, PATHS) == old_sums, "check mode changed nothing"
    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup", containers={c: ALL_PARTS}))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert res["containers"][c]["status"] == "patched"
    assert raw_sums(lab, c, PATHS) == patched()
    backup = tmp_path / "backup" / c / RELEASE
    for p in PATHS[:-1]:
        assert hashlib.sha256((backup / "nova" / p).read_bytes()).hexdigest() == EXPECTED[p][0], p
    written = json.loads((backup / "written.json").read_text())
    assert written == {p: {"original_sha256": EXPECTED[p][0], "patched_sha256": EXPECTED[p][1]} for p in PATHS}

    for rel, why in ((CORE, "numa_repin_patch.py is not the numa-repin core"),
                     ("conductor/tasks/live_migrate.py", "live_migrate.py holds numa-repin hooks that neither")):
        lab.engine("exec", c, "sh", "-c", "echo '# local' >> %s/%s" % (lab.nova_dir(), rel))
        before = raw_sums(lab, c, PATHS)
        rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup", containers={c: ALL_PARTS}))
        assert rc != 0 and res.get("failed") and why in res["msg"] and c in res["msg"], res
        assert res["containers"][c]["status"].startswith("refused (") and len(res["refused"]) == 1, res
        assert raw_sums(lab, c, PATHS) == before
        lab.engine("exec", c, "sh", "-c", "sed -i '$d' %s/%s" % (lab.nova_dir(), rel))
    assert raw_sums(lab, c, PATHS) == patched()

    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup",
                                                             containers={c: ALL_PARTS}, state="absent"))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert raw_sums(lab, c, PATHS) == pristine()


def test_two_rollouts_at_once_do_not_interleave(lab, fresh_container, run_module, tmp_path):
    """Two runs against one container at the same time: the host lock serialises them; one
    patches, the other then finds it patched; neither fails."""
    from concurrent.futures import ThreadPoolExecutor
    c = fresh_container()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run_module("deploy_patched_nova", rollout_args(tmp_path / "backup",
                                                                                         containers={c: ALL_PARTS}))[1],
                                range(2)))
    assert not any(r.get("failed") for r in results), results
    assert sorted(r["changed"] for r in results) == [False, True]
    assert raw_sums(lab, c, PATHS) == patched()


def test_changed_code_under_an_anchor_is_refused_and_nothing_changes(lab, fresh_container, run_module, tmp_path):
    """Two containers whose conductor file differs from any build the hooks know, one under a
    single-variant hook's anchor, one under both variants of a hook (the refusal's `if` rewritten
    while the refusal is still there): refused by hook name, and the good container beside them
    is not touched either."""
    good, one, both = fresh_container(), fresh_container(), fresh_container()
    lm = lab.nova_dir() + "/conductor/tasks/live_migrate.py"
    lab.engine("exec", one, "sed", "-i", "s/^        return source_info, destination_info$/"
               "        return (source_info, destination_info)/", lm)
    lab.engine("exec", both, "sed", "-i", "s/^        if not self.instance.numa_topology:$/"
               "        if self.instance.numa_topology is None:/", lm)
    before = {n: raw_sums(lab, n, PATHS) for n in (good, one, both)}
    assert before[good] == pristine() and before[one] != pristine() and before[both] != pristine(), "the seds took"
    starts = {n: lab.engine("inspect", "-f", "{{.State.StartedAt}}", n).stdout for n in before}
    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup",
                                                             containers={good: ALL_PARTS, one: CONDUCTOR_PARTS,
                                                           both: CONDUCTOR_PARTS}))
    assert rc != 0 and res.get("failed") and not res.get("changed"), res
    msg = res["msg"]
    assert "nothing was changed" in msg and good not in msg, msg
    check = "check the destination with Nova's own NUMA fit"
    refusal = "let pinned instances past Nova's NUMA refusal"
    assert 'unsupported: %s:%s (Nova %s): hook "%s" does not match: anchor' % (one, lm, RELEASE, check) in msg, msg
    assert 'unsupported: %s:%s (Nova %s): hook "%s" does not match: no variant matches' % (
        both, lm, RELEASE, refusal) in msg, msg
    assert '"def _check_instance_has_no_numa(" occurs' in msg, msg
    assert len(res["refused"]) == 2, res["refused"]
    assert res["containers"][one]["status"] == 'unsupported (conductor/tasks/live_migrate.py: hook "%s")' % check
    assert res["containers"][both]["status"] == 'unsupported (conductor/tasks/live_migrate.py: hook "%s")' % refusal
    assert res["containers"][good]["status"] == "unpatched"
    assert {n: raw_sums(lab, n, PATHS) for n in before} == before
    assert {n: lab.engine("inspect", "-f", "{{.State.StartedAt}}", n).stdout for n in before} == starts
    assert backup_files(tmp_path / "backup") == [], "nothing backed up, nothing written"
    assert all(lab.patch_leftovers(n) == [] for n in before)


def test_another_release_is_hooked_with_its_own_variants(lab, fresh_container, run_module, tmp_path):
    """A container holding Nova 18.3.0 (package and metadata): release auto reports Rocky, the
    hooks apply to Rocky's files with Rocky's variants, giving nova_hooks' sums for 18.3.0; absent
    restores Rocky byte-identical. (Rocky does not import on this image's Python 3.7: the import
    gate is off, the gate is the container running.)"""
    rocky = "18.3.0"
    exp = nova_hooks.expected(rocky)
    assert {p: e[0] for p, e in exp.items()} != pristine(), "Rocky's files differ from Stein's"
    c = fresh_container()
    site = lab.data["containers"]["nova_site_packages"]
    nova_hooks.extract(rocky, tmp_path / "rocky")
    lab.engine("exec", c, "rm", "-rf", site + "/nova", site + "/nova-19.3.2.dist-info")
    lab.engine("cp", str(tmp_path / "rocky" / "nova"), "%s:%s/nova" % (c, site))
    lab.engine("cp", str(tmp_path / "rocky" / "nova-18.3.0.dist-info"), "%s:%s/nova-18.3.0.dist-info" % (c, site))
    assert raw_sums(lab, c, PATHS) == pristine(expected=exp)
    a = rollout_args(tmp_path / "backup", containers={c: ALL_PARTS}, health_import=False)
    rc, res = run_module("deploy_patched_nova", a, check_mode=True)
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert res["release"] == rocky and res["containers"][c]["nova_version"] == rocky
    assert res["containers"][c]["files"] == {p: "would patch" for p in PATHS}
    texts, hooks = wheel_texts(rocky), nova_hooks.hooks()
    assert res["containers"][c]["hooks"] == {p: nova_hooks.used(texts[p], hooks[p]) for p in hooks}
    assert "rewrite the migration XML with the claimed pins: with get_vif_config (18.x, 19.x)" in \
        res["containers"][c]["hooks"]["virt/libvirt/driver.py"]
    rc, res = run_module("deploy_patched_nova", a)
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert raw_sums(lab, c, PATHS) == patched(expected=exp)
    assert (tmp_path / "backup" / c / rocky / "written.json").exists(), "backups filed under the release"
    rc, res = run_module("deploy_patched_nova", dict(a, state="absent"))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert raw_sums(lab, c, PATHS) == pristine(expected=exp)


def test_failing_health_check_rolls_back(lab, custom_container, run_module, tmp_path):
    """The container's own healthcheck turns unhealthy once the patch is in: rollback, files
    byte-identical, container running and healthy again."""
    marker = lab.nova_dir() + "/numa_repin_patch.py"
    c = custom_container(["--health-cmd", "test ! -e %s" % marker, "--health-interval", "1s",
                          "--health-retries", "1", "--health-start-period", "0s"])
    before = raw_sums(lab, c, PATHS)
    assert before == pristine()
    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup", containers={c: ALL_PARTS}))
    assert res.get("failed") and res.get("rolled_back") is True, res
    assert res["failed_step"] == "health gate" and "unhealthy" in res["msg"]
    assert raw_sums(lab, c, PATHS) == before
    assert lab.container_running(c)
    import time
    deadline = time.time() + 30
    while lab.engine("inspect", "-f", "{{.State.Health.Status}}", c).stdout.strip() != "healthy":
        assert time.time() < deadline, "healthy again after the rollback"
        time.sleep(1)


def test_failing_restart_rolls_back(lab, custom_container, run_module, tmp_path):
    """The container dies when restarted with the patch (exit 3): the files are put back into the
    stopped container, it is started, and it runs byte-identical to before."""
    c = custom_container(command=["sh", "-c", "if [ -e /fail-once ]; then rm -f /fail-once; exit 3; fi; "
                                              "exec sleep infinity"])
    lab.engine("exec", c, "touch", "/fail-once")
    before = raw_sums(lab, c, PATHS)
    assert before == pristine()
    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup", containers={c: ALL_PARTS}))
    assert res.get("failed") and res.get("rolled_back") is True, res
    assert "exit code 3" in res["msg"], res["msg"]
    assert raw_sums(lab, c, PATHS) == before
    assert lab.container_running(c)


PY27_HOME = "/root/.pyenv/versions/2.7.18"


def test_queens_on_python27_binary_layout(lab, custom_container, run_module, tmp_path):
    """A Queens-style container: Python 2.7 as /usr/bin/python, Nova 17.0.13 in the interpreter's
    site-packages (a binary image's layout), no Kolla venv. Release and path are found by asking
    that Python; the hooks apply to Queens' files (its own variants); bytecode is Python 2's (.pyc
    beside the file), stale .pyc replaced; the core runs there. Nova 17's dependencies are not
    installed, so the import gate is off (health_import)."""
    queens = "17.0.13"
    exp = nova_hooks.expected(queens)
    nova_hooks.extract(queens, tmp_path / "queens")
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

    def sums():
        r = lab.engine("exec", c, "sh", "-c", "cd %s/nova && sha256sum %s 2>/dev/null; true" % (site, " ".join(PATHS)))
        got = {line.split()[1]: line.split()[0] for line in r.stdout.splitlines()}
        return {p: got.get(p) for p in PATHS}

    assert sums() == {p: e[0] for p, e in exp.items()}
    a = rollout_args(tmp_path / "backup", containers={c: ALL_PARTS}, health_import=False)
    rc, res = run_module("deploy_patched_nova", a)
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    info = res["containers"][c]
    assert (res["release"], info["python_version"], info["nova_path"]) == (queens, "2.7", site + "/nova")
    texts, hooks = wheel_texts(queens), nova_hooks.hooks()
    assert info["hooks"] == {p: nova_hooks.used(texts[p], hooks[p]) for p in hooks}, info["hooks"]
    assert "rewrite the migration XML with the claimed pins: without get_vif_config (17.x)" in \
        info["hooks"]["virt/libvirt/driver.py"]
    assert sums() == {p: e[1] for p, e in exp.items()}
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
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert sums() == {p: e[0] for p, e in exp.items()}
    assert lab.engine("exec", c, "sh", "-c", "ls %s/nova/ | grep numa_repin" % site, check=False).stdout == ""


def test_bad_input_fails_clearly(lab, run_module, tmp_path):
    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup",
                                                             containers={"no-such-container-x": ALL_PARTS}))
    assert res.get("failed") and "no container named no-such-container-x" in res["msg"], res
    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup",
                                                             containers={"nova_compute": ALL_PARTS}, state="gone"))
    assert res.get("failed") and "state" in res["msg"], res
    rc, res = run_module("deploy_patched_nova", rollout_args(tmp_path / "backup",
                                                             containers={"nova_compute": ALL_PARTS}, releases="x"))
    assert res.get("failed") and "releases" in res["msg"], res
    before = raw_sums(lab, "nova_compute", PATHS)
    rc, res = run_module("deploy_patched_nova", dict(rollout_args(tmp_path / "backup",
                                                                  containers={"nova_compute": ALL_PARTS}),
                                                     patch_dir=str(tmp_path / "none")))
    assert res.get("failed") and "cannot read %s" % (tmp_path / "none" / "hooks.toml") in res["msg"], res
    assert "Traceback" not in json.dumps(res) and "panicked" not in json.dumps(res)
    assert raw_sums(lab, "nova_compute", PATHS) == before


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
    assert lab.container_running("nova_conductor") and lab.container_running("nova_compute")

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
    assert lab.container_running("nova_conductor") and lab.container_running("nova_compute")
    r = ansible_playbook(REPO / "playbooks" / "numa_audit.yml", extra_vars={"numa_audit_report_name": "patch-test", "numa_repin_allow_leftovers": True})
    assert "cmp1 nova_compute: unpatched (Nova 19.3.2)" in r.stdout, r.stdout[-3000:]
