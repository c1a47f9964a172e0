#!/usr/bin/env bash
# Install what building and testing numa-repin needs on Debian 12 (root). Idempotent and quiet.
# The lab (tests/lab/lab.sh) installs the daemons it runs; this is the build/test toolchain.
set -euo pipefail
need_apt=()
# chromium: the fleet report's PNG export and its rendering test; patch/diffutils: the Nova patch (apply, diff)
# openssh-client: repin_migrate's block-migration prep (src/io/ssh.rs runs ssh); openssh-server: its test
# (a throwaway sshd); binutils (readelf, objdump) and debootstrap: tests/integration/test_portable.py.
# No libvirt-dev and no libssl-dev: the modules speak libvirtd's protocol themselves and link neither.
# The zig toolchain of scripts/build.sh comes from PyPI there.
for p in libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu pkg-config gcc chromium patch diffutils \
  openssh-client openssh-server binutils debootstrap; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
py=$(command -v python3)
missing=()
"$py" -c 'import ansible' 2>/dev/null || missing+=(ansible-core)
"$py" -c 'import pytest' 2>/dev/null || missing+=(pytest)
"$py" -c 'import pymysql' 2>/dev/null || missing+=(PyMySQL)
"$py" -c 'import lxml' 2>/dev/null || missing+=(lxml)
"$py" -c 'import yaml' 2>/dev/null || missing+=(PyYAML)
command -v ansible-lint >/dev/null || missing+=(ansible-lint)
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: pip install ${missing[*]}"
  "$py" -m pip install -q --disable-pip-version-check "${missing[@]}"
fi
# pyenv shims: make sure ansible-playbook from this python is on PATH
command -v ansible-playbook >/dev/null || { command -v pyenv >/dev/null && pyenv rehash; } || true
command -v cargo >/dev/null || { echo "install-deps: cargo (Rust toolchain) is required" >&2; exit 1; }
