"""Live equivalence: fresh generated cases, Nova 19.3.2 (in its Python 3.7 venv) vs our engine.

    python3 -m pytest tests/nova_equiv/test_equiv.py -q
    NOVA_EQUIV_COUNT=5000 NOVA_EQUIV_SEED=99 python3 -m pytest tests/nova_equiv/test_equiv.py -q

Generates NOVA_EQUIV_COUNT cases (default 1500, seed NOVA_EQUIV_SEED, default 20261123) with
gen_cases.py, runs nova_fit.py in the Nova venv (tests/lab/venv.sh nova; built on first use,
~80 s; a failure when Python 3.7 is not available) and examples/fit_bench.rs (release build),
then checks with compare.py / check_placement.py:
  - every decision agrees (request error class, no NUMA, fit, no fit), except where Nova's own
    search is path-dependent (fits_fresh, see nova_fit.py): there ours must fit;
  - every placement we return is valid;
  - Nova's own placements are checked too; any it gets wrong are printed as Nova findings (not
    failures: they are Nova's bugs, not ours).
Outputs go to $NUMA_REPIN_CACHE/equiv/pytest-<seed>-<count>/ (default /var/cache/numa-repin).
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import check_placement  # noqa: E402
import compare  # noqa: E402

COUNT = int(os.environ.get("NOVA_EQUIV_COUNT", "1500"))
SEED = int(os.environ.get("NOVA_EQUIV_SEED", "20261123"))


def _load(path):
    with open(path) as f:
        return {r["id"]: r for r in map(json.loads, filter(str.strip, f))}


@pytest.fixture(scope="module")
def run():
    out = os.path.join(os.environ.get("NUMA_REPIN_CACHE", "/var/cache/numa-repin"), "equiv",
                       "pytest-%d-%d" % (SEED, COUNT))
    os.makedirs(out, exist_ok=True)
    try:
        venv = subprocess.run([os.path.join(REPO, "tests/lab/venv.sh"), "nova"], check=True,
                              stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.fail("no Nova 19.3.2 venv (tests/lab/venv.sh nova): %s" % e)
    cases = os.path.join(out, "cases.jsonl")
    subprocess.run([sys.executable, os.path.join(HERE, "gen_cases.py"), "--seed", str(SEED),
                    "--count", str(COUNT), "-o", cases], check=True)
    nova = os.path.join(out, "nova.jsonl")
    subprocess.run([os.path.join(venv, "bin/python"), os.path.join(HERE, "nova_fit.py"), cases,
                    "-o", nova], check=True)
    subprocess.run(["cargo", "build", "-q", "--release", "--example", "fit_bench"], cwd=REPO,
                   check=True)
    ours = os.path.join(out, "ours.jsonl")
    subprocess.run([os.path.join(REPO, "target/release/examples/fit_bench"), cases, "--repeat",
                    "0", "-o", ours], check=True)
    return {"cases": _load(cases), "nova": _load(nova), "ours": _load(ours), "dir": out}


def test_decisions_agree_with_nova(run):
    cases, nova, ours = run["cases"], run["nova"], run["ours"]
    assert set(cases) == set(nova) == set(ours)
    bad = []
    path_dependent = 0
    for i in sorted(cases):
        want, got = compare.outcome(nova[i]), compare.outcome(ours[i])
        if want == "crash":
            print("Nova finding, case %d: Nova crashed: %s" % (i, nova[i]["crash"]))
            continue
        if want == "no_fit" and nova[i].get("fits_fresh"):
            want = "fit"  # Nova misses it only through its path-dependent search
            path_dependent += 1
        if want != got:
            bad.append((compare.size(cases[i]), i, want, got))
    bad.sort()
    lines = ["case %d: nova %s, ours %s: %s" % (i, w, g, json.dumps(cases[i]["request"]))
             for _, i, w, g in bad[:25]]
    print("%d cases, %d path-dependent Nova misses, %d disagreements (outputs in %s)"
          % (len(cases), path_dependent, len(bad), run["dir"]))
    assert not bad, "%d of %d cases disagree with Nova 19.3.2 (smallest first):\n%s" % (
        len(bad), len(cases), "\n".join(lines))


def test_our_placements_are_valid(run):
    cases, ours = run["cases"], run["ours"]
    invalid = {i: check_placement.check(cases[i], r) for i, r in ours.items()}
    invalid = {i: v for i, v in invalid.items() if v}
    assert not invalid, "invalid placements of ours:\n%s" % "\n".join(
        "case %d: %s" % (i, "; ".join(m for _, m in v)) for i, v in sorted(invalid.items())[:25])


def test_nova_placements_checked(run):
    cases, nova = run["cases"], run["nova"]
    checked = sum(1 for r in nova.values() if r.get("fits") and r.get("numa"))
    findings = {i: check_placement.check(cases[i], r) for i, r in nova.items()}
    findings = {i: v for i, v in findings.items() if v}
    for i, v in sorted(findings.items())[:10]:
        print("Nova finding, case %d: %s" % (i, "; ".join(m for _, m in v)))
    print("%d Nova placements checked, %d Nova findings" % (checked, len(findings)))
    assert checked > 0
