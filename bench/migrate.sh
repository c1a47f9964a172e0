#!/usr/bin/env bash
# Benchmark: repin_migrate vs plain `virsh migrate --live` of the same guest, in the same run, on the lab
# (tests/lab/lab.sh up; URIs, addresses and paths from $LAB_DIR/lab.json). Each round:
#   repin_migrate cmp1 -> cmp2 run from this machine (the deploy host), timed; plain virsh back;
#   with --on-host: repin_migrate cmp1 -> cmp2 run ON cmp2 over SSH the way Ansible runs a module there
#     (delegate_to: the destination): binary and args file copied to a temp dir on root@<cmp2 address> once,
#     before the rounds; each round one `ssh <host> <module> <args file>` over a ControlMaster connection
#     (Ansible's ControlPersist), timed around that ssh command; dest_nova_conf is the in-host path; plain
#     virsh back;
#   plain `virsh migrate --live --p2p --persistent --undefinesource --abort-on-error` cmp1 -> cmp2 with the
#     same migration URI (timed), plain virsh back.
# Prints per-round wall times, the module's own migration-call time (`migration.total_time_ms`: the
# migrateToURI3 call alone; the rest of the module is read, claim, fit, verify), medians and the ratios.
#   bench/migrate.sh [--on-host] [rounds=5]        env: REPIN_MIGRATE=<binary> (default library/repin_migrate)
set -euo pipefail
cd "$(dirname "$0")/.."
ON_HOST=
if [ "${1:-}" = --on-host ]; then ON_HOST=1; shift; fi
ROUNDS=${1:-5}
LAB_DIR=${LAB_DIR:-/var/lib/numa-repin-lab}
LAB_JSON=${LAB_JSON:-$LAB_DIR/lab.json}
[ -r "$LAB_JSON" ] || { echo "migrate.sh: no $LAB_JSON: the lab is not up (tests/lab/lab.sh up)" >&2; exit 1; }
lab() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v=v[k]
print(v)' "$LAB_JSON" "$1"; }
C1=$(lab hosts.cmp1.libvirt_uri)
C2=$(lab hosts.cmp2.libvirt_uri)
CONF2=$(lab hosts.cmp2.nova_conf_allcpus)
CONF2_IN_HOST=/etc/kolla/nova-compute/nova-allcpus.conf
MIGURI=tcp://$(lab hosts.cmp2.migrate_address)
H2=$(lab nodes.cmp2.address)
SSH_CONFIG=$(lab ssh.config)
SSH_KEY=$(lab ssh.key)
MOD=${REPIN_MIGRATE:-library/repin_migrate}   # another build of the module to compare: REPIN_MIGRATE=path
[ -x "$MOD" ] || bash scripts/build.sh
NAME=bench-mig-$$
UUID=$(python3 -c 'import uuid; print(uuid.uuid4())')
TMP=$(mktemp -d)
SSH=(ssh -F "$SSH_CONFIG" -i "$SSH_KEY" -o ControlMaster=auto -o ControlPersist=60s -o "ControlPath=$TMP/cm-%C")
RDIR=
cleanup() {
  for c in $C1 $C2; do virsh -q -c $c destroy $NAME >/dev/null 2>&1 || true; virsh -q -c $c undefine $NAME >/dev/null 2>&1 || true; done
  if [ -n "$ON_HOST" ]; then
    [ -z "$RDIR" ] || "${SSH[@]}" "root@$H2" "rm -rf $RDIR" >/dev/null 2>&1 || true
    "${SSH[@]}" -O exit "root@$H2" >/dev/null 2>&1 || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
python3 tests/lab/render_guest.py --name $NAME --uuid $UUID --vcpus 1 --pins 1 --memory-mib 64 >"$TMP/g.xml"
virsh -q -c $C1 define "$TMP/g.xml" >/dev/null
virsh -q -c $C1 start $NAME >/dev/null
sleep 1
ms() { echo $(( $(date +%s%N) / 1000000 )); }
plain() { virsh -q -c "$1" migrate --live --p2p --persistent --undefinesource --abort-on-error $NAME "$2" "tcp://$3"; }
back() { plain $C2 $C1 "$(lab hosts.cmp1.migrate_address)"; }
args() { printf '{"guest":"%s","source_uri":"%s","dest_uri":"%s","dest_nova_conf":"%s","migrate_uri":"%s"}' \
  $NAME $C1 $C2 "$1" "$MIGURI"; }
args "$CONF2" >"$TMP/args.json"
if [ -n "$ON_HOST" ]; then
  RDIR=$("${SSH[@]}" "root@$H2" 'mktemp -d /tmp/bench-repin.XXXXXX')
  args "$CONF2_IN_HOST" >"$TMP/args-on-host.json"
  cp "$MOD" "$TMP/repin_migrate"
  scp -q -F "$SSH_CONFIG" -i "$SSH_KEY" -o "ControlPath=$TMP/cm-%C" "$TMP/repin_migrate" "$TMP/args-on-host.json" "root@$H2:$RDIR/"
fi
check() {  # check <what> <json>: a changed, not failed result; prints migration.total_time_ms
  echo "$2" | python3 -c 'import json,sys; r=json.load(sys.stdin); assert not r.get("failed") and r["changed"], r["msg"]; print(r["migration"]["total_time_ms"])' \
    || { echo "repin_migrate ($1) failed: $2" >&2; exit 1; }
}
R=(); J=(); S=(); K=(); P=()
for i in $(seq 1 "$ROUNDS"); do
  t0=$(ms); out=$($MOD "$TMP/args.json" || true); t1=$(ms)
  j=$(check "deploy host" "$out"); R+=($((t1 - t0))); J+=($j); echo "$out" >"$TMP/last-deploy.json"
  back
  if [ -n "$ON_HOST" ]; then
    t0=$(ms); out=$("${SSH[@]}" "root@$H2" "$RDIR/repin_migrate $RDIR/args-on-host.json" || true); t1=$(ms)
    j=$(check "on $H2" "$out"); S+=($((t1 - t0))); K+=($j); echo "$out" >"$TMP/last-on-host.json"
    back
  fi
  t0=$(ms); plain $C1 $C2 "${MIGURI#tcp://}"; t1=$(ms)
  P+=($((t1 - t0)))
  back
  printf 'round %d: repin_migrate %5d ms (migration call %5d ms)' "$i" "${R[-1]}" "${J[-1]}"
  [ -z "$ON_HOST" ] || printf '   on cmp2 over ssh %5d ms (migration call %5d ms)' "${S[-1]}" "${K[-1]}"
  printf '   virsh migrate --live %5d ms\n' "${P[-1]}"
done
python3 - "${R[*]}" "${J[*]}" "${P[*]}" "${S[*]:-}" "${K[*]:-}" <<'PY'
import statistics, sys
r, j, p, s, k = ([int(x) for x in a.split()] for a in sys.argv[1:6])
mr, mj, mp = statistics.median(r), statistics.median(j), statistics.median(p)
print("median of %d rounds: plain virsh migrate --live %.0f ms" % (len(p), mp))
print("  repin_migrate from the deploy host %.0f ms (whole module: read, lock, fit, migrate, verify; "
      "migration call %.0f ms)" % (mr, mj))
if s:
    ms_, mk = statistics.median(s), statistics.median(k)
    print("  repin_migrate on cmp2 over ssh     %.0f ms (ssh exec included; migration call %.0f ms)" % (ms_, mk))
print("ratio repin_migrate (deploy host) / virsh migrate = %.2f (migration call alone %.2f)" % (mr / mp, mj / mp))
if s:
    print("ratio repin_migrate (on cmp2)     / virsh migrate = %.2f (migration call alone %.2f)" % (ms_ / mp, mk / mp))
PY
