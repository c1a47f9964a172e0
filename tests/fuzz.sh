#!/usr/bin/env bash
# Run every libFuzzer target in fuzz/ briefly (FUZZ_SECONDS each, default 10), seeded with the
# test fixtures. cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain
# (the only one these machines have) accept them. A crash fails the script and leaves the
# input under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
secs=${FUZZ_SECONDS:-10}
command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
seed() { # target, files...
  local t=$1; shift
  mkdir -p "fuzz/corpus/$t"
  for f in "$@"; do cp "$f" "fuzz/corpus/$t/" 2>/dev/null || true; done
}
seed capabilities tests/fixtures/saved/caps-2s12c2t.xml
seed domain tests/fixtures/saved/*-1.xml
seed nova_conf tests/fixtures/saved/nova.conf
printf '0-3,^2,8-11' > fuzz/corpus/seed-cpu 2>/dev/null; seed cpu_spec fuzz/corpus/seed-cpu
printf '{"host":{"cells":[{"id":0,"cpuset":[0,1,2,3],"siblings":[[0,1],[2,3]],"pinned_cpus":[1],"memory":4096,"mempages":[{"size_kb":4,"total":1048576}]}]},"request":{"vcpus":2,"memory_mb":1024,"extra_specs":{"hw:cpu_policy":"dedicated","hw:cpu_thread_policy":"isolate"}}}' > fuzz/corpus/seed-fit; seed fit_request fuzz/corpus/seed-fit
cd fuzz
cargo fuzz build --release 2>&1 | grep -vE '^\s*(Compiling|Finished|Running)' || true
for t in capabilities domain cpu_spec nova_conf fit_request; do
  out=$(cargo fuzz run --release "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=65536 2>&1) || { echo "$out" | tail -40; echo "fuzz: $t CRASHED" >&2; exit 1; }
  echo "fuzz: $t: $(echo "$out" | grep -E '^Done [0-9]+ runs' | tail -1), no crash"
done
