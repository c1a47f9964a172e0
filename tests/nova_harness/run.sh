#!/usr/bin/env bash
# Live migration of pinned guests through Nova's own services (its functional-test harness),
# for one release: the pristine control first, then the Nova tree the rollout produces.
# Usage: tests/nova_harness/run.sh [19.3.2 [19.0.0]]   (prints both runs; exit 1 if either fails)
# The second argument runs another point release of the same series in that release's venv: its
# nova package (with its own functional tests) from the PyPI wheel, pristine and patched, in
# front of the venv's own.
# The patched tree is a copy of the venv's pristine nova package patched in place by
# library/deploy_patched_nova with `path:` (the rollout's own code and its built-in hooks, no
# container), so the Nova tested is the Nova the rollout writes. Needs library/ built (scripts/build.sh).
set -euo pipefail
release=${1:-19.3.2}
nova_release=${2:-$release}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=$("$here/venv.sh" "$release")
py="$venv/bin/python"
site=$("$py" -c 'import os, nova; print(os.path.dirname(os.path.dirname(nova.__file__)))')
work=${NUMA_REPIN_HARNESS_WORK:-$(mktemp -d /tmp/numa-repin-harness.XXXXXX)}
rm -rf "$work/patched" "$work/pristine" "$work/backup"
mkdir -p "$work/patched/etc/nova" "$work/pristine/etc/nova"
if [ "$nova_release" = "$release" ]; then
  cp -a "$site/nova" "$work/pristine/nova"
  cp -a "$site"/nova-*.dist-info "$work/pristine/"
else
  [ "${nova_release%.*.*}" = "${release%.*.*}" ] || { echo "run.sh: $nova_release is not a $release point release" >&2; exit 2; }
  wheels=${NUMA_REPIN_WHEELS:-/var/cache/numa-repin/nova-wheels}
  whl="$wheels/nova-$nova_release-py2.py3-none-any.whl"
  [ -f "$whl" ] || python3 -m pip download -q --no-deps --only-binary :all: "nova==$nova_release" -d "$wheels" >&2
  python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("nova/") or ".dist-info/" in n])' "$whl" "$work/pristine"
fi
cp -a "$work/pristine/nova" "$work/pristine"/nova-*.dist-info "$work/patched/"
# Nova's test fixtures look for etc/nova/api-paste.ini beside the package.
cp "$venv/etc/nova/api-paste.ini" "$work/patched/etc/nova/"
cp "$venv/etc/nova/api-paste.ini" "$work/pristine/etc/nova/"
cat > "$work/deploy.json" <<JSON
{"path": "$work/patched/nova", "python": "$py",
 "release": "auto", "backup_dir": "$work/backup"}
JSON
echo "=== deploy_patched_nova path: $work/patched/nova"
"$repo/library/deploy_patched_nova" "$work/deploy.json" | tee "$work/deploy.out"
"$py" - "$work/deploy.out" "$nova_release" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))
if res.get("failed") or not res.get("changed") or res.get("release") != sys.argv[2]:
    sys.exit("deploy_patched_nova did not patch %s: %s" % (sys.argv[2], res.get("msg")))
PY
"$py" -c 'import sys; sys.path[:0] = sys.argv[1:2]; import nova, os
assert os.path.realpath(nova.__file__).startswith(os.path.realpath(sys.argv[1])), nova.__file__' "$work/pristine"
cd "$work"
rc=0
echo "=== pristine Nova $nova_release (control)"
PYTHONPATH="$work/pristine:$here" "$py" -m testtools.run numa_live_migration.PristineControlTest \
  > "$work/pristine.log" 2>&1 || rc=1
grep -E '^(NUMA-REPIN-HARNESS|FAIL:|ERROR:|Ran |OK|FAILED)' "$work/pristine.log" || true
echo "=== patched Nova $nova_release"
PYTHONPATH="$work/patched:$here" "$py" -m testtools.run numa_live_migration.PatchedLiveMigrationTest \
  > "$work/patched.log" 2>&1 || rc=1
grep -E '^(NUMA-REPIN-HARNESS|FAIL:|ERROR:|Ran |OK|FAILED)' "$work/patched.log" || true
[ $rc = 0 ] || echo "=== logs in $work (pristine.log, patched.log)"
exit $rc
