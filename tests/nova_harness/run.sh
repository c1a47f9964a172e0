#!/usr/bin/env bash
# Live migration of pinned guests through Nova's own services (its functional-test harness),
# for one release: the pristine control first, then the Nova tree the rollout produces.
# Usage: tests/nova_harness/run.sh [19.3.2]      (prints both runs; exit 1 if either fails)
# The patched tree is a copy of the venv's pristine nova package patched in place by
# library/deploy_patched_nova with `path:` (the rollout's own code, no container), so the Nova
# tested is the Nova the rollout writes. Needs library/ built (scripts/build.sh).
set -euo pipefail
release=${1:-19.3.2}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=$("$here/venv.sh" "$release")
py="$venv/bin/python"
site=$("$py" -c 'import os, nova; print(os.path.dirname(os.path.dirname(nova.__file__)))')
work=${NUMA_REPIN_HARNESS_WORK:-$(mktemp -d /tmp/numa-repin-harness.XXXXXX)}
rm -rf "$work/patched" "$work/backup"
mkdir -p "$work/patched/etc/nova"
cp -a "$site/nova" "$work/patched/nova"
cp -a "$site"/nova-*.dist-info "$work/patched/"
# Nova's test fixtures look for etc/nova/api-paste.ini beside the package.
cp "$venv/etc/nova/api-paste.ini" "$work/patched/etc/nova/"
cat > "$work/deploy.json" <<JSON
{"patch_dir": "$repo/roles/nova_patch/files", "path": "$work/patched/nova", "python": "$py",
 "release": "auto", "backup_dir": "$work/backup"}
JSON
echo "=== deploy_patched_nova path: $work/patched/nova"
"$repo/library/deploy_patched_nova" "$work/deploy.json" | tee "$work/deploy.out"
"$py" - "$work/deploy.out" "$release" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))
if res.get("failed") or not res.get("changed") or res.get("release") != sys.argv[2]:
    sys.exit("deploy_patched_nova did not patch %s: %s" % (sys.argv[2], res.get("msg")))
PY
cd "$work"
rc=0
echo "=== pristine Nova $release (control)"
PYTHONPATH="$here" "$py" -m testtools.run numa_live_migration.PristineControlTest \
  > "$work/pristine.log" 2>&1 || rc=1
grep -E '^(NUMA-REPIN-HARNESS|FAIL:|ERROR:|Ran |OK|FAILED)' "$work/pristine.log" || true
echo "=== patched Nova $release"
PYTHONPATH="$work/patched:$here" "$py" -m testtools.run numa_live_migration.PatchedLiveMigrationTest \
  > "$work/patched.log" 2>&1 || rc=1
grep -E '^(NUMA-REPIN-HARNESS|FAIL:|ERROR:|Ran |OK|FAILED)' "$work/patched.log" || true
[ $rc = 0 ] || echo "=== logs in $work (pristine.log, patched.log)"
exit $rc
