"""Module docs: every module has a sidecar doc that ansible-doc renders, and its options are
exactly the module's --schema (the struct serde parses)."""
import json
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
