"""drain_host.yml with two destinations (inventory-3computes.yml: cmp3 in the compute group too): the
plan's two moves go to distinct hosts and run at the same time (one wave), each repinned, Nova's DB
following both, and Nova's own accounting accepting both destinations after. Each guest has filled 8 MiB of its
memory and halted; sent at 1 MiB/s, each migration lasts seconds: long enough to see whether the two ran
together."""
import re
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
PB = REPO / "playbooks" / "drain_host.yml"


def test_two_moves_to_two_destinations_run_at_once(lab, seeded, request, run_module):
    names = []
    for pin in (0, 1):
        name, cleanup = lab.busy_guest("cmp1", [pin], once=True)
        request.addfinalizer(cleanup)
        names.append(name)
    uuids = [lab.virsh("cmp1", "domuuid", n).stdout.strip() for n in names]
    with lab.connect_db() as conn:
        for n, u, p in zip(names, uuids, (0, 1)):
            # no Neutron port: these guests have no interface (a port written into the DB has no segment and
            # Neutron would refuse to bind it on the destination, as it should)
            lab.insert_instance_rows(conn, "cmp1", [p], uuid=u, name=n, port=False)
            request.addfinalizer(lambda u=u: lab.delete_instance_rows(lab.connect_db(), u))
    knobs = {"target_host": "cmp1", "numa_repin_drain_guests": names, "numa_repin_progress_every_s": 2,
             "numa_repin_bandwidth_mibps": 1}
    t0 = time.monotonic()
    p = lab.ansible_playbook(PB, extra_vars=knobs, inventory="inventory_3computes")
    wall = time.monotonic() - t0
    assert p.returncode == 0, p.stdout[-5000:]
    # One wave of two: cmp2 has one free pCPU (0; c2-resident holds 1), cmp3 two.
    waves = re.findall(r"A new wave: (.*?)\] \*", p.stdout)
    assert waves == [", ".join(sorted(names))] or waves == [", ".join(names)], waves
    where = {n: lab.guest_host(n) for n in names}
    assert sorted(where.values()) == ["cmp2", "cmp3"], where
    for n in names:
        f = lab.numa_facts(where[n])
        assert f["overlaps"] == [], f["overlaps"]
    assert lab.affinity("cmp2", next(n for n in names if where[n] == "cmp2"))["vcpus"] == {0: {0}}
    # Nova's DB follows both, and Nova's own accounting accepts both destinations.
    with lab.connect_db() as conn, conn.cursor() as c:
        for n, u in zip(names, uuids):
            c.execute("SELECT host FROM nova.instances WHERE uuid=%s", (u,))
            assert c.fetchone()[0] == where[n]
    # (cmp1 keeps the seeded vm-taken/vm-toobig overlap, a field case this drain was told to leave.)
    lab.assert_nova_accepts_nodes(["cmp2", "cmp3"])
    # The two migrations overlapped in time: each started before the other ended.
    spans = []
    for m in re.finditer(r"started_unix_ms (\d+), total_time_ms (\d+)", p.stdout):
        spans.append((int(m[1]), int(m[1]) + int(m[2])))
    assert len(spans) >= 2, p.stdout[-5000:]
    (a0, a1), (b0, b1) = spans[-2:]
    assert a0 < b1 and b0 < a1, spans
    print("drain wall %.1f s; migrations %s ms; sum %d ms; overlap %d ms"
          % (wall, [e - s for s, e in spans[-2:]], sum(e - s for s, e in spans[-2:]), min(a1, b1) - max(a0, b0)))
