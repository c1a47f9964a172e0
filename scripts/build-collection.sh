#!/usr/bin/env bash
# Build the Ansible collection numa_repin.numa_repin (binary modules + sidecar docs, roles,
# playbooks) into dist/. Install with: ansible-galaxy collection install dist/numa_repin-numa_repin-*.tar.gz
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r galaxy.yml README.md roles playbooks "$stage/"
mkdir -p "$stage/plugins/modules" "$stage/meta"
printf 'requires_ansible: ">=2.15.0"\n' >"$stage/meta/runtime.yml"
for src in src/bin/*.rs; do
  m=$(basename "$src" .rs)
  install -m 0755 "library/$m" "$stage/plugins/modules/$m"
  [ -f "library/$m.yml" ] && cp "library/$m.yml" "$stage/plugins/modules/$m.yml"
done
mkdir -p dist
ansible-galaxy collection build --force --output-path "$PWD/dist" "$stage"
