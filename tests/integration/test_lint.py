"""ansible-lint, production profile, on the playbooks and roles operators run."""
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ansible_lint_production_profile():
    env = dict(os.environ, ANSIBLE_LIBRARY=str(REPO / "library"), NO_COLOR="1")
    p = subprocess.run(["ansible-lint", "--format=pep8", "playbooks", "roles"], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Profile 'production' was required, and it passed" in p.stdout + p.stderr
