"""Pristine Nova for the rollout tests, and an independent reading of roles/nova_patch/hooks.toml.

Nova is downloaded at test time (PyPI wheels, cached under /var/cache/numa-repin/nova-wheels);
nothing of it is kept in the repository. `expected()` applies the hooks with this file's own
few lines of Python (anchor once, or the `absent` text nowhere), an oracle the Rust module is
checked against."""
import hashlib
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOOKS = REPO / "roles" / "nova_patch" / "hooks.toml"
CORE = REPO / "roles" / "nova_patch" / "src" / "numa_repin_patch.py"
CACHE = Path(os.environ.get("NUMA_REPIN_WHEELS", "/var/cache/numa-repin/nova-wheels"))
# Every point release PyPI serves of Queens, Rocky and Stein.
RELEASES = (["17.0.%d" % n for n in range(7, 14)] + ["18.0.2", "18.0.3", "18.1.0"]
            + ["18.2.%d" % n for n in range(4)] + ["18.3.0"]
            + ["19.0.%d" % n for n in range(4)] + ["19.1.0", "19.2.0", "19.3.0", "19.3.1", "19.3.2"])


def sha(data):
    return hashlib.sha256(data).hexdigest()


def wheel(release):
    path = CACHE / ("nova-%s-py2.py3-none-any.whl" % release)
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "nova==%s" % release, "-d", str(CACHE)], check=True, timeout=600)
    return path


def extract(release, dest):
    """The wheel's nova package and dist-info under dest; returns dest/nova."""
    with zipfile.ZipFile(wheel(release)) as z:
        z.extractall(dest, [n for n in z.namelist() if n.startswith("nova/") or ".dist-info/" in n])
    return Path(dest) / "nova"


def groups(text):
    """{file: [[variant, ...] per hook]} of a hooks.toml text, in hook order."""
    out = {}
    for h in tomllib.loads(text)["hook"]:
        per = out.setdefault(h["file"], [])
        if per and per[-1][0]["name"] == h["name"]:
            per[-1].append(h)
        else:
            per.append([h])
    return out


def hooks():
    return groups(HOOKS.read_text())


def _match(text, variants):
    """The one variant that matches (its anchor once, or its `absent` text nowhere); ValueError naming the hook."""
    ok = [v for v in variants
          if ("absent" in v and v["absent"] not in text) or ("anchor" in v and text.count(v["anchor"]) == 1)]
    if len(ok) != 1:
        raise ValueError(variants[0]["name"])
    return ok[0]


def _edit(text, v):
    if "anchor" not in v:
        return text
    new = (v["anchor"] + v["after"] if "after" in v else
           v["before"] + v["anchor"] if "before" in v else v["replace"])
    return text.replace(v["anchor"], new, 1)


def apply(text, variants_per_hook):
    """The hooked text, or raise ValueError naming the hook that does not match."""
    for variants in variants_per_hook:
        text = _edit(text, _match(text, variants))
    return text


def used(text, variants_per_hook):
    """The hook names the module reports for a file (`name: variant` where a hook has variants)."""
    out = []
    for variants in variants_per_hook:
        v = _match(text, variants)
        out.append(variants[0]["name"] if len(variants) == 1 else "%s: %s" % (variants[0]["name"], v["variant"]))
        text = _edit(text, v)
    return out


def paths():
    return list(hooks()) + ["numa_repin_patch.py"]


def expected(release):
    """{path: (pristine sha256 or None, patched sha256)} for a release's wheel."""
    out = {}
    with zipfile.ZipFile(wheel(release)) as z:
        for path, hs in hooks().items():
            pristine = z.read("nova/" + path)
            out[path] = (sha(pristine), sha(apply(pristine.decode("utf-8"), hs).encode("utf-8")))
    out["numa_repin_patch.py"] = (None, sha(CORE.read_bytes()))
    return out
