#!/usr/bin/env bash
# Create (once) and print the path of a cached Python 3.7 venv for a pinned OpenStack release.
# Usage: tests/lab/venv.sh nova|placement|neutron|keystone|nova-victoria
# Stein's Nova, Placement and Neutron do not run on Python 3.11 (see docs/design.md §3, the lab); each gets its own
# venv (mixing them breaks nova-manage). The venv is cached, keyed by the requirements file's checksum.
# nova-victoria: Nova 22.4.0 (Victoria) with stable/victoria's pins, for tests of the Victoria+ layout with
# Victoria's own objects; those pins do not build on 3.11 either (see its requirements file).
set -euo pipefail
name=${1:?usage: venv.sh nova|placement|neutron|keystone|nova-victoria}
here=$(cd "$(dirname "$0")" && pwd)
case "$name" in
  nova) req="$here/requirements/nova-19.3.2-py37.txt" ;;
  placement) req="$here/requirements/placement-1.0.0-py37.txt" ;;
  neutron) req="$here/requirements/neutron-14.4.2-py37.txt" ;;
  keystone) req="$here/requirements/keystone-15.0.1-py37.txt" ;;
  nova-victoria) req="$here/requirements/nova-22.4.0-py37.txt" ;;
  *) echo "venv.sh: unknown venv '$name' (nova, placement, neutron, keystone, nova-victoria)" >&2; exit 2 ;;
esac
cache=${NUMA_REPIN_CACHE:-/var/cache/numa-repin}
sum=$(sha256sum "$req" | cut -c1-12)
dir="$cache/venvs/$name-$sum"
if [ ! -x "$dir/bin/python" ] || [ ! -f "$dir/.complete" ]; then
  py="$(pyenv root 2>/dev/null || echo /root/.pyenv)/versions/3.7.16/bin/python3"
  [ -x "$py" ] || { echo "venv.sh: Python 3.7.16 not found at $py (pyenv)" >&2; exit 1; }
  # A lock so two callers (lab, equivalence tests) never build the same venv at once.
  mkdir -p "$cache/venvs"
  exec 9>"$cache/venvs/.$name.lock"
  flock 9
  if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"
    "$py" -m venv "$dir" >&2
    "$dir/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
    touch "$dir/.complete"
  fi
fi
echo "$dir"
