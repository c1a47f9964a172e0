#!/bin/bash
# Run the Nova patch core's tests on Python 2.7 (Queens/Rocky Kolla images run 2.7).
# pytest 4.6 and lxml 4.9 are the last releases for 2.7; they go to a cache dir, not the interpreter.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${NUMA_REPIN_PY27:-$(pyenv root 2>/dev/null || echo /root/.pyenv)/versions/2.7.18/bin/python}
[ -x "$py" ] || { echo "no Python 2.7 at $py (set NUMA_REPIN_PY27)" >&2; exit 2; }
site=${NUMA_REPIN_PY27_SITE:-/var/cache/numa-repin/py27-site}
if ! PYTHONPATH=$site "$py" -c 'import pytest, lxml' 2>/dev/null; then
    "$py" -m pip install -q --disable-pip-version-check --target "$site" pytest==4.6.11 lxml==4.9.4 >&2
fi
cd "$here"
PYTHONPATH=$site PYTHONDONTWRITEBYTECODE=1 exec "$py" -m pytest -q -p no:cacheprovider test_core.py "$@"
