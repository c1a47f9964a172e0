"""The in-band Nova patch (roles/nova_patch): our own hooks and core, no copy of Nova in the
repository; the core suite passes on Python 2.7. The rollout applies the hooks to every point
release (test_deploy_patch_path.py); they run inside Nova's own services in tests/nova_harness
(test_nova_harness.py)."""
import subprocess
import zipfile
from pathlib import Path

import nova_hooks

REPO = Path(__file__).resolve().parents[2]


def nova_lines(releases=("17.0.7", "18.0.2", "19.3.2")):
    """Lines of Nova's own hooked files long enough to be Nova's code, not a common idiom."""
    out = set()
    for r in releases:
        with zipfile.ZipFile(nova_hooks.wheel(r)) as z:
            for path in nova_hooks.hooks():
                out.update(l.strip() for l in z.read("nova/" + path).decode("utf-8").splitlines()
                           if len(l.strip()) >= 30)
    return out


def test_no_nova_file_is_in_the_tree():
    """No tracked file is a file of any Nova point release, and none carries Nova's code beyond
    the hooks' anchors (as a copy or a diff would)."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    tracked = [REPO / f for f in files.decode().split("\0") if f and (REPO / f).is_file()]
    nova = set()
    for r in nova_hooks.RELEASES:
        with zipfile.ZipFile(nova_hooks.wheel(r)) as z:
            nova.update(nova_hooks.sha(z.read(n)) for n in z.namelist()
                        if n.startswith("nova/") and z.getinfo(n).file_size > 200)
    copies = [str(f) for f in tracked if nova_hooks.sha(f.read_bytes()) in nova]
    assert copies == []
    lines = nova_lines()
    assert len(lines) > 5000, "the reference is Nova's code"
    heavy = {}
    for f in tracked:
        try:
            text = f.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        n = sum(1 for l in text.splitlines() if l.strip() in lines)
        if n > 30:
            heavy[str(f.relative_to(REPO))] = n
    assert heavy == {}, "files carrying Nova's lines: %s" % heavy


def test_core_suite_passes_on_python27():
    r = subprocess.run(["bash", str(REPO / "tests" / "nova_patch" / "py27.sh")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
