"""What the equivalence tests share (tests/nova_equiv/test_equiv.py, tests/nova_patch/
test_fit_agreement.py): an output folder in the cache, the Nova 19.3.2 venv, generated cases,
our engine's answers (examples/fit_bench), and reading a JSON-lines answer file by case id."""
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import load  # noqa: E402,F401  (test_equiv.py, test_fit_agreement.py)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def out_dir(name):
    out = os.path.join(os.environ.get("NUMA_REPIN_CACHE", "/var/cache/numa-repin"), "equiv", name)
    os.makedirs(out, exist_ok=True)
    return out


def nova_python():
    """The Nova 19.3.2 venv's python; a venv that cannot be built fails the test."""
    try:
        venv = subprocess.run([os.path.join(REPO, "tests/lab/venv.sh"), "nova"], check=True,
                              stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.fail("no Nova 19.3.2 venv (tests/lab/venv.sh nova): %s" % e)
    return os.path.join(venv, "bin", "python")


def gen_cases(out, seed, count):
    cases = os.path.join(out, "cases.jsonl")
    subprocess.run([sys.executable, os.path.join(HERE, "gen_cases.py"), "--seed", str(seed),
                    "--count", str(count), "-o", cases], check=True)
    return cases


def fit_bench(cases, out):
    """Our engine (pin_fit_check's) on the cases: the path of its answers."""
    subprocess.run(["cargo", "build", "-q", "--release", "--example", "fit_bench"], cwd=REPO,
                   check=True)
    ours = os.path.join(out, "ours.jsonl")
    subprocess.run([os.path.join(REPO, "target/release/examples/fit_bench"), cases, "--repeat",
                    "0", "-o", ours], check=True)
    return ours
