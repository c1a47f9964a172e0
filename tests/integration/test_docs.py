"""Module docs: every module has a sidecar doc that ansible-doc renders, and its options are
exactly the module's --schema (the struct serde parses)."""
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted(p.stem for p in (REPO / "src" / "bin").glob("*.rs"))


@pytest.mark.parametrize("module", MODULES)
def test_documented_options_equal_schema(module):
    doc_file = REPO / "library" / f"{module}.yml"
    assert doc_file.exists(), f"no sidecar doc for {module}: write docs/modules/{module}.yml and run scripts/gen_module_docs.py"
    doc = yaml.safe_load(doc_file.read_text())["DOCUMENTATION"]
    schema = json.loads(subprocess.run([str(REPO / "library" / module), "--schema"], capture_output=True, text=True, check=True).stdout)
    assert set(doc["options"]) == set(schema["properties"])
    for name, opt in doc["options"].items():
        assert opt["required"] == (name in schema.get("required", [])), name
        assert opt["description"], name


def test_generated_docs_are_current():
    p = subprocess.run(["python3", str(REPO / "scripts/gen_module_docs.py"), "--check"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders(module):
    p = subprocess.run(["ansible-doc", "-M", str(REPO / "library"), module], capture_output=True, text=True,
                       env={"PATH": subprocess.os.environ["PATH"], "ANSIBLE_NOCOLOR": "1", "HOME": "/root"})
    assert p.returncode == 0, p.stderr
    assert module in p.stdout and "EXAMPLES" in p.stdout and "RETURN VALUES" in p.stdout


# --- docs/design.md: the design and contracts live in the repository ---------------------------

DESIGN = REPO.joinpath("docs/design.md")
# Any token naming a design file (the name in any case, in any directory).
DESIGN_REF = re.compile(r"(?i)[\w./-]*\bdesign\.md")
# "docs/design.md §2", "docs/design.md` §2.4" or "docs/design.md section 3": the section a citation names.
SECTION_REF = re.compile(r"docs/design\.md`?\s*(?:§|section\s+)(\d+(?:\.\d+)?)")


def tracked_files():
    """The repository's tracked files (git ls-files); outside a git checkout, every file but build output."""
    p = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True)
    if p.returncode == 0 and p.stdout:
        return [REPO / f for f in p.stdout.decode().split("\0") if f]
    skip = {".git", "target", "__pycache__"}
    return [f for f in REPO.rglob("*") if f.is_file() and not skip & set(f.relative_to(REPO).parts)]


def texts():
    for f in tracked_files():
        if not f.is_file() or f.stat().st_size > 4 << 20:
            continue
        try:
            yield f, f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


def design_sections():
    """{"2", "2.4", ...}: the numbers of docs/design.md's sections (## N. and ### N.M headings)."""
    out = set()
    for line in DESIGN.read_text().splitlines():
        m = re.match(r"#{2,3} (\d+(?:\.\d+)?)\.? ", line)
        if m:
            out.add(m.group(1))
    return out


def test_design_doc_is_in_the_repository():
    assert DESIGN.is_file(), "docs/design.md is missing: the design and contracts every citation points at"
    assert {"1", "2", "3", "4", "5", "6"} <= design_sections(), sorted(design_sections())


def test_every_design_citation_points_at_docs_design_md():
    """No tracked file cites a design file other than docs/design.md (the one outside the repository
    is not in a clone), and every section a citation names exists."""
    sections = design_sections() if DESIGN.is_file() else set()
    bad = []
    for f, text in texts():
        rel = f.relative_to(REPO)
        for n, line in enumerate(text.splitlines(), 1):
            for m in DESIGN_REF.finditer(line):
                if not m.group(0).endswith("docs/design.md"):
                    bad.append("%s:%d cites %r, not docs/design.md" % (rel, n, m.group(0)))
            for m in SECTION_REF.finditer(line):
                if m.group(1) not in sections:
                    bad.append("%s:%d cites docs/design.md §%s, which has no such section" % (rel, n, m.group(1)))
    assert not bad, "\n".join(bad)
