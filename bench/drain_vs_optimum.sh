#!/usr/bin/env bash
# Drain planning against the optimum on generated tight drains: placed guests and time per plan.
#
#   bench/drain_vs_optimum.sh [-n COUNT] [-s SEED] [--large N]
#
# Runs examples/drain_bench.rs (release build): COUNT (default 200) random tight drains of 2-5
# candidate hosts x 2 NUMA cells, partly pinned, 4-12 pinned guests, and prints the guests placed
# by the greedy plan, by plan_drain, the upper bound, an independent exhaustive search's optimum
# where it finishes, and the time per plan; then the time of plan_drain on N (default 5)
# 60-guest / 100-host tight drains. Same seed, same drains. Nothing is asserted or written.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
count=200 seed=20240601 large=5
while [ $# -gt 0 ]; do
  case "$1" in
    -n) count=$2; shift 2 ;;
    -s) seed=$2; shift 2 ;;
    --large) large=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "drain_vs_optimum: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
cd "$repo"
cargo run --quiet --release --example drain_bench -- --count "$count" --seed "$seed" --large "$large"
