#!/usr/bin/env bash
# Build the modules in release mode and install them into library/ where Ansible finds them.
#
# Portable (issue 14): the binaries must start on glibc 2.17 (CentOS 7) and link nothing but
# glibc and libgcc_s. cargo-zigbuild links with zig against glibc 2.17's symbol versions:
#   cargo zigbuild --release --target x86_64-unknown-linux-gnu.2.17
# Both tools come from PyPI as prebuilt wheels (cargo-zigbuild's own, and zig's `ziglang`),
# pinned, pip-installed once into /var/cache/numa-repin/zigbuild/<versions> and reused; zig is
# found as `python3 -m ziglang` through PYTHONPATH, as cargo-zigbuild looks for it.
# tests/integration/test_portable.py checks the result with readelf.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-gnu
GLIBC=2.17
ZIG_VERSION=0.17.1
ZIGBUILD_VERSION=0.24.1
CACHE=${NUMA_REPIN_CACHE:-/var/cache/numa-repin}
TOOLS=$CACHE/zigbuild/ziglang-$ZIG_VERSION-cargo-zigbuild-$ZIGBUILD_VERSION

# The python that pip-installed the tools is the one cargo-zigbuild must find as `python3`.
py=$(command -v python3)
if ! PYTHONPATH=$TOOLS "$py" -m ziglang version >/dev/null 2>&1 || [ ! -x "$TOOLS/bin/cargo-zigbuild" ]; then
  echo "build: pip install ziglang==$ZIG_VERSION cargo-zigbuild==$ZIGBUILD_VERSION into $TOOLS"
  rm -rf "$TOOLS.tmp"
  "$py" -m pip install -q --disable-pip-version-check --no-warn-script-location --target "$TOOLS.tmp" \
    "ziglang==$ZIG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION" 2>&1 | grep -v "Running pip as the 'root' user" || true
  [ -x "$TOOLS.tmp/bin/cargo-zigbuild" ] || { echo "build: installing the zig toolchain failed" >&2; exit 1; }
  rm -rf "$TOOLS" && mv "$TOOLS.tmp" "$TOOLS"
fi
rustup target list --installed 2>/dev/null | grep -qx "$TARGET" || rustup target add "$TARGET" >/dev/null 2>&1 || true
PATH="$TOOLS/bin:$PATH" PYTHONPATH=$TOOLS cargo zigbuild --release --bins --quiet --target "$TARGET.$GLIBC"
out=${CARGO_TARGET_DIR:-target}/$TARGET/release
for src in src/bin/*.rs; do
  m=$(basename "$src" .rs)
  install -m 0755 "$out/$m" "library/$m"
done
echo "build: installed $(ls src/bin | wc -l) modules from $out into library/"
