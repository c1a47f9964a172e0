#!/usr/bin/env bash
# The main job on the local lab, from a fresh Debian 12 machine (root): build the modules, bring
# the lab up (two libvirt compute hosts, Nova's DB, Kolla-like containers), then run the
# maintenance chain an operator runs: audit, drain cmp1 (facts -> plan -> repinned live
# migration -> Nova DB fixup -> verify), roll out the Nova patch (computes first, health-gated;
# containers and a host-installed Nova),
# audit again. Prints what happened and where the report is.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
target=${TARGET_HOST:-cmp1}
bash scripts/install-deps.sh
bash scripts/build.sh
tests/lab/lab.sh up
# shellcheck disable=SC1091
. /var/lib/numa-repin-lab/lab.env
export ANSIBLE_CONFIG=${ANSIBLE_CONFIG:-/var/lib/numa-repin-lab/ansible.cfg}
inv=/var/lib/numa-repin-lab/inventory.yml
export NUMA_REPIN_REPORT_DIR=${NUMA_REPIN_REPORT_DIR:-$PWD/report}
run() { echo; echo "=== ansible-playbook $*"; ansible-playbook -i "$inv" "$@"; }
# The lab is seeded with what a drain meets in the field: an overlap on cmp1 and a guest that fits
# nowhere. The audit before and the drain list them and go on (leftovers accepted); the audit after
# accepts nothing: it fails if the drain left an overlap or a DB drift.
run playbooks/numa_audit.yml -e numa_audit_report_name=audit-before -e numa_repin_allow_leftovers=true
run playbooks/drain_host.yml -e target_host="$target" -e numa_repin_allow_leftovers=true
# The Nova patch, applied in place: the containers (cmp1's nova_compute, control's nova_conductor)
# and cmp4's Nova, installed on the host from Ubuntu's package and run by systemd.
run -i /var/lib/numa-repin-lab/inventory-hostnova.yml playbooks/deploy_nova_patch.yml
# The final audit shows the drained host, zero DB drift, and the patch status per container.
run playbooks/numa_audit.yml -e numa_audit_report_name=audit-after
echo
echo "maintenance chain done; reports:"
ls -1 "$NUMA_REPIN_REPORT_DIR"/*.html
