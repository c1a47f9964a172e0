"""deploy_patched_nova with a synthetic patch set made from the lab image's own files (two edited
Nova files and one new file), in fresh containers only: check/diff, apply, rerun, absent, the
host and in-container backups, bytecode, refusal of a tampered file across containers, the
health gate and restart failures with rollback of every touched container, release and patch
set errors, unknown containers, malformed arguments, --schema; and the real patch set
(roles/nova_patch/files) in two containers with their own parts.

test_deploy_patch.py covers the real patch set in depth (Queens on 2.7, concurrency, playbooks)."""
import hashlib
import json
import shutil
import struct
import subprocess
import uuid as uuidlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = "deploy_patched_nova"
RELEASE = "19.3.2"
EDITED = ["conductor/tasks/live_migrate.py", "compute/manager.py"]
NEW = "numa_repin_patch.py"
FILES = EDITED + [NEW]
MARK = b"# numa-repin synthetic patch\n"
NEW_BODY = b"# numa-repin synthetic new module\nVALUE = 42\n"
ALL_PARTS = ["conductor/", "compute/", NEW]


def sha(data):
    return hashlib.sha256(data).hexdigest()


def nova_dir(lab):
    return lab.data["containers"]["nova_site_packages"] + "/nova"


def sums(lab, name, paths=FILES):
    """{path: sha256 or None when absent}, read inside the container."""
    got = {}
    for p in paths:
        r = lab.engine("exec", name, "sha256sum", nova_dir(lab) + "/" + p, check=False)
        got[p] = r.stdout.split()[0] if r.returncode == 0 else None
    return got


def running(lab, name):
    return lab.engine("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"


def started_at(lab, name):
    return lab.engine("inspect", "-f", "{{.State.StartedAt}}", name).stdout.strip()


def leftovers(lab, name):
    """Backup copies left in the container's nova tree."""
    return lab.engine("exec", name, "sh", "-c", "find %s -name '*.numa-repin.orig'" % nova_dir(lab)).stdout.split()


def make_set(root, pristine_bytes, release=RELEASE, new_body=NEW_BODY):
    """<root>/<release>/manifest.json + nova/<path>; returns the manifest."""
    base = Path(root) / release
    files = []
    for rel in EDITED:
        patched = pristine_bytes[rel] + MARK
        (base / "nova" / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / "nova" / rel).write_bytes(patched)
        files.append({"path": rel, "containers": [], "pristine_sha256": sha(pristine_bytes[rel]),
                      "patched_sha256": sha(patched)})
    (base / "nova" / NEW).write_bytes(new_body)
    files.append({"path": NEW, "containers": ["nova_conductor", "nova_compute"], "pristine_sha256": None,
                  "patched_sha256": sha(new_body)})
    manifest = {"release": release, "files": files}
    (base / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


@pytest.fixture(scope="module")
def pristine_bytes(lab):
    """The image's own bytes of the edited files."""
    c = lab.data["containers"]
    out = {}
    for rel in EDITED:
        r = subprocess.run([c["engine"], "run", "--rm", c["nova_image"], "cat", nova_dir(lab) + "/" + rel],
                           capture_output=True, check=True, timeout=120)
        out[rel] = r.stdout
    assert all(len(v) > 1000 for v in out.values())
    return out


@pytest.fixture
def patch_set(tmp_path, pristine_bytes):
    root = tmp_path / "patch"
    m = make_set(root, pristine_bytes)
    pristine = {f["path"]: f["pristine_sha256"] for f in m["files"]}
    patched = {f["path"]: f["patched_sha256"] for f in m["files"]}
    return root, pristine, patched


def args(tmp_path, patch_root, containers, **kw):
    a = {"patch_dir": str(patch_root), "containers": containers, "backup_dir": str(tmp_path / "backup"),
         "health_timeout_s": 30}
    a.update(kw)
    return a


def test_check_diff_apply_rerun_absent(lab, fresh_container, run_module, tmp_path, patch_set):
    root, pristine, patched = patch_set
    c = fresh_container()
    assert sums(lab, c) == pristine

    # check mode + diff: lists every file, shows the change, changes nothing
    t0 = started_at(lab, c)
    rc, res = run_module(MODULE, args(tmp_path, root, {c: ALL_PARTS}), check_mode=True, diff=True)
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert res["containers"][c]["files"] == {p: "would patch" for p in FILES}, res
    assert all(p in res["msg"] for p in FILES), res["msg"]
    text = "".join(d.get("prepared", "") for d in res["diff"])
    assert "+# numa-repin synthetic patch" in text and "+VALUE = 42" in text, res["diff"]
    assert "live_migrate.py" in text and "manager.py" in text
    assert sums(lab, c) == pristine and started_at(lab, c) == t0, "check mode changed nothing"
    assert not (tmp_path / "backup" / c).exists(), "check mode wrote no backup"

    # apply
    rc, res = run_module(MODULE, args(tmp_path, root, {c: ALL_PARTS}))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert res["release"] == RELEASE and res["engine"] == "docker"
    info = res["containers"][c]
    assert info["nova_path"] == nova_dir(lab) and info["python"] == lab.data["containers"]["nova_python"]
    assert info["restarted"] is True and info["files"] == {p: "patched" for p in FILES}
    assert sums(lab, c) == patched
    assert running(lab, c) and started_at(lab, c) != t0, "restarted"
    # host backup: the pristine bytes, per container and release; none for the new file
    bdir = tmp_path / "backup" / c / RELEASE / "nova"
    for rel in EDITED:
        assert sha((bdir / rel).read_bytes()) == pristine[rel], rel
    assert not (bdir / NEW).exists()
    # in-container backup next to each edited file, none for the new file
    assert sorted(leftovers(lab, c)) == sorted(nova_dir(lab) + "/" + p + ".numa-repin.orig" for p in EDITED)
    # fresh bytecode of the patched file (the .pyc records the source size: the patched one)
    raw = subprocess.run(["docker", "exec", c, "cat",
                          nova_dir(lab) + "/conductor/tasks/__pycache__/live_migrate.cpython-37.pyc"],
                         capture_output=True, check=True).stdout
    size = struct.unpack("<I", raw[12:16])[0]
    assert size == len((root / RELEASE / "nova" / "conductor/tasks/live_migrate.py").read_bytes())
    # the patched modules import with the container's Python
    imp = lab.engine("exec", c, lab.data["containers"]["nova_python"], "-c",
                     "import nova.numa_repin_patch as m; print(m.VALUE)", check=False)
    assert imp.stdout.strip() == "42", imp.stderr[-800:]

    # rerun: nothing to do, no restart
    t1 = started_at(lab, c)
    rc, res = run_module(MODULE, args(tmp_path, root, {c: ALL_PARTS}))
    assert rc == 0 and res["changed"] is False and not res.get("failed"), res
    assert res["containers"][c]["files"] == {p: "patched" for p in FILES}
    assert started_at(lab, c) == t1

    # absent, check mode first
    rc, res = run_module(MODULE, args(tmp_path, root, {c: ALL_PARTS}, state="absent"), check_mode=True, diff=True)
    assert res["changed"] and set(res["containers"][c]["files"].values()) == {"would restore"}, res
    assert "-# numa-repin synthetic patch" in "".join(d.get("prepared", "") for d in res["diff"])
    assert sums(lab, c) == patched
    rc, res = run_module(MODULE, args(tmp_path, root, {c: ALL_PARTS}, state="absent"))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert sums(lab, c) == pristine, "sha256-identical pristine, new file gone"
    assert leftovers(lab, c) == []
    gone = lab.engine("exec", c, "sh", "-c", "ls %s/__pycache__ | grep numa_repin_patch" % nova_dir(lab), check=False)
    assert gone.stdout.strip() == "", "bytecode of the removed file cleared"
    assert running(lab, c)
    rc, res = run_module(MODULE, args(tmp_path, root, {c: ALL_PARTS}, state="absent"))
    assert rc == 0 and res["changed"] is False and not res.get("failed"), res


def test_parts_select_files_per_container(lab, fresh_container, run_module, tmp_path, patch_set):
    """A file goes only where a prefix matches; a prefix equal to a file path names that file."""
    root, pristine, patched = patch_set
    a, b = fresh_container(), fresh_container()
    rc, res = run_module(MODULE, args(tmp_path, root, {a: ["conductor/", NEW], b: ["compute/manager.py"]},
                                      restart=False))
    assert res["changed"] and not res.get("failed"), res
    assert set(res["containers"][a]["files"]) == {"conductor/tasks/live_migrate.py", NEW}
    assert set(res["containers"][b]["files"]) == {"compute/manager.py"}
    assert res["containers"][a]["restarted"] is False
    assert sums(lab, a) == dict(pristine, **{"conductor/tasks/live_migrate.py": patched[EDITED[0]], NEW: patched[NEW]})
    assert sums(lab, b) == dict(pristine, **{"compute/manager.py": patched["compute/manager.py"]})


def test_tampered_file_is_refused_and_nothing_changes_anywhere(lab, fresh_container, run_module, tmp_path, patch_set):
    root, pristine, patched = patch_set
    good, bad = fresh_container(), fresh_container()
    lab.engine("exec", bad, "sh", "-c", "echo '# local edit' >> %s/compute/manager.py" % nova_dir(lab))
    before = {n: sums(lab, n) for n in (good, bad)}
    starts = {n: started_at(lab, n) for n in (good, bad)}
    tampered = before[bad]["compute/manager.py"]
    assert tampered != pristine["compute/manager.py"]

    rc, res = run_module(MODULE, args(tmp_path, root, {good: ALL_PARTS, bad: ALL_PARTS}), diff=True)
    assert rc != 0 and res.get("failed") and res["changed"] is False, res
    msg = res["msg"]
    assert bad in msg and "compute/manager.py" in msg and "nothing was changed" in msg, msg
    assert tampered in msg and pristine["compute/manager.py"] in msg and patched["compute/manager.py"] in msg, msg
    assert good not in msg, "only the tampered container is named"
    assert len(res["refused"]) == 1, res
    assert {n: sums(lab, n) for n in (good, bad)} == before
    assert {n: started_at(lab, n) for n in (good, bad)} == starts, "no restart"
    assert leftovers(lab, good) == [] and leftovers(lab, bad) == []
    assert [p for p in (tmp_path / "backup").rglob("*") if p.is_file() and p.name != ".rollout.lock"] == []


def test_failing_health_check_rolls_back(lab, custom_container, run_module, tmp_path, patch_set):
    """A container whose healthcheck always fails: the gate fails after the restart, the files are
    put back byte-identical, the container runs (as unhealthy as before: a rollback restores, it
    cannot heal), and the report says rolled_back."""
    root, pristine, patched = patch_set
    c = custom_container(["--health-cmd", "false", "--health-interval", "1s", "--health-retries", "1"])
    before = sums(lab, c)
    assert before == pristine
    rc, res = run_module(MODULE, args(tmp_path, root, {c: ALL_PARTS}, health_timeout_s=20))
    assert rc != 0 and res.get("failed") and res.get("rolled_back") is True, res
    assert res["failed_step"] == "health gate" and c in res["msg"] and "unhealthy" in res["msg"], res["msg"]
    assert "byte-identical" in res["msg"]
    assert sums(lab, c) == before
    assert leftovers(lab, c) == []
    assert running(lab, c)


def test_failing_restart_rolls_back_every_touched_container(lab, custom_container, run_module, tmp_path, patch_set):
    """Two containers; the second (by name) exits 3 on its restart. The first was already patched,
    restarted and healthy: both are rolled back byte-identical and both run."""
    root, pristine, patched = patch_set
    first = custom_container(prefix="nrl-a")
    second = custom_container(command=["sh", "-c", "if [ -e /fail-once ]; then rm -f /fail-once; exit 3; fi; "
                                                   "exec sleep infinity"], prefix="nrl-b")
    lab.engine("exec", second, "touch", "/fail-once")
    before = {n: sums(lab, n) for n in (first, second)}
    rc, res = run_module(MODULE, args(tmp_path, root, {first: ALL_PARTS, second: ALL_PARTS}))
    assert rc != 0 and res.get("failed") and res.get("rolled_back") is True, res
    assert second in res["msg"] and "exit code 3" in res["msg"], res["msg"]
    assert res["containers"][first]["restarted"] is True, "the first container had been patched and restarted"
    assert {n: sums(lab, n) for n in (first, second)} == before
    assert leftovers(lab, first) == [] and leftovers(lab, second) == []
    assert running(lab, first) and running(lab, second)


def test_release_auto_without_its_patch_set_fails_naming_both(lab, fresh_container, run_module, tmp_path,
                                                                pristine_bytes):
    root = tmp_path / "other"
    make_set(root, pristine_bytes, release="18.3.0")
    c = fresh_container()
    rc, res = run_module(MODULE, args(tmp_path, root, {c: ALL_PARTS}))
    assert res.get("failed") and "19.3.2" in res["msg"] and "18.3.0" in res["msg"], res
    assert sums(lab, c)[NEW] is None


def test_damaged_patch_set_is_refused(lab, fresh_container, run_module, tmp_path, patch_set):
    root, pristine, patched = patch_set
    with open(root / RELEASE / "nova" / NEW, "ab") as f:
        f.write(b"# damaged\n")
    c = fresh_container()
    rc, res = run_module(MODULE, args(tmp_path, root, {c: ALL_PARTS}))
    assert res.get("failed") and "damaged" in res["msg"] and NEW in res["msg"], res
    assert sums(lab, c) == pristine


def test_unknown_container_fails_and_changes_nothing(lab, fresh_container, run_module, tmp_path, patch_set):
    root, pristine, patched = patch_set
    c = fresh_container()
    missing = "nrl-missing-%s" % uuidlib.uuid4().hex[:8]
    rc, res = run_module(MODULE, args(tmp_path, root, {c: ALL_PARTS, missing: ALL_PARTS}))
    assert rc != 0 and res.get("failed") and res["changed"] is False, res
    assert "no container named %s" % missing in res["msg"] and "nothing was changed" in res["msg"], res["msg"]
    assert c not in res["msg"]
    assert sums(lab, c) == pristine


@pytest.mark.parametrize("bad, word", [
    ({"patch_dir": None}, "patch_dir"),
    ({"patch_dir": "DROP"}, "patch_dir"),                 # removed below: missing required argument
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
    root, _, _ = patch_set
    a = args(tmp_path, root, {"nrl-never-touched": ALL_PARTS})
    a.update(bad)
    if a.get("patch_dir") == "DROP":
        del a["patch_dir"]
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
    assert schema["required"] == ["patch_dir"]
    assert props["health_timeout_s"]["default"] == 60 and props["restart"]["default"] is True
    assert props["containers"]["default"]["nova_conductor"] == ["conductor/", "db/", "numa_repin_patch.py"]


REAL = REPO / "roles" / "nova_patch" / "files"


@pytest.mark.skipif(not (REAL / RELEASE / "manifest.json").exists(), reason="no real patch set built")
def test_real_patch_set_into_a_conductor_and_a_compute_container(lab, fresh_container, run_module, tmp_path):
    """The lead's patch set, two fresh containers with the default parts of conductor and compute."""
    m = json.loads((REAL / RELEASE / "manifest.json").read_text())
    paths = [f["path"] for f in m["files"]]
    hexid = uuidlib.uuid4().hex[:8]
    cond, comp = fresh_container(name="nrl-c-" + hexid), fresh_container(name="nrl-k-" + hexid)
    parts = {cond: ["conductor/", "db/", NEW], comp: ["compute/", "virt/", NEW]}

    def want(name, state):
        out = {}
        for f in m["files"]:
            p = f["path"]
            hit = any(p == x or (x.endswith("/") and p.startswith(x)) for x in parts[name])
            out[p] = f["patched_sha256"] if (hit and state == "patched") else f["pristine_sha256"]
        return out

    pristine = {n: sums(lab, n, paths) for n in (cond, comp)}
    assert pristine == {n: want(n, "pristine") for n in (cond, comp)}
    rc, res = run_module(MODULE, args(tmp_path, REAL, parts))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert res["release"] == RELEASE
    for n in (cond, comp):
        assert sums(lab, n, paths) == want(n, "patched"), n
        assert running(lab, n) and res["containers"][n]["restarted"]
    assert NEW in res["containers"][cond]["files"] and NEW in res["containers"][comp]["files"]
    rc, res = run_module(MODULE, args(tmp_path, REAL, parts))
    assert rc == 0 and res["changed"] is False, res
    rc, res = run_module(MODULE, args(tmp_path, REAL, parts, state="absent"))
    assert rc == 0 and res["changed"] and not res.get("failed"), res
    assert {n: sums(lab, n, paths) for n in (cond, comp)} == pristine
