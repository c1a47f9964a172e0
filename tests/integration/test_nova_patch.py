"""The in-band Nova patch (roles/nova_patch): reproducible from pristine Nova, applies cleanly to
17.0.13, 18.3.0 and 19.3.2, byte-compiles on Python 2.7 and 3, and its core suite passes on 2.7;
its hooks run inside Nova's own services in tests/nova_harness (test_nova_harness.py)."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PATCH = REPO / "roles" / "nova_patch"
RELEASES = ["17.0.13", "18.3.0", "19.3.2"]
WHEELS = os.environ.get("NUMA_REPIN_WHEELS", "/var/cache/numa-repin/nova-wheels")
PY27 = os.environ.get("NUMA_REPIN_PY27", "/root/.pyenv/versions/2.7.18/bin/python")


def test_patch_is_built_from_pristine_nova():
    r = subprocess.run([sys.executable, str(PATCH / "build.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("release", RELEASES)
def test_diff_applies_to_pristine_and_compiles(release, tmp_path):
    wheel = Path(WHEELS) / ("nova-%s-py2.py3-none-any.whl" % release)
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "nova==%s" % release, "-d", WHEELS], check=True)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path, [n for n in z.namelist() if n.startswith("nova/")])
    diff = (PATCH / "files" / release / "nova.diff").read_text()
    r = subprocess.run(["patch", "-p1", "--forward", "--batch"], input=diff, cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ".rej" not in r.stdout and "offset" not in r.stdout.lower() and "fuzz" not in r.stdout.lower()
    manifest = json.loads((PATCH / "files" / release / "manifest.json").read_text())
    assert manifest["release"] == release
    paths = []
    for f in manifest["files"]:
        applied = (tmp_path / "nova" / f["path"]).read_bytes()
        assert applied == (PATCH / "files" / release / "nova" / f["path"]).read_bytes(), f["path"]
        paths.append(str(tmp_path / "nova" / f["path"]))
    assert {f["path"] for f in manifest["files"]} == {
        "conductor/tasks/live_migrate.py", "virt/libvirt/driver.py", "compute/manager.py",
        "compute/resource_tracker.py", "numa_repin_patch.py"}
    for py in (PY27, sys.executable):
        r = subprocess.run([py, "-m", "py_compile"] + paths, capture_output=True, text=True)
        assert r.returncode == 0, "%s: %s" % (py, r.stderr)


def test_core_suite_passes_on_python27():
    r = subprocess.run(["bash", str(REPO / "tests" / "nova_patch" / "py27.sh")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
