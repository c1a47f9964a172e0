#!/usr/bin/env bash
# Benchmark: repin_migrate vs plain `virsh migrate --live` of the same guest, in the same run, on the lab
# (tests/lab/lab.sh up). Each round: repin_migrate cmp1 -> cmp2 (timed), plain virsh back; then plain
# virsh cmp1 -> cmp2 (timed) with the same libvirt flags (live, p2p, persistent, undefinesource,
# abort-on-error), plain virsh back. Prints per-round wall times, medians and the ratio.
#   bench/migrate.sh [rounds=5]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
LAB_DIR=${LAB_DIR:-/var/lib/numa-repin-lab}
C1=qemu+tcp://127.0.0.2/system
C2=qemu+tcp://127.0.0.3/system
CONF2=$LAB_DIR/cmp2/etc/kolla/nova-compute/nova-allcpus.conf
MOD=library/repin_migrate
[ -x "$MOD" ] || bash scripts/build.sh
NAME=bench-mig-$$
UUID=$(python3 -c 'import uuid; print(uuid.uuid4())')
TMP=$(mktemp -d)
cleanup() {
  for c in $C1 $C2; do virsh -q -c $c destroy $NAME >/dev/null 2>&1 || true; virsh -q -c $c undefine $NAME >/dev/null 2>&1 || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
python3 tests/lab/render_guest.py --name $NAME --uuid $UUID --vcpus 1 --pins 1 --memory-mib 64 >"$TMP/g.xml"
virsh -q -c $C1 define "$TMP/g.xml" >/dev/null
virsh -q -c $C1 start $NAME >/dev/null
sleep 1
ms() { echo $(( $(date +%s%N) / 1000000 )); }
plain() { virsh -q -c "$1" migrate --live --p2p --persistent --undefinesource --abort-on-error $NAME "$2"; }
printf '{"guest":"%s","source_uri":"%s","dest_uri":"%s","dest_nova_conf":"%s"}' $NAME $C1 $C2 "$CONF2" >"$TMP/args.json"
R=() ; P=() ; J=()
for i in $(seq 1 "$ROUNDS"); do
  t0=$(ms); out=$($MOD "$TMP/args.json"); t1=$(ms)
  echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); assert not r["failed"] and r["changed"], r["msg"]' \
    || { echo "repin_migrate failed: $out" >&2; exit 1; }
  R+=($((t1 - t0)))
  J+=($(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["migration"]["total_time_ms"])'))
  plain $C2 $C1
  t0=$(ms); plain $C1 $C2; t1=$(ms)
  P+=($((t1 - t0)))
  plain $C2 $C1
  printf 'round %d: repin_migrate %5d ms (migration call %5d ms)   virsh migrate --live %5d ms\n' "$i" "${R[-1]}" "${J[-1]}" "${P[-1]}"
done
python3 - "${R[*]}" "${J[*]}" "${P[*]}" <<'PY'
import statistics, sys
r, j, p = ([int(x) for x in a.split()] for a in sys.argv[1:4])
mr, mj, mp = statistics.median(r), statistics.median(j), statistics.median(p)
print("median: repin_migrate %.0f ms (whole module: read, lock, fit, migrate, verify; migration call %.0f ms), "
      "plain virsh migrate --live %.0f ms" % (mr, mj, mp))
print("ratio repin_migrate / virsh migrate = %.2f (migration call alone %.2f)" % (mr / mp, mj / mp))
PY
