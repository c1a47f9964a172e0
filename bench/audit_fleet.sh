#!/usr/bin/env bash
# Benchmark: the offline fleet audit on N hosts against a trivial play on the same inventory, in the
# same run. Each host (ansible_connection: local) gets its own copy of saved dumps from
# tests/fixtures/saved: `virsh capabilities` (2x12x2, or the small td1 host on every other host),
# three `virsh dumpxml` guests and a nova.conf.
#   audit play:   numa_facts (offline: capabilities_file, domain_files, nova_conf) on every host, then on
#                 localhost the role's report step (HTML of every host; no DB, so no drift; no PNG)
#   trivial play: ansible.builtin.command: /bin/true on every host
# Runs them alternately (one warm-up pair, then RUNS pairs: audit, trivial, audit, trivial, ...) and
# prints min/median wall times and the ratio audit / trivial (of the medians, and the median of the
# per-pair ratios).
#   bench/audit_fleet.sh [hosts=200]
# env: RUNS=5, FORKS=10 (ansible-playbook -f), ANSIBLE_PLAYBOOK=<path>, KEEP=1 (keep the temp dir),
#      REPORT=0 (audit play without the report step).
# ansible-playbook: $ANSIBLE_PLAYBOOK, else /var/cache/numa-repin/venvs/lab-py311/bin/ansible-playbook,
# else the one on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
HOSTS=${1:-200}
RUNS=${RUNS:-5}
FORKS=${FORKS:-10}
CACHE=${NUMA_REPIN_CACHE:-/var/cache/numa-repin}
AP=${ANSIBLE_PLAYBOOK:-}
if [ -z "$AP" ]; then
  if [ -x "$CACHE/venvs/lab-py311/bin/ansible-playbook" ]; then AP=$CACHE/venvs/lab-py311/bin/ansible-playbook
  else AP=$(command -v ansible-playbook) || { echo "audit_fleet: no ansible-playbook" >&2; exit 1; }
  fi
fi
[ -x library/numa_facts ] || bash scripts/build.sh
# The python that runs this ansible-playbook runs its modules too (no interpreter discovery per host).
APV=$("$AP" --version 2>/dev/null)
PY=$(echo "$APV" | sed -n 's/^ *python version = .*(\(\/[^)]*\))$/\1/p')
[ -x "$PY" ] || PY=$(command -v python3)

TMP=$(mktemp -d /tmp/audit-fleet.XXXXXX)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$TMP"' EXIT
FIX=$REPO/tests/fixtures/saved
python3 - "$TMP" "$HOSTS" "$FIX" "$PY" <<'PY'
import json, os, shutil, sys
tmp, n, fix, py = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
big = ("caps-2s12c2t.xml", ["web-1.xml", "db-1.xml", "clash-1.xml"])
small = ("td1/caps.xml", ["td1/pinned-a.xml", "td1/pinned-b.xml", "td1/pinned-c.xml"])
hosts = {}
for i in range(1, n + 1):
    h = "cmp%03d" % i
    d = os.path.join(tmp, "dumps", h)
    os.makedirs(d)
    caps, doms = big if i % 2 else small
    shutil.copy(os.path.join(fix, caps), os.path.join(d, "caps.xml"))
    files = []
    for f in doms:
        dst = os.path.join(d, os.path.basename(f))
        shutil.copy(os.path.join(fix, f), dst)
        files.append(dst)
    shutil.copy(os.path.join(fix, "nova.conf"), os.path.join(d, "nova.conf"))
    hosts[h] = {"dump_caps": os.path.join(d, "caps.xml"), "dump_domains": files,
                "dump_nova_conf": os.path.join(d, "nova.conf")}
inv = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": py},
               "children": {"compute": {"hosts": hosts}},
               "hosts": {"localhost": {}}}}
with open(os.path.join(tmp, "inventory.json"), "w") as f:
    json.dump(inv, f)
PY
cat >"$TMP/audit.yml" <<'YML'
- name: NUMA facts of every compute host, offline from its saved dumps
  hosts: compute
  gather_facts: false
  tasks:
    - name: numa_facts
      numa_facts:
        capabilities_file: "{{ dump_caps }}"
        domain_files: "{{ dump_domains }}"
        nova_conf: "{{ dump_nova_conf }}"
        host: "{{ inventory_hostname }}"

- name: Audit report
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Render the fleet report (no DB here, so no drift; no PNG)
      ansible.builtin.include_role:
        name: numa_repin
        tasks_from: report
      vars:
        numa_repin_report_png: false
        numa_repin_report_name: audit
        numa_repin_report_title: NUMA audit of {{ groups['compute'] | length }} hosts
        numa_repin_report_hosts: "{{ groups['compute'] | map('extract', hostvars, ['ansible_facts', 'numa']) | list }}"
        numa_repin_report_drift: []
YML
[ "${REPORT:-1}" = 1 ] || sed -i '/^- name: Audit report/,$d' "$TMP/audit.yml"
cat >"$TMP/trivial.yml" <<'YML'
- name: Trivial play
  hosts: compute
  gather_facts: false
  tasks:
    - name: /bin/true
      ansible.builtin.command: /bin/true
      changed_when: false
YML
cat >"$TMP/ansible.cfg" <<'CFG'
[defaults]
host_key_checking = False
retry_files_enabled = False
nocolor = True
CFG
export ANSIBLE_CONFIG=$TMP/ansible.cfg ANSIBLE_LIBRARY=$REPO/library ANSIBLE_ROLES_PATH=$REPO/roles \
  NUMA_REPIN_REPORT_DIR=$TMP/report ANSIBLE_LOCAL_TEMP=$TMP/ansible-local
echo "ansible-playbook: $AP ($(echo "$APV" | head -1)), python $PY, forks $FORKS, $HOSTS hosts, $RUNS runs + 1 warm-up"
ms() { echo $(( $(date +%s%N) / 1000000 )); }
play() {  # play <name> -> prints wall ms; fails loudly on a failed play
  local t0 t1
  t0=$(ms)
  "$AP" -i "$TMP/inventory.json" -f "$FORKS" "$TMP/$1.yml" >"$TMP/$1.log" 2>&1 \
    || { echo "audit_fleet: $1 play failed:" >&2; tail -30 "$TMP/$1.log" >&2; exit 1; }
  t1=$(ms)
  echo $((t1 - t0))
}
play audit >/dev/null; play trivial >/dev/null
n=$(grep -c '^cmp[0-9]* *: ok=1 .*failed=0' "$TMP/audit.log" || true); [ "$n" = "$HOSTS" ] \
  || { echo "audit_fleet: numa_facts ran on $n hosts, want $HOSTS" >&2; exit 1; }
if [ "${REPORT:-1}" = 1 ]; then
  n=$(grep -c 'data-host="cmp' "$TMP/report/audit.html" || true); [ "$n" = "$HOSTS" ] \
    || { echo "audit_fleet: the report has $n hosts, want $HOSTS" >&2; exit 1; }
fi
A=(); B=()
for i in $(seq 1 "$RUNS"); do
  A+=($(play audit)); B+=($(play trivial))
  printf 'run %d: audit %6d ms   /bin/true %6d ms\n' "$i" "${A[-1]}" "${B[-1]}"
done
python3 - "${A[*]}" "${B[*]}" "${REPORT:-1}" <<'PY'
import statistics, sys
a, b = ([int(x) for x in s.split()] for s in sys.argv[1:3])
what = "numa_facts offline + report" if sys.argv[3] == "1" else "numa_facts offline, no report"
ma, mb = statistics.median(a), statistics.median(b)
print("audit (%s): min %d ms, median %.0f ms" % (what, min(a), ma))
print("trivial (command: /bin/true): min %d ms, median %.0f ms" % (min(b), mb))
print("ratio audit / trivial = %.2f (median of per-pair ratios %.2f)"
      % (ma / mb, statistics.median(x / y for x, y in zip(a, b))))
PY
