#!/usr/bin/env python3
"""Benchmark: a drain's wall time with its moves in parallel against the same drain one move at a time, in
the same run, on the lab (tests/lab/lab.sh up; the 3-compute inventory). Each round and mode: two guests on
cmp1 that filled 8 MiB and halted (lablib.Lab.busy_guest once=True) with their Nova rows, drained with
drain_host.yml (numa_repin_max_parallel 2, then 1; bandwidth 1 MiB/s, so each migration takes seconds): one
goes to cmp2, one to cmp3. Prints per round the play's wall time and the sum of the two migrations' own times
(migration.total_time_ms), then the medians and the ratios parallel/sequential and parallel/sum of the
migrations. The lab is reseeded after every drain.
    python3 bench/drain_parallel.py [rounds=3]
"""
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
import lablib  # noqa: E402


def one_drain(lab, parallel):
    names, cleanups, uuids = [], [], []
    try:
        for pin in (0, 1):
            name, cleanup = lab.busy_guest("cmp1", [pin], once=True)
            names.append(name)
            cleanups.append(cleanup)
            uuids.append(lab.virsh("cmp1", "domuuid", name).stdout.strip())
            with lab.connect_db() as conn:
                lab.insert_instance_rows(conn, "cmp1", [pin], uuid=uuids[-1], name=name)
        t0 = time.monotonic()
        p = lab.ansible_playbook(REPO / "playbooks" / "drain_host.yml", inventory="inventory_3computes", extra_vars={
            "target_host": "cmp1", "numa_repin_drain_guests": names, "numa_repin_max_parallel": parallel,
            "numa_repin_bandwidth_mibps": 1, "numa_repin_progress_every_s": 2})
        wall = time.monotonic() - t0
        if p.returncode != 0:
            sys.exit("the drain failed:\n" + p.stdout[-4000:])
        migs = [int(m[1]) for m in re.finditer(r"total_time_ms (\d+)\)", p.stdout)][-2:]
        if len(migs) != 2 or sorted(lab.guest_host(n) for n in names) != ["cmp2", "cmp3"]:
            sys.exit("unexpected drain: %s\n%s" % (migs, p.stdout[-3000:]))
        return wall, sum(migs) / 1000
    finally:
        for c in cleanups:
            c()
        with lab.connect_db() as conn:
            for u in uuids:
                lab.delete_instance_rows(conn, u)
        lab.lab_sh("seed")


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    lab = lablib.Lab.load()
    lab.lab_sh("seed")
    res = {1: [], 2: []}
    for r in range(rounds):
        for parallel in (2, 1):
            wall, mig = one_drain(lab, parallel)
            res[parallel].append((wall, mig))
            print("round %d, max_parallel %d: drain %.1f s, the two migrations %.1f s together"
                  % (r + 1, parallel, wall, mig), flush=True)
    med = {k: statistics.median(w for w, _ in v) for k, v in res.items()}
    mig = statistics.median(m for v in res.values() for _, m in v)
    print("median drain: parallel %.1f s, one at a time %.1f s; ratio %.2f" % (med[2], med[1], med[2] / med[1]))
    print("median sum of the two migrations %.1f s; parallel drain / that sum: %.2f" % (mig, med[2] / mig))


if __name__ == "__main__":
    main()
