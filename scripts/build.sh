#!/usr/bin/env bash
# Build the modules in release mode and install them into library/ where Ansible finds them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --quiet
for src in src/bin/*.rs; do
  m=$(basename "$src" .rs)
  install -m 0755 "target/release/$m" "library/$m"
done
echo "build: installed $(ls src/bin | wc -l) modules into library/"
