#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (root): installs what it needs, builds,
# brings the lab up, runs every test. Prints the time of each phase. This is README's test command.
#
#   bash tests/run.sh           everything (CI runs this through .ci/run)
#   bash tests/run.sh --quick   the edit loop: no install, no lab. Builds library/ (scripts/build.sh), runs
#                               `cargo test` (debug) and the pytest tests that need no lab (not marked `lab`:
#                               tests/integration/conftest.py marks every test that uses the lab fixture),
#                               but for the few slow ones listed in QUICK_SKIP below.
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

# --quick leaves out, beyond the lab's tests, these slow tests that need no lab (the full run has them;
# tests/nova_equiv, Nova itself on 1500 generated cases, is not in --quick's paths either):
QUICK_SKIP=(
  tests/integration/test_nova_harness.py   # the patch in Nova's functional harness, three release venvs: minutes
  tests/integration/test_deploy_patch_path.py  # the rollout on every Queens/Rocky/Stein point release: minutes
  tests/integration/test_lint.py           # ansible-lint, production profile: half a minute and more
  tests/nova_patch/test_fit_agreement.py   # generated cases through the patch's fit in the Nova 19.3.2 venv
)
quick_pytest() {
  local ignore=() p
  for p in "${QUICK_SKIP[@]}"; do ignore+=("--ignore=$p"); done
  python3 -m pytest -q -p no:cacheprovider -m "not lab" "${ignore[@]}" tests/integration tests/nova_patch
}
# Lint gates: formatting, clippy with warnings denied, rustdoc with warnings denied.
gates() {
  cargo fmt --check
  cargo clippy --quiet --all-targets -- -D warnings
  RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps
}
case "${1:-}" in
  "") ;;
  --quick)
    phase build bash scripts/build.sh
    phase gates gates
    phase cargo-test cargo test --quiet
    phase pytest-no-lab quick_pytest
    echo "=== quick phases passed in $(( $(date +%s) - start )) s (the lab's tests and ${QUICK_SKIP[*]}: bash tests/run.sh)"
    exit 0 ;;
  *) echo "usage: bash tests/run.sh [--quick]" >&2; exit 2 ;;
esac

phase deps bash scripts/install-deps.sh
# The Nova harness venvs and the Nova 22.4.0 (Victoria) venv of tests/integration/test_victoria_rows.py (pip,
# mostly waiting on downloads) build while cargo compiles; cached after.
venvs_log=$(mktemp)
( for r in 19.3.2 18.3.0 17.0.13; do tests/nova_harness/venv.sh "$r" || exit 1; done
  tests/lab/venv.sh nova-victoria || exit 1 ) >"$venvs_log" 2>&1 &
venvs_pid=$!
# The SMT hosts' root image (debootstrap, mostly downloads; cached under /var/cache) builds meanwhile too.
smt_image_log=$(mktemp)
tests/lab/smt.sh image >"$smt_image_log" 2>&1 &
smt_image_pid=$!
phase gates gates
phase build bash scripts/build.sh
phase cargo-test cargo test --release --quiet
phase fuzz bash tests/fuzz.sh
if [ -x tests/lab/lab.sh ] && [ "${NUMA_REPIN_NO_LAB:-0}" != 1 ]; then
  phase lab-up tests/lab/lab.sh up
  smt_image() { wait "$smt_image_pid" || { cat "$smt_image_log"; return 1; }; cat "$smt_image_log"; }
  phase smt-image smt_image
  # The SMT hosts boot (TCG, a minute or two) while the other tests run; tests/integration/test_smt_hosts.py
  # waits for them (tests/lab/smt.sh up's ready marker) and names this log if they fail.
  tests/lab/smt.sh up >/var/log/numa-repin-smt-up.log 2>&1 &
fi
harness_venvs() { wait "$venvs_pid" || { cat "$venvs_log"; return 1; }; }
phase harness-venvs harness_venvs
phase pytest python3 -m pytest -q -p no:cacheprovider --durations=25 tests
echo "=== all phases passed in $(( $(date +%s) - start )) s"
