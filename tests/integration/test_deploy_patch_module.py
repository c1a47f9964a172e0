"""deploy_patched_nova with a synthetic patch (`patch_dir`: a hooks.toml with one import hook into
two Nova files, and a small core added as nova/numa_repin_patch.py), applied in place to the lab
image's own files in fresh containers only; the expected bytes are computed here from the image's
bytes (one str.replace). Covered: check/diff, apply, rerun, absent byte-identical, the host and
in-container backups and written.json, bytecode, the hooked import working, status and hooks in
the report, parts per container, a file whose anchor code was changed refused by hook name with
nothing changed in any container, a file with an unrelated local edit still patched (and restored
to that edit), the health gate and restart failures with rollback of every touched container, a
broken hooks.toml and a patch_dir without one, unknown containers, malformed arguments, --schema;
and the real patch built into the module (roles/nova_patch/hooks.toml and src/numa_repin_patch.py,
expected sums from nova_hooks.py) in a conductor and a compute container with their own parts.

test_deploy_patch.py covers the built-in patch in depth (other releases, Queens on 2.7, an older
build updated, concurrency, playbooks)."""
import hashlib
import json
import struct
import subprocess
import uuid as uuidlib
import zipfile
from pathlib import Path

import pytest

import nova_hooks
from lablib import backup_files, rollout_args

REPO = Path(__file__).resolve().parents[2]
MODULE = "deploy_patched_nova"
RELEASE = "19.3.2"
EDITED = ["conductor/tasks/live_migrate.py", "compute/manager.py"]
NEW = "numa_repin_patch.py"
FILES = EDITED + [NEW]
ANCHOR = "from nova import objects\n"
AFTER = "from nova import numa_repin_patch  # numa-repin synthetic patch\n"
NEW_BODY = b"# numa-repin synthetic new module\nVALUE = 42\n"
ALL_PARTS = ["conductor/", "compute/", NEW]
HOOKS_TOML = "".join('''
[[hook]]
file = "%s"
name = "import"
anchor = \'\'\'
%s\'\'\'
after = \'\'\'
%s\'\'\'
''' % (rel, ANCHOR, AFTER) for rel in EDITED)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def hook(data):
    """What the synthetic patch makes of a file's bytes: AFTER once after the anchor."""
    text = data.decode("utf-8")
    assert text.count(ANCHOR) == 1, "the synthetic anchor must occur once in the image's file"
    return text.replace(ANCHOR, ANCHOR + AFTER, 1).encode("utf-8")


def sums(lab, name, paths=FILES):
    """{path: sha256 or None when absent}, read inside the container."""
    got = {}
    for p in paths:
        r = lab.engine("exec", name, "sha256sum", lab.nova_dir() + "/" + p, check=False)
        got[p] = r.stdout.split()[0] if r.returncode == 0 else None
    return got


def read(lab, name, rel):
    return subprocess.run([lab.data["containers"]["engine"], "exec", name, "cat", lab.nova_dir() + "/" + rel],
                          capture_output=True, check=True, timeout=120).stdout


def started_at(lab, name):
    return lab.engine("inspect", "-f", "{{.State.StartedAt}}", name).stdout.strip()


def write_patch_dir(root, hooks_toml=HOOKS_TOML, core=NEW_BODY):
    """<root>/hooks.toml and <root>/src/numa_repin_patch.py, the layout of roles/nova_patch."""
    (root / "src").mkdir(parents=True, exist_ok=True)
    if hooks_toml is not None:
        (root / "hooks.toml").write_text(hooks_toml)
    (root / "src" / NEW).write_bytes(core)
    return root


@pytest.fixture(scope="module")
def pristine_bytes(lab):
    """The image's own bytes of the edited files."""
    c = lab.data["containers"]
    out = {}
    for rel in EDITED:
        r = subprocess.run([c["engine"], "run", "--rm", c["nova_image"], "cat", lab.nova_dir() + "/" + rel],
                           capture_output=True, check=True, timeout=120)
        out[rel] = r.stdout
    assert all(len(v) > 1000 for v in out.values())
    return out


@pytest.fixture
def patch_set(tmp_path, pristine_bytes):
    """(patch_dir, {path: pristine sha256 or None}, {path: patched sha256}, {path: patched bytes})."""
    root = write_patch_dir(tmp_path / "patch")
    patched_bytes = {rel: hook(pristine_bytes[rel]) for rel in EDITED}
    patched_bytes[NEW] = NEW_BODY
    pristine = {rel: sha(pristine_bytes[rel]) for rel in EDITED}
    pristine[NEW] = None
    patched = {p: sha(b) for p, b in patched_bytes.items()}
    return root, pristine, patched, patched_bytes


def test_check_diff_apply_rerun_absent(lab, fresh_container, run_module, tmp_path, patch_set):
    root, pristine, patched, patched_bytes = patch_set
    c = fresh_container()
    assert sums(lab, c) == pristine

    # check mode + diff: lists every file, shows the change, changes nothing
    t0 = started_at(lab, c)
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root,
                                              containers={c: ALL_PARTS}), check_mode=True, diff=True)
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    info = res["containers"][c]
    assert info["files"] == {p: "would patch" for p in FILES}, res
    assert info["status"] == "unpatched" and info["hooks"] == {p: ["import"] for p in EDITED}, info
    assert all(p in res["msg"] for p in FILES), res["msg"]
    text = "".join(d.get("prepared", "") for d in res["diff"])
    assert "+" + AFTER in text and "+VALUE = 42" in text, res["diff"]
    assert " " + ANCHOR in text, "the hook's text follows its anchor"
    assert "live_migrate.py" in text and "manager.py" in text
    assert sums(lab, c) == pristine and started_at(lab, c) == t0, "check mode changed nothing"
    assert not (tmp_path / "backup" / c).exists(), "check mode wrote no backup"

    # apply
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root, containers={c: ALL_PARTS}))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert res["release"] == RELEASE and res["engine"] == "docker"
    info = res["containers"][c]
    assert info["nova_path"] == lab.nova_dir() and info["python"] == lab.data["containers"]["nova_python"]
    assert info["restarted"] is True and info["files"] == {p: "patched" for p in FILES}
    assert info["status"] == "patched" and info["hooks"] == {p: ["import"] for p in EDITED}, info
    assert sums(lab, c) == patched
    assert lab.container_running(c) and started_at(lab, c) != t0, "restarted"
    # host backup: the pristine bytes, per container and release; none for the new file
    bdir = tmp_path / "backup" / c / RELEASE / "nova"
    for rel in EDITED:
        assert sha((bdir / rel).read_bytes()) == pristine[rel], rel
    assert not (bdir / NEW).exists()
    written = json.loads((tmp_path / "backup" / c / RELEASE / "written.json").read_text())
    assert written == {p: {"original_sha256": pristine[p], "patched_sha256": patched[p]} for p in FILES}, written
    # in-container backup next to each edited file, none for the new file
    assert sorted(lab.patch_leftovers(c)) == sorted(lab.nova_dir() + "/" + p + ".numa-repin.orig" for p in EDITED)
    # fresh bytecode of the patched file (the .pyc records the source size: the patched one)
    raw = subprocess.run(["docker", "exec", c, "cat",
                          lab.nova_dir() + "/conductor/tasks/__pycache__/live_migrate.cpython-37.pyc"],
                         capture_output=True, check=True).stdout
    size = struct.unpack("<I", raw[12:16])[0]
    assert size == len(patched_bytes["conductor/tasks/live_migrate.py"]) != len(
        patched_bytes["conductor/tasks/live_migrate.py"].replace(AFTER.encode(), b""))
    # the patched modules import with the container's Python, and the hooked import is live
    imp = lab.engine("exec", c, lab.data["containers"]["nova_python"], "-c",
                     "import nova.numa_repin_patch as m, nova.conductor.tasks.live_migrate as l, "
                     "nova.compute.manager as k; print(m.VALUE, l.numa_repin_patch.VALUE, k.numa_repin_patch is m)",
                     check=False)
    assert imp.stdout.strip() == "42 42 True", imp.stderr[-800:]

    # rerun: nothing to do, no restart
    t1 = started_at(lab, c)
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root, containers={c: ALL_PARTS}))
    assert rc == 0 and res["changed"] is False and not res.get("failed"), res
    assert res["containers"][c]["files"] == {p: "patched" for p in FILES}
    assert res["containers"][c]["status"] == "patched"
    assert "already patched" in res["msg"], res["msg"]
    assert started_at(lab, c) == t1

    # absent, check mode first
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root,
                                              containers={c: ALL_PARTS}, state="absent"), check_mode=True, diff=True)
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert res["containers"][c]["files"] == {EDITED[0]: "would restore", EDITED[1]: "would restore",
                                             NEW: "would remove"}, res
    assert res["containers"][c]["status"] == "patched", "status: what the container holds now"
    assert "-" + AFTER in "".join(d.get("prepared", "") for d in res["diff"])
    assert sums(lab, c) == patched
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root,
                                              containers={c: ALL_PARTS}, state="absent"))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert "unpatched" in res["msg"] and "pristine" not in res["msg"], res["msg"]
    assert res["containers"][c]["files"] == {p: "unpatched" for p in FILES}
    assert res["containers"][c]["status"] == "unpatched"
    assert sums(lab, c) == pristine, "sha256-identical pristine, new file gone"
    assert lab.patch_leftovers(c) == []
    assert not (tmp_path / "backup" / c / RELEASE / "written.json").exists()
    gone = lab.engine("exec", c, "sh", "-c", "ls %s/__pycache__ | grep numa_repin_patch" % lab.nova_dir(), check=False)
    assert gone.stdout.strip() == "", "bytecode of the removed file cleared"
    assert lab.container_running(c)
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root,
                                              containers={c: ALL_PARTS}, state="absent"))
    assert rc == 0 and res["changed"] is False and not res.get("failed"), res
    assert res["containers"][c]["files"] == {p: "unpatched" for p in FILES}
    assert "already unpatched" in res["msg"], res["msg"]


def test_parts_select_files_per_container(lab, fresh_container, run_module, tmp_path, patch_set):
    """A file goes only where a prefix matches; a prefix equal to a file path names that file."""
    root, pristine, patched, _ = patch_set
    a, b = fresh_container(), fresh_container()
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root,
                                              containers={a: ["conductor/", NEW], b: ["compute/manager.py", NEW]},
                                      restart=False))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert set(res["containers"][a]["files"]) == {"conductor/tasks/live_migrate.py", NEW}
    assert set(res["containers"][b]["files"]) == {"compute/manager.py", NEW}
    assert res["containers"][a]["hooks"] == {"conductor/tasks/live_migrate.py": ["import"]}
    assert res["containers"][b]["hooks"] == {"compute/manager.py": ["import"]}
    assert res["containers"][a]["restarted"] is False
    assert sums(lab, a) == dict(pristine, **{EDITED[0]: patched[EDITED[0]], NEW: patched[NEW]})
    assert sums(lab, b) == dict(pristine, **{EDITED[1]: patched[EDITED[1]], NEW: patched[NEW]})


def test_changed_anchor_code_is_refused_and_nothing_changes_anywhere(lab, fresh_container, run_module, tmp_path,
                                                                   patch_set):
    """A build whose code under a hook's anchor differs (here: compute/manager.py's import line
    rewritten in one container): the module refuses, naming that container, the file and the hook,
    and changes nothing in any container."""
    root, pristine, patched, _ = patch_set
    good, bad = fresh_container(), fresh_container()
    lab.engine("exec", bad, "sed", "-i", "s/^from nova import objects$/from nova import objects as objects/",
               lab.nova_dir() + "/compute/manager.py")
    edited = read(lab, bad, "compute/manager.py").decode()
    assert edited.count(ANCHOR) == 0 and "from nova import objects as objects\n" in edited, "the sed took"
    before = {n: sums(lab, n) for n in (good, bad)}
    starts = {n: started_at(lab, n) for n in (good, bad)}
    assert before[good] == pristine and before[bad] == dict(pristine, **{"compute/manager.py": sha(edited.encode())})

    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root,
                                              containers={good: ALL_PARTS, bad: ALL_PARTS}), diff=True)
    assert rc != 0 and res.get("failed") and res["changed"] is False, res
    msg = res["msg"]
    assert "nothing was changed" in msg, msg
    assert "unsupported: %s:%s/compute/manager.py (Nova %s): hook \"import\" does not match" % (
        bad, lab.nova_dir(), RELEASE) in msg, msg
    assert "found 0 times" in msg, msg
    assert good not in msg, "only the container with the changed file is named"
    assert len(res["refused"]) == 1 and bad in res["refused"][0] and "compute/manager.py" in res["refused"][0], res
    assert res["containers"][bad]["status"] == 'unsupported (compute/manager.py: hook "import")', res["containers"]
    assert res["containers"][bad]["refused"] == res["refused"]
    assert res["containers"][good]["status"] == "unpatched" and "refused" not in res["containers"][good]
    assert {n: sums(lab, n) for n in (good, bad)} == before
    assert {n: started_at(lab, n) for n in (good, bad)} == starts, "no restart"
    assert lab.patch_leftovers(good) == [] and lab.patch_leftovers(bad) == []
    assert backup_files(tmp_path / "backup") == []


def test_unrelated_local_edit_is_still_patched(lab, fresh_container, run_module, tmp_path, patch_set):
    """A distribution's backport (here: a line appended to compute/manager.py) leaves the anchor
    alone: the hooks apply to the file as it is, and absent restores exactly that file."""
    root, pristine, patched, _ = patch_set
    c = fresh_container()
    lab.engine("exec", c, "sh", "-c", "echo '# a distribution backport' >> %s/compute/manager.py" % lab.nova_dir())
    local = read(lab, c, "compute/manager.py")
    assert local.endswith(b"# a distribution backport\n") and sha(local) != pristine["compute/manager.py"]
    want_patched = dict(patched, **{"compute/manager.py": sha(hook(local))})
    want_before = dict(pristine, **{"compute/manager.py": sha(local)})

    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root, containers={c: ALL_PARTS}))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert res["containers"][c]["files"] == {p: "patched" for p in FILES}, res
    assert sums(lab, c) == want_patched
    assert sha((tmp_path / "backup" / c / RELEASE / "nova" / "compute/manager.py").read_bytes()) == sha(local)

    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root, containers={c: ALL_PARTS}))
    assert rc == 0 and res["changed"] is False and not res.get("failed"), res
    assert res["containers"][c]["status"] == "patched", res
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root,
                                              containers={c: ALL_PARTS}, state="absent"))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert sums(lab, c) == want_before, "the locally edited file back byte-identical"


def test_failing_health_check_rolls_back(lab, custom_container, run_module, tmp_path, patch_set):
    """A container whose healthcheck always fails: the gate fails after the restart, the files are
    put back byte-identical, the container runs (as unhealthy as before: a rollback restores, it
    cannot heal), and the report says rolled_back."""
    root, pristine, patched, _ = patch_set
    c = custom_container(["--health-cmd", "false", "--health-interval", "1s", "--health-retries", "1"])
    before = sums(lab, c)
    assert before == pristine
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root,
                                              containers={c: ALL_PARTS}, health_timeout_s=20))
    assert rc != 0 and res.get("failed") and res.get("rolled_back") is True, res
    assert res["failed_step"] == "health gate" and c in res["msg"] and "unhealthy" in res["msg"], res["msg"]
    assert "byte-identical" in res["msg"]
    assert sums(lab, c) == before
    assert lab.patch_leftovers(c) == []
    assert lab.container_running(c)


def test_failing_restart_rolls_back_every_touched_container(lab, custom_container, run_module, tmp_path, patch_set):
    """Two containers; the second (by name) exits 3 on its restart. The first was already patched,
    restarted and healthy: both are rolled back byte-identical and both run."""
    root, pristine, patched, _ = patch_set
    first = custom_container(prefix="nrl-a")
    second = custom_container(command=["sh", "-c", "if [ -e /fail-once ]; then rm -f /fail-once; exit 3; fi; "
                                                   "exec sleep infinity"], prefix="nrl-b")
    lab.engine("exec", second, "touch", "/fail-once")
    before = {n: sums(lab, n) for n in (first, second)}
    assert before == {first: pristine, second: pristine}
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root,
                                              containers={first: ALL_PARTS, second: ALL_PARTS}))
    assert rc != 0 and res.get("failed") and res.get("rolled_back") is True, res
    assert second in res["msg"] and "exit code 3" in res["msg"], res["msg"]
    assert res["containers"][first]["restarted"] is True, "the first container had been patched and restarted"
    assert {n: sums(lab, n) for n in (first, second)} == before
    assert lab.patch_leftovers(first) == [] and lab.patch_leftovers(second) == []
    assert lab.container_running(first) and lab.container_running(second)


@pytest.mark.parametrize("text, why", [
    ("[[hook]\nfile = 'compute/manager.py'\n", "TOML parse error"),
    (HOOKS_TOML.replace("after = ", "also = ", 1), "unknown field"),
    (HOOKS_TOML.replace("numa_repin_patch", "something_else"), "its first hook must import numa_repin_patch"),
], ids=["syntax", "unknown-field", "no-marker"])
def test_broken_hooks_toml_fails_naming_the_file(lab, fresh_container, run_module, tmp_path, pristine_bytes,
                                                 text, why):
    root = write_patch_dir(tmp_path / "broken", hooks_toml=text)
    c = fresh_container()
    before, t0 = sums(lab, c), started_at(lab, c)
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root, containers={c: ALL_PARTS}))
    assert rc != 0 and res.get("failed") and res["changed"] is False, res
    assert "%s is not valid" % (root / "hooks.toml") in res["msg"] and why in res["msg"], res["msg"]
    assert "panicked" not in json.dumps(res)
    assert sums(lab, c) == before and started_at(lab, c) == t0
    assert lab.patch_leftovers(c) == [] and backup_files(tmp_path / "backup") == []


def test_patch_dir_without_hooks_toml_cannot_be_read(lab, fresh_container, run_module, tmp_path):
    root = write_patch_dir(tmp_path / "nohooks", hooks_toml=None)
    assert not (root / "hooks.toml").exists() and (root / "src" / NEW).exists()
    c = fresh_container()
    before, t0 = sums(lab, c), started_at(lab, c)
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root, containers={c: ALL_PARTS}))
    assert rc != 0 and res.get("failed") and res["changed"] is False, res
    assert "cannot read %s" % (root / "hooks.toml") in res["msg"], res["msg"]
    assert sums(lab, c) == before and started_at(lab, c) == t0
    assert lab.patch_leftovers(c) == [] and backup_files(tmp_path / "backup") == []


def test_unknown_container_fails_and_changes_nothing(lab, fresh_container, run_module, tmp_path, patch_set):
    root, pristine, patched, _ = patch_set
    c = fresh_container()
    missing = "nrl-missing-%s" % uuidlib.uuid4().hex[:8]
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", patch_dir=root,
                                              containers={c: ALL_PARTS, missing: ALL_PARTS}))
    assert rc != 0 and res.get("failed") and res["changed"] is False, res
    assert "no container named %s" % missing in res["msg"] and "nothing was changed" in res["msg"], res["msg"]
    assert c not in res["msg"]
    assert sums(lab, c) == pristine


@pytest.mark.parametrize("bad, word", [
    ({"patch_dir": 5}, "patch_dir"),
    ({"state": "gone"}, "state"),
    ({"containers": ["nova_compute"]}, "containers"),
    ({"containers": {"nova_compute": "compute/"}}, "containers"),
    ({"health_timeout_s": "soon"}, "health_timeout_s"),
    ({"restart": "maybe"}, "restart"),
    ({"container_engine": "lxc"}, "auto, docker or podman"),
    ({"containers": {}}, "containers"),
    ({"containers": {"nova_compute": []}}, "no parts"),
    ({"bogus": 1}, "unsupported argument"),
])
def test_malformed_arguments_fail_clearly(lab, run_module, tmp_path, patch_set, bad, word):
    root, _, _, _ = patch_set
    a = rollout_args(tmp_path / "backup", patch_dir=root, containers={"nrl-never-touched": ALL_PARTS})
    a.update(bad)
    rc, res = run_module(MODULE, a)
    assert rc != 0 and res.get("failed") and res["changed"] is False, res
    assert word in res["msg"], res["msg"]
    text = json.dumps(res)
    assert "Traceback" not in text and "panicked" not in text and "internal error" not in text


def test_schema_documents_every_argument():
    r = subprocess.run([str(REPO / "library" / MODULE), "--schema"], capture_output=True, text=True, check=True)
    schema = json.loads(r.stdout)
    props = schema["properties"]
    for name in ("patch_dir", "container_engine", "release", "containers", "state", "restart", "health_timeout_s",
                 "backup_dir", "python"):
        assert name in props, name
        assert props[name].get("description"), "%s has no description" % name
    assert schema.get("required", []) == [], "no argument is required (the patch is built in)"
    assert "hooks.toml" in props["patch_dir"]["description"]
    assert props["health_timeout_s"]["default"] == 60 and props["restart"]["default"] is True
    assert props["containers"]["default"]["nova_conductor"] == ["conductor/", "db/", "numa_repin_patch.py"]


def test_real_built_in_patch_into_a_conductor_and_a_compute_container(lab, fresh_container, run_module, tmp_path):
    """The patch built into the module (no patch_dir), two fresh containers with the default parts
    of conductor and compute; the sums are nova_hooks' independent reading of hooks.toml applied to
    the 19.3.2 wheel, whose files the image holds."""
    exp = nova_hooks.expected(RELEASE)
    paths = list(exp)
    hexid = uuidlib.uuid4().hex[:8]
    cond, comp = fresh_container(name="nrl-c-" + hexid), fresh_container(name="nrl-k-" + hexid)
    parts = {cond: ["conductor/", "db/", NEW], comp: ["compute/", "virt/", NEW]}

    def hit(name, p):
        return any(p == x or (x.endswith("/") and p.startswith(x)) for x in parts[name])

    def want(name, state):
        return {p: exp[p][1] if (hit(name, p) and state == "patched") else exp[p][0] for p in paths}

    pristine = {n: sums(lab, n, paths) for n in (cond, comp)}
    assert pristine == {n: want(n, "pristine") for n in (cond, comp)}, "the image holds the 19.3.2 wheel's files"
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", containers=parts))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert res["release"] == RELEASE
    hooks = nova_hooks.hooks()
    with zipfile.ZipFile(nova_hooks.wheel(RELEASE)) as z:
        with_wheel = {p: z.read("nova/" + p).decode("utf-8") for p in hooks}
    for n in (cond, comp):
        info = res["containers"][n]
        assert sums(lab, n, paths) == want(n, "patched"), n
        assert lab.container_running(n) and info["restarted"]
        assert info["status"] == "patched" and set(info["files"]) == {p for p in paths if hit(n, p)}, info
        assert info["hooks"] == {p: nova_hooks.used(with_wheel[p], hooks[p]) for p in hooks if hit(n, p)}, info["hooks"]
    assert set(res["containers"][cond]["files"]) == {"conductor/tasks/live_migrate.py", NEW}
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", containers=parts))
    assert rc == 0 and res["changed"] is False, res
    rc, res = run_module(MODULE, rollout_args(tmp_path / "backup", containers=parts, state="absent"))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert {n: sums(lab, n, paths) for n in (cond, comp)} == pristine
    assert lab.patch_leftovers(cond) == [] and lab.patch_leftovers(comp) == []
