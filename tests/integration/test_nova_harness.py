"""The in-band Nova patch inside Nova's own services: tests/nova_harness/run.sh runs Nova's own
functional-test harness of the release (Stein 19.3.2 on Python 3.7, and early point releases of each
series in its venv: Queens 17.0.9 on 2.7, Rocky 18.1.0 on 3.6, Stein 19.0.0 on 3.7) (API, conductor, scheduler, libvirt computes over an extended fakelibvirt,
resource trackers, placement) on the pristine tree (the control) and on the tree
`deploy_patched_nova path:` patches, in the same run, and prints what each did."""
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _reports(out, section):
    body = out.split("=== %s" % section, 1)[1].split("\n=== ", 1)[0]
    return body, [json.loads(l.split(" ", 1)[1]) for l in body.splitlines()
                  if l.startswith("NUMA-REPIN-HARNESS ")]


# (venv's release, point release run in it): Stein's last, and an early release of each series run
# in its series' venv (17.0.9 and 18.1.0 predate Nova's NUMA refusal, where the hooks take their
# other variant). Every point release goes through the rollout in test_deploy_patch_path.py; the
# harness costs a minute or two a release, so CI runs these four.
CASES = [("19.3.2", "19.3.2"), ("17.0.13", "17.0.9"), ("18.3.0", "18.1.0"), ("19.3.2", "19.0.0")]
NO_REFUSAL = {"17.0.9", "18.1.0"}


@pytest.mark.parametrize("venv,release", CASES)
def test_harness_patched_and_pristine_control(venv, release, tmp_path):
    r = subprocess.run(["bash", str(REPO / "tests/nova_harness/run.sh"), venv, release],
                       env=dict(os.environ, NUMA_REPIN_HARNESS_WORK=str(tmp_path)),
                       capture_output=True, text=True, timeout=1800)
    print(r.stdout)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    deploy = json.loads((tmp_path / "deploy.out").read_text())
    assert deploy["changed"] and deploy["release"] == release, deploy

    control, seen = _reports(r.stdout, "pristine Nova %s (control)" % release)
    assert "Ran 2 tests" in control and "\nOK" in control, control
    outcome = {s["test"].rsplit(".", 1)[1]: s for s in seen}
    first = outcome["test_refuses_pinned_live_migration"]["outcome"]
    assert first == ("no refusal: landed on the other guest's pCPUs" if release in NO_REFUSAL else "refused"), first
    variant = deploy["hooks"]["conductor/tasks/live_migrate.py"][1]
    assert variant.endswith("(before 17.0.11 and 18.2.0)" if release in NO_REFUSAL else "19.x)"), variant
    copied = outcome["test_workaround_copies_source_pins"]
    assert copied["outcome"] == "landed on the other guest's pCPUs", copied

    patched, seen = _reports(r.stdout, "patched Nova %s" % release)
    assert "Ran 9 tests" in patched and "\nOK" in patched, patched
    moved = [s for s in seen if "dest_pins" in s]
    assert moved and all(not set(s["dest_pins"]) & set(s["source_pins"]) for s in moved), moved
    claims = [s["claims"] for s in seen if "claims" in s]
    assert claims and len(claims[0]) == 2
    a, b = claims[0].values()
    assert not set(a) & set(b), claims
