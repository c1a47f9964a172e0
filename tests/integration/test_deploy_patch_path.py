"""deploy_patched_nova with `path`: a Nova package directory on this machine patched in place (no
container, no restart). No lab needed: real pristine Nova from the wheels in
/var/cache/numa-repin/nova-wheels unzipped into tmp_path, the hooks built into the module (their
expected output computed independently by nova_hooks.py), and small fake Nova trees for the
health gate (real Nova's modules cannot import without its dependencies).

Covered: apply + byte-compile (Python 3 and 2.7) + rerun unchanged + absent byte-identical for
every point release PyPI serves of Queens, Rocky and Stein; distribution-style builds (an
unrelated backported hunk: patched; changed code under an anchor: refused by hook name); check
mode and diff change nothing; a hand-edited patched file refused by name with nothing changed; release auto from
dist-info, egg-info, or the Python's own metadata; `parts`; path+containers and other bad input;
health gate success, failures (a module missing a dependency, a `python` whose imports fail, real
Nova without its dependencies) and byte-compile failure, each rolled back byte-identical;
bytecode made by the given python with stale bytecode cleared; Python 2.7's layout; absent
without any pristine copy left; the rollout lock; --schema."""
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import io
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

import nova_hooks

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "library" / "deploy_patched_nova"
WHEELS = Path("/var/cache/numa-repin/nova-wheels")
RELEASES = nova_hooks.RELEASES
PY = sys.executable
PY27 = "/root/.pyenv/versions/2.7.18/bin/python2.7"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def run(a, check_mode=False, diff=False, timeout=300):
    """The module as Ansible runs it: `deploy_patched_nova <args.json>`; (rc, result)."""
    assert MODULE.exists(), "build the modules first: bash scripts/build.sh"
    a = dict(a)
    if check_mode:
        a["_ansible_check_mode"] = True
    if diff:
        a["_ansible_diff"] = True
    f = Path(os.environ.get("TMPDIR", "/tmp")) / ("args-%d-%s.json" % (os.getpid(), os.urandom(4).hex()))
    f.write_text(json.dumps(a))
    try:
        r = subprocess.run([str(MODULE), str(f)], capture_output=True, text=True, timeout=timeout)
    finally:
        f.unlink()
    res = json.loads(r.stdout)
    text = r.stdout + r.stderr
    assert "panicked" not in text and "Traceback" not in res.get("msg", ""), text
    return r.returncode, res


def snapshot(root):
    """{relative path: sha256} of every file under root: 'nothing changed' means equal snapshots."""
    root = Path(root)
    return {str(p.relative_to(root)): sha(p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def patch_dir():
    """None: the hooks and core built into the module."""
    return None


def manifest(_patch_dir, release):
    """What the built-in patch must make of a release's wheel, per file (nova_hooks.expected)."""
    return {"files": [{"path": p, "pristine_sha256": a, "patched_sha256": b}
                      for p, (a, b) in nova_hooks.expected(release).items()]}


def wheel(release):
    w = WHEELS / ("nova-%s-py2.py3-none-any.whl" % release)
    if not w.exists():
        subprocess.run([PY, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "nova==" + release,
                        "-d", str(WHEELS)], check=True, capture_output=True)
    return w


def wheel_files(release):
    """{path inside the nova package: bytes} of pristine Nova."""
    with zipfile.ZipFile(wheel(release)) as z:
        return {n[len("nova/"):]: z.read(n) for n in z.namelist() if n.startswith("nova/") and not n.endswith("/")}


def unpack_nova(dest, release, metadata=True):
    """The wheel's nova/ (and its dist-info) under dest, as pip lays out site-packages."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel(release)) as z:
        for n in z.namelist():
            if n.startswith("nova/") or (metadata and n.startswith("nova-%s.dist-info/" % release)):
                z.extract(n, dest)
    return dest / "nova"


def assert_pristine(nova, release):
    """Every file of the tree is the wheel's, byte for byte, and nothing else is left but bytecode."""
    want = wheel_files(release)
    got = {str(p.relative_to(nova)): p.read_bytes() for p in nova.rglob("*") if p.is_file()
           and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert sorted(got) == sorted(want), sorted(set(got) ^ set(want))
    bad = [p for p in want if got[p] != want[p]]
    assert not bad, "not byte-identical: %s" % bad


def base_args(patch_dir, nova, tmp_path, **kw):
    a = {"path": str(nova), "backup_dir": str(tmp_path / "backup"), "python": PY,
         "state": "present", "release": "auto", "health_import": False}
    if patch_dir is not None:
        a["patch_dir"] = str(patch_dir)
    a.update(kw)
    return a


def write_exe(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


# --- real Nova --------------------------------------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_apply_rerun_absent_real_nova(patch_dir, tmp_path, release):
    """Every point release: the hooks apply in place, the output is what nova_hooks.py's own
    reading of hooks.toml makes of the wheel, it byte-compiles with Python 3 (the module's run)
    and 2.7, a rerun changes nothing, `absent` restores every file byte for byte."""
    nova = unpack_nova(tmp_path / "site-packages", release)
    m = manifest(patch_dir, release)
    a = base_args(patch_dir, nova, tmp_path)

    rc, res = run(a)
    assert rc == 0 and res["changed"] and not res["failed"], res
    assert res["release"] == res["nova_version"] == release, "release auto from the dist-info"
    assert res["nova_path"] == str(nova) and res["python"] == PY
    assert res["restart"] == "not applicable" and "restarted" not in res and "engine" not in res
    assert res["files"] == {f["path"]: "patched" for f in m["files"]}
    assert "restart: not applicable" in res["msg"] and res["status"] == "patched"
    for f in m["files"]:
        assert sha((nova / f["path"]).read_bytes()) == f["patched_sha256"], f["path"]
    # which variant served: the conductor's NUMA refusal exists from 17.0.11 and 18.2.0 on
    used = res["hooks"]["conductor/tasks/live_migrate.py"][1]
    old = release in ("17.0.7", "17.0.8", "17.0.9", "17.0.10", "18.0.2", "18.0.3", "18.1.0")
    assert used.endswith("before 17.0.11 and 18.2.0)" if old else "19.x)"), used
    # the module byte-compiled with Python 3; Python 2.7 (Queens/Rocky images) compiles them too
    compiled = [p for p in (nova / "compute" / "__pycache__").glob("manager.*.pyc")]
    assert compiled, "byte-compiled by the module's python"
    py2 = subprocess.run([PY27, "-m", "py_compile"] + [str(nova / f["path"]) for f in m["files"]],
                         capture_output=True, text=True)
    assert py2.returncode == 0, py2.stderr[-800:]
    # the record of what was written: original and patched sha256 per file
    rec = json.loads((tmp_path / "backup" / ("_path" + str(nova)) / release / "written.json").read_text())
    assert rec == {f["path"]: {"original_sha256": f["pristine_sha256"], "patched_sha256": f["patched_sha256"]}
                   for f in m["files"]}, rec
    # originals kept: on the host, per path and release, and next to each edited file
    bdir = tmp_path / "backup" / ("_path" + str(nova)) / release / "nova"
    for f in m["files"]:
        if f["pristine_sha256"]:
            assert sha((bdir / f["path"]).read_bytes()) == f["pristine_sha256"], f["path"]
            assert sha((nova / (f["path"] + ".numa-repin.orig")).read_bytes()) == f["pristine_sha256"]
        else:
            assert not (bdir / f["path"]).exists()

    # rerun: nothing to do
    before = snapshot(nova)
    rc, res = run(a)
    assert rc == 0 and res["changed"] is False and not res["failed"], res
    assert set(res["files"].values()) == {"patched"} and "already patched" in res["msg"]
    assert snapshot(nova) == before

    # absent: pristine again, byte for byte (sha256 of every file against the wheel)
    rc, res = run(dict(a, state="absent"))
    assert rc == 0 and res["changed"] and not res["failed"], res
    assert set(res["files"].values()) == {"unpatched"} and res["status"] == "unpatched"
    assert_pristine(nova, release)
    assert not list(nova.rglob("*.numa-repin.orig")) and not (nova / "numa_repin_patch.py").exists()
    assert not list(nova.rglob("numa_repin_patch*.pyc")), "no bytecode of the removed file"
    rc, res = run(dict(a, state="absent"))
    assert rc == 0 and res["changed"] is False, res


def test_check_mode_and_diff_change_nothing(patch_dir, tmp_path):
    site = tmp_path / "site-packages"
    nova = unpack_nova(site, "19.3.2")
    m = manifest(patch_dir, "19.3.2")
    before = snapshot(site)
    rc, res = run(base_args(patch_dir, nova, tmp_path), check_mode=True, diff=True)
    assert rc == 0 and res["changed"] and not res["failed"] and res["check_mode"], res
    assert res["files"] == {f["path"]: "would patch" for f in m["files"]}
    assert all(f["path"] in res["msg"] for f in m["files"]), res["msg"]
    assert snapshot(site) == before, "check mode changed nothing"
    assert not (tmp_path / "backup").exists(), "check mode wrote no backup and took no lock"
    # the diff is the patch: the unified diff of each file, the new file whole
    diffs = {d["prepared"].splitlines()[0][4:]: d["prepared"] for d in res["diff"]}
    assert sorted(diffs) == sorted(str(nova / f["path"]) for f in m["files"]), sorted(diffs)
    for f in m["files"]:
        text = diffs[str(nova / f["path"])]
        assert text.splitlines()[1] == "+++ %s (after)" % (nova / f["path"]), text[:200]
        assert "\n+" in text and "@@" in text
    new = diffs[str(nova / "numa_repin_patch.py")]
    body = nova_hooks.CORE.read_text()
    assert new.count("\n+") >= body.count("\n"), "the new file appears whole"
    # and the same diff against a patched tree going back
    rc, _ = run(base_args(patch_dir, nova, tmp_path))
    assert rc == 0
    patched = snapshot(site)
    rc, res = run(base_args(patch_dir, nova, tmp_path, state="absent"), check_mode=True, diff=True)
    assert rc == 0 and res["changed"], res
    assert res["files"] == dict({f["path"]: "would restore" for f in m["files"]},
                                **{"numa_repin_patch.py": "would remove"}), res["files"]
    assert any("(removed)" in d["prepared"] for d in res["diff"])
    assert snapshot(site) == patched


def test_distribution_build_with_a_backported_hunk_is_patched(patch_dir, tmp_path):
    """A distribution's build: the release's file with an unrelated hunk added (a backport).
    The hooks apply around it; `absent` gives back that build, hunk and all."""
    site = tmp_path / "site-packages"
    nova = unpack_nova(site, "18.1.0")
    drv = nova / "virt" / "libvirt" / "driver.py"
    text = drv.read_text()
    hunk = "\n\ndef _backported_helper(x):\n    # a distribution backport\n    return x\n"
    anchor = "\nclass LibvirtDriver(driver.ComputeDriver):\n"
    assert text.count(anchor) == 1
    drv.write_text(text.replace(anchor, hunk + anchor))
    build = snapshot(site)
    rc, res = run(base_args(patch_dir, nova, tmp_path))
    assert rc == 0 and res["changed"] and res["status"] == "patched", res
    out = drv.read_text()
    assert "_backported_helper" in out and "numa_repin_patch.rewrite_migration_xml" in out
    want = nova_hooks.apply(text.replace(anchor, hunk + anchor), nova_hooks.hooks()["virt/libvirt/driver.py"])
    assert out == want, "the hooks, and nothing else, went in"
    rc, res = run(base_args(patch_dir, nova, tmp_path))
    assert rc == 0 and res["changed"] is False, res
    rc, res = run(base_args(patch_dir, nova, tmp_path, state="absent"))
    assert rc == 0 and res["changed"], res
    after = snapshot(site)
    assert {k: v for k, v in after.items() if "__pycache__" not in k and not k.endswith(".pyc")} == \
        {k: v for k, v in build.items() if "__pycache__" not in k and not k.endswith(".pyc")}


def test_changed_code_under_an_anchor_is_refused_by_hook_name(patch_dir, tmp_path):
    """A build whose code an anchor matches has changed: refused, naming the hook, the file and
    the release, and nothing changes anywhere (not even the files that would have matched)."""
    site = tmp_path / "site-packages"
    nova = unpack_nova(site, "19.3.2")
    mgr = nova / "compute" / "manager.py"
    text = mgr.read_text()
    old = "                instance.progress = 0\n                instance.save(expected_task_state=task_states.MIGRATING)\n"
    assert text.count(old) == 1
    mgr.write_text(text.replace(old, old.replace("instance.progress = 0", "instance.progress = 0  # vendor")))
    before = snapshot(site)
    rc, res = run(base_args(patch_dir, nova, tmp_path))
    assert rc != 0 and res["failed"] and res["changed"] is False, res
    msg = res["msg"]
    assert str(mgr) in msg and 'hook "apply the claim on the destination" does not match' in msg, msg
    assert "Nova 19.3.2" in msg and "nothing was changed" in msg, msg
    assert res["status"] == 'unsupported (compute/manager.py: hook "apply the claim on the destination")', res
    assert len(res["refused"]) == 1
    assert snapshot(site) == before
    assert [p.name for p in (tmp_path / "backup").iterdir()] == [".rollout.lock"], "no backup written"
    # check mode says the same and takes no lock
    rc, res = run(base_args(patch_dir, nova, tmp_path / "c"), check_mode=True)
    assert rc != 0 and res["status"].startswith("unsupported ("), res
    assert not (tmp_path / "c").exists()


def test_a_file_that_is_not_utf8_is_refused_not_rewritten(patch_dir, tmp_path):
    site = tmp_path / "site-packages"
    nova = unpack_nova(site, "19.3.2")
    rt = nova / "compute" / "resource_tracker.py"
    rt.write_bytes(rt.read_bytes() + b"# caf\xe9 (latin-1)\n")
    before = snapshot(site)
    rc, res = run(base_args(patch_dir, nova, tmp_path))
    assert rc != 0 and "%s is not UTF-8 text" % rt in res["msg"] and "nothing was changed" in res["msg"], res
    assert res["status"] == "unsupported (compute/resource_tracker.py not UTF-8)", res
    assert snapshot(site) == before


def test_hand_edited_patched_file_is_refused_and_nothing_changes(patch_dir, tmp_path):
    site = tmp_path / "site-packages"
    nova = unpack_nova(site, "19.3.2")
    assert run(base_args(patch_dir, nova, tmp_path))[0] == 0
    mgr = nova / "compute" / "manager.py"
    mgr.write_bytes(mgr.read_bytes().replace(b"numa_repin_patch", b"numa_repin_patch  ", 1))
    before = snapshot(site)
    for state in ("present", "absent"):
        rc, res = run(base_args(patch_dir, nova, tmp_path, state=state))
        assert rc != 0 and res["failed"] and str(mgr) in res["msg"], res
        assert "edited by hand?" in res["msg"] and "nothing was changed" in res["msg"], res["msg"]
        assert snapshot(site) == before

    # a patched tree whose backups are all gone is refused too: nothing to rebuild it from
    site = tmp_path / "two"
    nova = unpack_nova(site, "19.3.2")
    assert run(base_args(patch_dir, nova, tmp_path / "b2"))[0] == 0
    shutil.rmtree(tmp_path / "b2")
    for p in nova.rglob("*.numa-repin.orig"):
        p.unlink()
    rc, res = run(base_args(patch_dir, nova, tmp_path / "b2"))
    assert rc != 0 and "no original is kept" in res["msg"], res


def test_release_auto_from_egg_info_and_from_python(patch_dir, tmp_path):
    # a setuptools/distribution layout: nova-<v>-py3.7.egg-info/PKG-INFO
    site = tmp_path / "egg"
    nova = unpack_nova(site, "18.3.0")
    di = site / "nova-18.3.0.dist-info"
    egg = site / "nova-18.3.0-py3.7.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_bytes((di / "METADATA").read_bytes())
    shutil.rmtree(di)
    rc, res = run(base_args(patch_dir, nova, tmp_path / "b1"), check_mode=True)
    assert rc == 0 and res["release"] == "18.3.0" == res["nova_version"], res

    # no metadata next to the package: the Python that imports nova from this very tree knows it
    site = tmp_path / "bare"
    nova = unpack_nova(site, "19.3.2", metadata=False)
    meta = tmp_path / "meta"
    unpack_nova(meta, "19.3.2")
    shutil.rmtree(meta / "nova")
    py = write_exe(tmp_path / "py", "#!/bin/sh\nPYTHONPATH=%s:%s exec %s \"$@\"\n" % (site, meta, PY))
    rc, res = run(base_args(patch_dir, nova, tmp_path / "b2", python=py), check_mode=True)
    assert rc == 0 and res["release"] == "19.3.2", res

    # nobody knows: the hooks still apply; backups are filed under "unknown"
    rc, res = run(base_args(patch_dir, nova, tmp_path / "b3"))
    assert rc == 0 and res["changed"] and res["release"] == "unknown" and res["nova_version"] == "", res
    assert (tmp_path / "b3" / "backup" / ("_path" + str(nova)) / "unknown" / "written.json").exists()
    rc, res = run(base_args(patch_dir, nova, tmp_path / "b3", state="absent"))
    assert rc == 0 and res["changed"], res
    assert_pristine(nova, "19.3.2")


def test_parts_limit_the_files(patch_dir, tmp_path):
    site = tmp_path / "site-packages"
    nova = unpack_nova(site, "19.3.2")
    m = manifest(patch_dir, "19.3.2")
    a = base_args(patch_dir, nova, tmp_path, parts=["compute/", "numa_repin_patch.py"])
    rc, res = run(a)
    assert rc == 0 and res["changed"], res
    want = [f["path"] for f in m["files"] if f["path"].startswith("compute/") or f["path"] == "numa_repin_patch.py"]
    assert "compute/manager.py" in want and len(want) < len(m["files"])
    assert res["files"] == {p: "patched" for p in want}
    for f in m["files"]:
        want = f["patched_sha256"] if f["path"] in res["files"] else f["pristine_sha256"]
        assert sha((nova / f["path"]).read_bytes()) == want, f["path"]
    rc, res = run(dict(a, state="absent"))
    assert rc == 0 and res["changed"], res
    assert_pristine(nova, "19.3.2")
    rc, res = run(dict(a, parts=["cells/"]))
    assert rc != 0 and "no file of the patch matches the parts" in res["msg"], res


def test_health_gate_real_nova_without_its_dependencies_rolls_back(patch_dir, tmp_path):
    """Python without oslo.*: the patched modules cannot import; byte-identical Nova afterwards."""
    site = tmp_path / "site-packages"
    nova = unpack_nova(site, "19.3.2")
    probe = subprocess.run([PY, "-c", "import oslo_utils"], capture_output=True)
    assert probe.returncode != 0, "this test needs a Python without Nova's dependencies"
    before = snapshot(site)
    rc, res = run(base_args(patch_dir, nova, tmp_path, health_import=True))
    assert rc != 0 and res["failed"] and res["changed"] is False, res
    assert res["failed_step"] == "health gate" and res["rolled_back"] is True, res
    assert "health gate failed in %s" % nova in res["msg"] and "No module named 'oslo" in res["msg"], res["msg"]
    assert "byte-identical" in res["msg"]
    assert_pristine(nova, "19.3.2")
    after = snapshot(site)
    assert {k: v for k, v in after.items() if "__pycache__" not in k} == before, "every file as before"
    assert not list(nova.rglob("*.numa-repin.orig"))


# --- a small fake Nova, for the health gate and bytecode -------------------------------------------

FAKE_RELEASE = "19.3.2"
PRISTINE_MGR = b"X = 1\n"


def fake_tree(root, patched_mgr=b"from nova import numa_repin_patch\nX = numa_repin_patch.VALUE\n",
              new_body=b"VALUE = 42\n"):
    """<root>/site/nova (an importable package) and <root>/patch (hooks.toml + src/numa_repin_patch.py):
    one hook making compute/manager.py `patched_mgr` from `X = 1`."""
    nova = root / "site" / "nova"
    (nova / "compute").mkdir(parents=True)
    (nova / "__init__.py").write_bytes(b"")
    (nova / "compute" / "__init__.py").write_bytes(b"")
    (nova / "compute" / "manager.py").write_bytes(PRISTINE_MGR)
    patch = root / "patch"
    (patch / "src").mkdir(parents=True)
    (patch / "src" / "numa_repin_patch.py").write_bytes(new_body)
    (patch / "hooks.toml").write_text('[[hook]]\nfile = "compute/manager.py"\nname = "fake"\nanchor = %s\nreplace = %s\n'
                                      % (json.dumps(PRISTINE_MGR.decode()), json.dumps(patched_mgr.decode())))
    return nova, patch


def fake_args(nova, patch, tmp_path, **kw):
    a = {"patch_dir": str(patch), "path": str(nova), "backup_dir": str(tmp_path / "backup"), "python": PY,
         "release": FAKE_RELEASE}
    a.update(kw)
    return a


def test_health_gate_passes_on_an_importable_tree(tmp_path):
    nova, patch = fake_tree(tmp_path)
    rc, res = run(fake_args(nova, patch, tmp_path))  # health_import defaults to true
    assert rc == 0 and res["changed"] and not res["failed"], res
    assert res["files"] == {"compute/manager.py": "patched", "numa_repin_patch.py": "patched"}
    out = subprocess.run([PY, "-c", "import nova.compute.manager as m; print(m.X, m.__file__)"],
                         cwd=str(nova.parent), capture_output=True, text=True, check=True).stdout.split()
    assert out == ["42", str(nova / "compute" / "manager.py")]


def test_health_gate_imports_from_this_tree_not_another_nova(tmp_path):
    """Another Nova on the Python's own path does not stand in for the tree patched: the gate
    requires every patched module to be loaded from `path`, and rolls back when one is not."""
    nova, patch = fake_tree(tmp_path / "a")
    other, _ = fake_tree(tmp_path / "b")
    (other / "numa_repin_patch.py").write_bytes(b"VALUE = 1\n")
    py = write_exe(tmp_path / "py", "#!/bin/sh\nPYTHONPATH=%s exec %s \"$@\"\n" % (other.parent, PY))
    rc, res = run(fake_args(nova, patch, tmp_path, python=py))
    assert rc == 0 and res["changed"], res
    assert run(fake_args(nova, patch, tmp_path, python=py, state="absent"))[0] == 0

    # a Python that has imported the other nova before the gate can put the tree first
    (other.parent / "sitecustomize.py").write_text("import nova\n")
    before = {k: v for k, v in snapshot(nova.parent).items() if not k.endswith(".pyc")}
    rc, res = run(fake_args(nova, patch, tmp_path, python=py))
    assert rc != 0 and res["failed_step"] == "health gate" and res["rolled_back"], res
    assert "nova.compute.manager is loaded from %s" % (other / "compute" / "manager.py") in res["msg"], res["msg"]
    assert "not from %s" % nova in res["msg"]
    assert {k: v for k, v in snapshot(nova.parent).items() if not k.endswith(".pyc")} == before


@pytest.mark.parametrize("case", ["missing_dependency", "python_fails_imports", "syntax_error"])
def test_failures_roll_back_byte_identical(tmp_path, case):
    kw = {}
    step = "health gate"
    if case == "missing_dependency":
        nova, patch = fake_tree(tmp_path, new_body=b"import numa_repin_no_such_dependency\nVALUE = 42\n")
        word = "No module named 'numa_repin_no_such_dependency'"
    elif case == "python_fails_imports":
        nova, patch = fake_tree(tmp_path)
        kw["python"] = write_exe(tmp_path / "py", textwrap.dedent("""\
            #!/bin/sh
            case "$*" in *"import nova."*) echo "ImportError: simulated import failure" >&2; exit 1;; esac
            exec %s "$@"
            """ % PY))
        word = "simulated import failure"
    else:
        nova, patch = fake_tree(tmp_path, patched_mgr=b"# numa_repin_patch\ndef broken(:\n")
        step, word = "byte-compile", "py_compile"
    site = nova.parent
    # bytecode of the pristine file, as a service run would have left it
    subprocess.run([PY, "-m", "py_compile", str(nova / "compute" / "manager.py")], check=True)
    before = snapshot(site)
    rc, res = run(fake_args(nova, patch, tmp_path, **kw))
    assert rc != 0 and res["failed"] and res["changed"] is False, res
    assert res["failed_step"] == step and res["rolled_back"] is True, res
    assert ("%s failed in %s" % (step, nova)) in res["msg"] and word in res["msg"], res["msg"]
    assert "rolled back: every file is byte-identical to before" in res["msg"]
    after = snapshot(site)
    assert {k: v for k, v in after.items() if not k.endswith(".pyc")} == \
        {k: v for k, v in before.items() if not k.endswith(".pyc")}, "every file byte-identical"
    assert not any("numa_repin_patch" in k for k in after), "the new file and its bytecode are gone"
    assert res["restart"] == "not applicable"
    assert not (tmp_path / "backup" / ("_path" + str(nova)) / FAKE_RELEASE / "written.json").exists()
    # the tree works again as before, and a later good run is not confused by the failed one
    out = subprocess.run([PY, "-c", "import nova.compute.manager as m; print(m.X)"], cwd=str(site),
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "1"


def test_bytecode_by_the_given_python_and_stale_bytecode_cleared(tmp_path):
    nova, patch = fake_tree(tmp_path)
    log = tmp_path / "python.log"
    py = write_exe(tmp_path / "mypython", "#!/bin/sh\necho \"$@\" >> %s\nexec %s \"$@\"\n" % (log, PY))
    pyc_dir = nova / "compute" / "__pycache__"
    pyc_dir.mkdir()
    stale = [pyc_dir / "manager.cpython-99.pyc", nova / "compute" / "manager.pyc"]
    for s in stale:
        s.write_bytes(b"stale")
    keep = pyc_dir / "managerx.cpython-99.pyc"
    keep.write_bytes(b"not ours")
    rc, res = run(fake_args(nova, patch, tmp_path, python=py))
    assert rc == 0 and res["changed"] and res["python"] == py, res
    calls = log.read_text().splitlines()
    assert any(c.startswith("-m py_compile ") and str(nova / "compute" / "manager.py") in c for c in calls), calls
    assert not any(s.exists() for s in stale) and keep.exists()
    info = json.loads(subprocess.run(
        [PY, "-c", "import json, sys, importlib.util as u; "
         "print(json.dumps([u.cache_from_source(a) for a in sys.argv[1:]] + [u.MAGIC_NUMBER.hex()]))", str(nova / "compute" / "manager.py"),
         str(nova / "numa_repin_patch.py")], capture_output=True, text=True, check=True).stdout)
    *pycs, magic = info
    for pyc in pycs:
        data = Path(pyc).read_bytes()
        assert data[:4].hex() == magic, pyc
    # the .pyc is of the patched source (its header records the source size)
    src = (nova / "compute" / "manager.py").read_bytes()
    assert int.from_bytes(Path(pycs[0]).read_bytes()[12:16], "little") == len(src)


def test_python27_layout_real_queens(patch_dir, tmp_path):
    """Python 2.7 keeps bytecode beside the file: compiled there, cleared on the way back."""
    if not os.access(PY27, os.X_OK):
        pytest.fail("no Python 2.7 at %s: this test needs it (pyenv install 2.7.18, as tests/nova_patch/py27.sh "
                    "and the Queens harness venv use)" % PY27, pytrace=False)
    nova = unpack_nova(tmp_path / "site-packages", "17.0.13")
    (nova / "compute" / "manager.pyc").write_bytes(b"stale")
    a = base_args(patch_dir, nova, tmp_path, python=PY27)
    rc, res = run(a)
    assert rc == 0 and res["changed"] and res["release"] == "17.0.13" and res["python_version"] == "2.7", res
    pyc = (nova / "compute" / "manager.pyc").read_bytes()
    magic = subprocess.run([PY27, "-c", "import imp, sys; sys.stdout.write(imp.get_magic().encode('hex'))"],
                           capture_output=True, text=True, check=True).stdout
    assert pyc[:4].hex() == magic
    rc, res = run(dict(a, state="absent"))
    assert rc == 0 and res["changed"], res
    assert_pristine(nova, "17.0.13")


# --- absent without a pristine copy, the lock, bad input, schema -----------------------------------


def test_absent_without_any_pristine_copy_fails_clearly(patch_dir, tmp_path):
    site = tmp_path / "site-packages"
    nova = unpack_nova(site, "19.3.2")
    a = base_args(patch_dir, nova, tmp_path)
    assert run(a)[0] == 0
    # the host backup alone is enough
    for orig in nova.rglob("*.numa-repin.orig"):
        orig.unlink()
    before = snapshot(site)
    assert run(dict(a, state="absent"), check_mode=True)[1]["changed"]
    # and without either: refused, naming the file and how to get pristine Nova back
    shutil.rmtree(tmp_path / "backup" / ("_path" + str(nova)) / "19.3.2" / "nova")
    rc, res = run(dict(a, state="absent"))
    assert rc != 0 and res["failed"] and res["changed"] is False, res
    assert "holds numa-repin hooks, but no original is kept" in res["msg"], res["msg"]
    assert "%s/" % nova in res["msg"] and "reinstall this Nova" in res["msg"], res["msg"]
    assert snapshot(site) == before


def test_the_rollout_lock_serialises_runs(patch_dir, tmp_path):
    site = tmp_path / "site-packages"
    nova = unpack_nova(site, "19.3.2")
    (tmp_path / "backup").mkdir()
    lock = open(tmp_path / "backup" / ".rollout.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    f = tmp_path / "args.json"
    f.write_text(json.dumps(base_args(patch_dir, nova, tmp_path)))
    before = snapshot(site)
    p = subprocess.Popen([str(MODULE), str(f)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        assert p.poll() is None, "waits for the lock"
        assert snapshot(site) == before, "changes nothing while another rollout holds the lock"
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    out, _ = p.communicate(timeout=120)
    res = json.loads(out)
    assert p.returncode == 0 and res["changed"], res


@pytest.mark.parametrize("bad,word", [
    ({"containers": {"nova_compute": ["compute/"]}}, "`path` and `containers` exclude each other"),
    ({"path": "MISSING"}, "does not exist"),
    ({"path": "PARENT"}, "not named nova"),
    ({"path": "NOINIT"}, "no __init__.py"),
    ({"parts": []}, "`parts` is empty"),
    ({"python": "/nonexistent/python3"}, "cannot run `/nonexistent/python3`"),
    ({"python": "/bin/false"}, "set `python`"),
    ({"patch_dir": "/nonexistent"}, "cannot read /nonexistent/hooks.toml"),
    ({"patch_dir": 5}, "patch_dir"),
    ({"path": 7}, "path"),
    ({"parts": "compute/"}, "parts"),
])
def test_bad_input_fails_clearly_and_changes_nothing(patch_dir, tmp_path, bad, word):
    site = tmp_path / "site-packages"
    nova = unpack_nova(site, "19.3.2")
    (tmp_path / "nova").mkdir()
    paths = {"MISSING": str(tmp_path / "nowhere" / "nova"), "PARENT": str(site), "NOINIT": str(tmp_path / "nova")}
    a = base_args(patch_dir, nova, tmp_path)
    a.update({k: paths.get(v, v) if isinstance(v, str) else v for k, v in bad.items()})
    before = snapshot(site)
    rc, res = run(a)
    assert rc != 0 and res["failed"] is True and res["changed"] is False, res
    assert word in res["msg"], res["msg"]
    assert snapshot(site) == before


def test_parts_without_path_is_refused(patch_dir, tmp_path):
    rc, res = run({"parts": ["compute/"], "backup_dir": str(tmp_path / "b")})
    assert rc != 0 and res["failed"] and "`parts` goes with `path`" in res["msg"], res


def test_schema_documents_path_and_parts():
    schema = json.loads(subprocess.run([str(MODULE), "--schema"], capture_output=True, text=True, check=True).stdout)
    props = schema["properties"]
    for name in ("path", "parts", "python", "containers", "health_import"):
        assert props[name].get("description"), name
    assert "containers" in props["path"]["description"] and "__init__.py" in props["path"]["description"]
    assert "path" in props["containers"]["description"]
    assert schema.get("required", []) == [], "every argument has a default (the patch is built in)"
    assert "hooks.toml" in props["patch_dir"]["description"]
    assert props["containers"]["default"]["nova_compute"] == ["compute/", "virt/", "numa_repin_patch.py"]
