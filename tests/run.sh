#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (root): installs what it needs, builds,
# brings the lab up, runs every test. Prints the time of each phase. This is README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
start=$(date +%s)
phase() { # name, command...
  local n=$1; shift
  local t0=$(date +%s)
  echo "=== phase: $n"
  "$@"
  echo "=== phase: $n took $(( $(date +%s) - t0 )) s"
}
phase deps bash scripts/install-deps.sh
# The Nova harness venvs and the Nova 22.4.0 (Victoria) venv of tests/integration/test_victoria_rows.py (pip,
# mostly waiting on downloads) build while cargo compiles; cached after.
venvs_log=$(mktemp)
( for r in 19.3.2 18.3.0 17.0.13; do tests/nova_harness/venv.sh "$r" || exit 1; done
  tests/lab/venv.sh nova-victoria || exit 1 ) >"$venvs_log" 2>&1 &
venvs_pid=$!
phase build bash scripts/build.sh
phase cargo-test cargo test --release --quiet
phase fuzz bash tests/fuzz.sh
if [ -x tests/lab/lab.sh ] && [ "${NUMA_REPIN_NO_LAB:-0}" != 1 ]; then
  phase lab-up tests/lab/lab.sh up
fi
harness_venvs() { wait "$venvs_pid" || { cat "$venvs_log"; return 1; }; }
phase harness-venvs harness_venvs
phase pytest python3 -m pytest -q -p no:cacheprovider tests
echo "=== all phases passed in $(( $(date +%s) - start )) s"
