#!/usr/bin/env bash
# Create (once) and print the path of a cached venv in which Nova's own functional-test harness runs, for a pinned release:
#   tests/nova_harness/venv.sh 19.3.2|18.3.0|17.0.13
#   "$(tests/nova_harness/venv.sh 18.3.0)/bin/python" -m testtools.run nova.tests.functional.libvirt.test_numa_servers
# Stein runs on Python 3.7.16, Rocky on 3.6.15, Queens on 2.7.18 (pyenv). No libvirt-python: the harness uses fakelibvirt.
# The venv is cached under ${NUMA_REPIN_CACHE:-/var/cache/numa-repin}/venvs, keyed by the requirements file's checksum.
set -euo pipefail
release=${1:?usage: venv.sh 19.3.2|18.3.0|17.0.13}
here=$(cd "$(dirname "$0")" && pwd)
pyroot="$(pyenv root 2>/dev/null || echo /root/.pyenv)/versions"
case "$release" in
  19.3.2) req="$here/requirements/nova-19.3.2-py37-func.txt"; py="$pyroot/3.7.16/bin/python3" ;;
  18.3.0) req="$here/requirements/nova-18.3.0-py36-func.txt"; py="$pyroot/3.6.15/bin/python3" ;;
  17.0.13) req="$here/requirements/nova-17.0.13-py27-func.txt"; py="$pyroot/2.7.18/bin/python" ;;
  *) echo "venv.sh: unknown release '$release' (19.3.2, 18.3.0, 17.0.13)" >&2; exit 2 ;;
esac
cache=${NUMA_REPIN_CACHE:-/var/cache/numa-repin}
sum=$(sha256sum "$req" | cut -c1-12)
dir="$cache/venvs/nova-func-$release-$sum"
if [ ! -x "$dir/bin/python" ] || [ ! -f "$dir/.complete" ]; then
  [ -x "$py" ] || { echo "venv.sh: $(basename "$(dirname "$(dirname "$py")")") not found at $py (pyenv)" >&2; exit 1; }
  # A lock so two callers never build the same venv at once.
  mkdir -p "$cache/venvs"
  exec 9>"$cache/venvs/.nova-func-$release.lock"
  flock 9
  if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"
    if [ "$release" = 17.0.13 ]; then
      # Python 2.7 has no venv module: virtualenv 16.7.12 (pure Python, bundles pip 20.3.4 and setuptools 44.1.1),
      # installed with --target so the pyenv interpreter itself stays untouched.
      ve="$cache/venvs/.virtualenv-16.7.12"
      if [ ! -f "$ve/.complete" ]; then
        rm -rf "$ve"
        "$py" -m pip install -q --disable-pip-version-check --no-warn-script-location --target "$ve" virtualenv==16.7.12 >&2
        touch "$ve/.complete"
      fi
      PYTHONPATH="$ve" "$py" -m virtualenv --no-download "$dir" >&2
    else
      "$py" -m venv "$dir" >&2
    fi
    "$dir/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
    # nova.tests.fixtures.ConfFixture points api_paste_config at $state_path/etc/nova/api-paste.ini, and state_path
    # defaults to the directory above the nova package (site-packages); the wheel installs the file under $dir/etc/nova.
    site=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    mkdir -p "$site/etc/nova"
    ln -sfn "$dir/etc/nova/api-paste.ini" "$site/etc/nova/api-paste.ini"
    touch "$dir/.complete"
  fi
fi
echo "$dir"
