#!/usr/bin/env bash
# Rebuild the committed fixture the Rust test (tests/nova_equivalence.rs) compares against:
#   fixtures/cases.jsonl        300 cases: fixtures/curated.jsonl (hand-written boundaries and
#                               known disagreements) + up to 30 cases where Nova's search is
#                               path-dependent (found in seed 7 x 20000) + generated ones (seed 11)
#   fixtures/nova-19.3.2.jsonl  Nova 19.3.2's answers for them (nova_fit.py format)
#   fixtures/nova-17.0.13.jsonl, nova-18.3.0.jsonl  the same with Queens's / Rocky's hardware.py
# Needs the Nova venv (tests/lab/venv.sh nova, built on first use, ~80 s).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=$("$repo/tests/lab/venv.sh" nova)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ncur=$(grep -c . "$here/fixtures/curated.jsonl")
python3 "$here/gen_cases.py" --seed 7 --count 20000 -o "$tmp/big.jsonl"
"$venv/bin/python" "$here/nova_fit.py" "$tmp/big.jsonl" -o "$tmp/big.nova.jsonl" 2>/dev/null
want=30
python3 - "$tmp/big.jsonl" "$tmp/big.nova.jsonl" "$want" > "$tmp/pathdep.jsonl" <<'PY'
import json, sys
cases = {json.loads(l)["id"]: json.loads(l) for l in open(sys.argv[1]) if l.strip()}
picked = []
for l in open(sys.argv[2]):
    r = json.loads(l)
    if r.get("numa") and r.get("fits_fresh") is not None and r["fits_fresh"] != r["fits"]:
        picked.append(cases[r["id"]])
picked.sort(key=lambda c: (sum(len(x["cpuset"]) for x in c["host"]["cells"]), c["request"]["vcpus"], c["id"]))
for i, c in enumerate(picked[: int(sys.argv[3])]):
    c["tags"] = ["nova-path-dependent", "from seed 7 case %d" % c["id"]] + c.get("tags", [])
    c["id"] = 200000 + i
    print(json.dumps(c, separators=(",", ":")))
PY
npath=$(grep -c . "$tmp/pathdep.jsonl" || true)
python3 "$here/gen_cases.py" --seed 11 --count $((300 - ncur - npath)) -o "$tmp/random.jsonl"
cat "$tmp/random.jsonl" "$here/fixtures/curated.jsonl" "$tmp/pathdep.jsonl" > "$here/fixtures/cases.jsonl"
"$venv/bin/python" "$here/nova_fit.py" "$here/fixtures/cases.jsonl" -o "$here/fixtures/nova-19.3.2.jsonl"
python3 "$here/check_placement.py" "$here/fixtures/cases.jsonl" "$here/fixtures/nova-19.3.2.jsonl" --label nova-fixture || true

# The same cases under Queens 17.0.13's and Rocky 18.3.0's hardware.py (on Stein's objects, see
# nova_fit.py --hardware): for release-specific modes of the engine. Sources from PyPI wheels.
cache=${NUMA_REPIN_CACHE:-/var/cache/numa-repin}/nova-src
for rel in 17.0.13 18.3.0; do
  hw="$cache/$rel/nova/virt/hardware.py"
  if [ ! -f "$hw" ]; then
    mkdir -p "$cache/$rel"
    "$venv/bin/pip" download -q --disable-pip-version-check --no-deps "nova==$rel" -d "$cache/$rel"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("nova/virt/hardware.py", sys.argv[2])' \
      "$(ls "$cache/$rel"/nova-"$rel"-*.whl)" "$cache/$rel"
  fi
  "$venv/bin/python" "$here/nova_fit.py" "$here/fixtures/cases.jsonl" --hardware "$hw" -o "$here/fixtures/nova-$rel.jsonl"
  python3 "$here/check_placement.py" "$here/fixtures/cases.jsonl" "$here/fixtures/nova-$rel.jsonl" --label "nova-$rel" --max-print 3 || true
done
