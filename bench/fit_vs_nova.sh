#!/usr/bin/env bash
# Nova 19.3.2 vs our fit engine on the same freshly generated cases: decisions, validity, speed.
#
#   bench/fit_vs_nova.sh [-n COUNT] [-s SEED] [--nova-repeat N] [--ours-repeat N] [-o DIR]
#
# Generates COUNT cases (tests/nova_equiv/gen_cases.py), runs Nova's numa_get_constraints +
# numa_fit_instance_to_host on each in the Nova venv (tests/lab/venv.sh nova, Python 3.7) timing
# every decision over --nova-repeat runs, runs ours (examples/fit_bench.rs, release build) timing
# each decision over --ours-repeat runs, then prints the agreement (tests/nova_equiv/compare.py),
# the validity of both sides' placements (check_placement.py) and the per-decision times and
# speed ratio (target: ours >= 200x faster). Outputs stay in DIR (default
# /var/cache/numa-repin/equiv/bench-<time>); nothing is written into the repository.
# Exit status: 0 when everything agrees (Nova's path-dependent misses excepted), both sides'
# placements are valid and the ratio meets the target; 1 otherwise.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
count=2000 seed=42 nrep=20 orep=500 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    -n) count=$2; shift 2 ;;
    -s) seed=$2; shift 2 ;;
    --nova-repeat) nrep=$2; shift 2 ;;
    --ours-repeat) orep=$2; shift 2 ;;
    -o) out=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "fit_vs_nova: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
out=${out:-${NUMA_REPIN_CACHE:-/var/cache/numa-repin}/equiv/bench-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$out"
eq="$repo/tests/nova_equiv"
venv=$("$repo/tests/lab/venv.sh" nova)

echo "== $count cases, seed $seed -> $out"
python3 "$eq/gen_cases.py" --seed "$seed" --count "$count" -o "$out/cases.jsonl"

echo "== Nova 19.3.2 ($("$venv/bin/python" -V 2>&1)), $nrep repeats per decision"
"$venv/bin/python" "$eq/nova_fit.py" "$out/cases.jsonl" --timing "$nrep" -o "$out/nova.jsonl" 2>"$out/nova.log"
grep '^nova_fit:' "$out/nova.log"

echo "== ours (release), $orep repeats per decision"
(cd "$repo" && cargo build -q --release --example fit_bench)
"$repo/target/release/examples/fit_bench" "$out/cases.jsonl" --repeat "$orep" -o "$out/ours.jsonl" 2>"$out/ours.log"
grep '^fit_bench:' "$out/ours.log"

rc=0
echo "== agreement"
python3 "$eq/compare.py" "$out/cases.jsonl" "$out/nova.jsonl" "$out/ours.jsonl" --show 1 --json "$out/disagreements.json" >"$out/compare.txt" || rc=1
head -c 6000 "$out/compare.txt"; echo
echo "== validity"
python3 "$eq/check_placement.py" "$out/cases.jsonl" "$out/nova.jsonl" --label nova --max-print 3 || echo "   (Nova findings above: Nova's own placements the rules reject)"
python3 "$eq/check_placement.py" "$out/cases.jsonl" "$out/ours.jsonl" --label ours --max-print 5 || rc=1

echo "== speed"
python3 - "$out/nova.jsonl" "$out/ours.jsonl" "$out/speed.json" <<'PY' || rc=1
import json, math, statistics, sys
def load(p):
    return {r["id"]: r for r in map(json.loads, filter(str.strip, open(p)))}
nova, ours = load(sys.argv[1]), load(sys.argv[2])
ids = sorted(i for i in nova if i in ours and nova[i].get("ns") and ours[i].get("ns"))
def cat(r):
    if r.get("error"): return "request_error"
    if not r.get("numa"): return "no_numa"
    return "fit" if r.get("fits") else "no_fit"
rows = {}
for i in ids:
    rows.setdefault(cat(nova[i]), []).append(i)
rows["all"] = ids
res = {}
print("   %-14s %6s %14s %14s %12s %12s %9s %9s" % ("outcome", "cases", "nova mean ns", "ours mean ns",
      "nova p50 ns", "ours p50 ns", "ratio", "geo ratio"))
for k in ("all", "fit", "no_fit", "request_error", "no_numa"):
    sel = rows.get(k, [])
    if not sel:
        continue
    nm = statistics.mean(nova[i]["ns"] for i in sel)
    om = statistics.mean(max(1, ours[i]["ns"]) for i in sel)
    geo = math.exp(statistics.mean(math.log(nova[i]["ns"] / max(1, ours[i]["ns"])) for i in sel))
    res[k] = {"cases": len(sel), "nova_mean_ns": nm, "ours_mean_ns": om, "ratio": nm / om, "geo_ratio": geo,
              "nova_p50_ns": statistics.median(nova[i]["ns"] for i in sel),
              "ours_p50_ns": statistics.median(ours[i]["ns"] for i in sel)}
    r = res[k]
    print("   %-14s %6d %14.0f %14.0f %12.0f %12.0f %8.0fx %8.0fx" % (k, len(sel), nm, om, r["nova_p50_ns"],
          r["ours_p50_ns"], r["ratio"], geo))
json.dump(res, open(sys.argv[3], "w"), indent=1)
ok = res["all"]["ratio"] >= 200
print("   speed ratio (mean per decision) %.0fx: %s the 200x target" % (res["all"]["ratio"], "meets" if ok else "MISSES"))
sys.exit(0 if ok else 1)
PY
echo "== outputs in $out"
exit $rc
