"""nova_instance_fixup on a real Victoria DB, checked with Victoria's own objects (the issue: "Test the Victoria+
format with Victoria+'s own objects, not inside a Stein DB").

A session fixture makes the database `nova_victoria` on the lab's MariaDB with Nova 22.4.0's own
`nova-manage db sync --local_cell` (venv: tests/lab/venv.sh nova-victoria, Python 3.7: Victoria's pins do not build
on 3.11). tests/nova_objects/victoria_rows.py, run in that venv, writes the rows with Victoria's objects (Service,
ComputeNode with NUMACell.pcpuset, Instance with a pinned InstanceNUMACell 1.6) and afterwards reads them back with
NUMATopology/InstanceNUMATopology.obj_from_db_obj and runs Victoria's resource-tracker accounting
(hardware.numa_usage_from_instance_numa) over each node: zero errors and stored usage == Victoria's.
Only the `nova_victoria` database is touched (no Placement, no Neutron: their databases are not given).
"""
import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "nova_objects" / "victoria_rows.py"
DB = "nova_victoria"


def url(lab, database=DB):
    d = lab.db_info
    return "mysql+pymysql://%s:%s@%s:%s/%s" % (d["user"], d["password"], d["host"], d["port"], database)


@pytest.fixture(scope="session")
def victoria(lab, tmp_path_factory):
    """{"venv", "conf", "url"}: a fresh `nova_victoria` made by Victoria's nova-manage (dropped and made anew each
    session, dropped at the end). A Victoria venv that cannot be built fails the tests, it never skips them."""
    r = subprocess.run(["bash", str(REPO / "tests/lab/venv.sh"), "nova-victoria"], capture_output=True, text=True,
                       timeout=1800)
    if r.returncode != 0 or not r.stdout.strip():
        pytest.fail("no Nova 22.4.0 (Victoria) venv: tests/lab/venv.sh nova-victoria: %s" % r.stderr[-2000:],
                    pytrace=False)
    venv = r.stdout.strip().splitlines()[-1]
    conf = tmp_path_factory.mktemp("nova-victoria") / "nova.conf"
    # fake transport and the noop notifier: Service.create emits a notification, nothing listens for it here
    conf.write_text("[DEFAULT]\ntransport_url = fake:/\n[database]\nconnection = %s?charset=utf8\n"
                    "[notifications]\nnotification_format = unversioned\n"
                    "[oslo_messaging_notifications]\ndriver = noop\n" % url(lab))
    with lab.connect_db() as conn, conn.cursor() as c:
        c.execute("DROP DATABASE IF EXISTS `%s`" % DB)
        c.execute("CREATE DATABASE `%s` CHARACTER SET utf8" % DB)
    p = subprocess.run([f"{venv}/bin/nova-manage", "--config-file", str(conf), "db", "sync", "--local_cell"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    yield {"venv": venv, "conf": str(conf), "url": url(lab)}
    with lab.connect_db() as conn, conn.cursor() as c:
        c.execute("DROP DATABASE IF EXISTS `%s`" % DB)


def victoria_objects(v, mode, req):
    """tests/nova_objects/victoria_rows.py <mode> in the Victoria venv; its JSON answer."""
    p = subprocess.run([f"{v['venv']}/bin/python", str(SCRIPT), mode], input=json.dumps(dict(req, conf=v["conf"])),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def node(name, cells):
    """A node whose NUMA cells have these pCPUs (cpu_dedicated_set), 1 GiB each."""
    return {"name": name, "cells": [{"id": i, "pcpus": p, "memory": 1024} for i, p in enumerate(cells)]}


def instance(uuid, node_name, pins, cell=0, memory=64):
    return {"uuid": uuid, "node": node_name, "memory": memory,
            "cells": [{"id": cell, "pins": {str(v): p for v, p in pins.items()}, "memory": memory}]}


def placement(pins, host_cell, mem=64):
    return {"cells": [{"guest_cell": 0, "host_cell": host_cell, "vcpus": sorted(pins),
                       "vcpu_pins": {str(v): p for v, p in pins.items()}, "memory_mb": mem, "pagesize_kb": None,
                       "cpuset_reserved": []}], "emulator_pins": sorted(pins.values()), "dedicated": True}


def usage(pinned, memory):
    """A cell's usage as Victoria counts a dedicated guest: pinned pCPUs, no shared CPU (cpu_usage 0), 4 KiB pages."""
    return {"pinned_cpus": pinned, "cpu_usage": 0, "memory_usage": memory, "pages_used": {"4": memory * 256}}


MOVED = "6c1a9e10-0000-4000-8000-0000000a0001"
STAYS = "6c1a9e10-0000-4000-8000-0000000b0001"


def test_fixup_moves_a_victoria_instance_and_victoria_accepts_both_nodes(lab, victoria, run_module):
    made = victoria_objects(victoria, "write", {
        "nodes": [node("vic-a", [[0, 1], [2, 3]]), node("vic-b", [[0, 1], [2, 3]])],
        "instances": [instance(MOVED, "vic-a", {0: 0, 1: 1}), instance(STAYS, "vic-b", {0: 0, 1: 1})]})
    assert all(n["usage_error"] is None for n in made["nodes"].values()), made
    before = victoria_objects(victoria, "check", {"nodes": ["vic-a", "vic-b"]})
    for n in ("vic-a", "vic-b"):
        assert not before[n]["errors"] and not before[n]["mismatch"], before
        assert before[n]["cells"]["0"]["usage"] == usage([0, 1], 64), before

    # the guest went from vic-a cell 0 (pCPUs 0,1) to vic-b's free cell 1 (pCPUs 2,3)
    rc, res = run_module("nova_instance_fixup", {
        "db_connection": victoria["url"], "placement_database": "", "neutron_database": "",
        "instance_uuid": MOVED, "dest_host": "vic-b", "placement": placement({0: 2, 1: 3}, host_cell=1)})
    assert rc == 0 and res["changed"], res

    after = victoria_objects(victoria, "check", {"nodes": ["vic-a", "vic-b"]})
    a, b = after["vic-a"], after["vic-b"]
    for n in (a, b):
        assert n["errors"] == [] and n["mismatch"] == [], json.dumps(after, indent=1)
        # the node rows are still Victoria's NUMACell 1.4, pCPUs in pcpuset, no shared CPUs
        assert {c: (v["version"], v["pcpuset"], v["cpuset"]) for c, v in n["cells"].items()} == \
            {"0": ("1.4", [0, 1], []), "1": ("1.4", [2, 3], [])}, n["cells"]
    assert a["instances"] == {} and a["pinned"] == {"0": [], "1": []}
    assert {c: v["usage"] for c, v in a["cells"].items()} == {"0": usage([], 0), "1": usage([], 0)}
    assert b["pinned"] == {"0": [0, 1], "1": [2, 3]}
    assert {c: v["usage"] for c, v in b["cells"].items()} == {"0": usage([0, 1], 64), "1": usage([2, 3], 64)}
    # the moved instance as Victoria loads it: InstanceNUMACell 1.6 kept, vCPUs in pcpuset, its new pins
    assert b["instances"][MOVED] == [{"id": 1, "version": "1.6", "pcpuset": [0, 1], "cpuset": [],
                                      "cpu_pinning": {"0": 2, "1": 3}, "cpu_policy": "dedicated"}]
    assert b["instances"][STAYS][0]["cpu_pinning"] == {"0": 0, "1": 1}
    with lab.connect_db(DB) as conn, conn.cursor() as c:
        c.execute("SELECT host, node FROM instances WHERE uuid=%s", (MOVED,))
        assert c.fetchone() == ("vic-b", "vic-b")
        c.execute("SELECT source_node, dest_node, status FROM migrations WHERE instance_uuid=%s", (MOVED,))
        assert c.fetchall() == (("vic-a", "vic-b", "completed"),)


def test_control_victoria_refuses_two_guests_on_one_pcpu(victoria):
    """The check can fail: two guests pinned to pCPU 0 of one node is Victoria's CPUPinningInvalid."""
    made = victoria_objects(victoria, "write", {
        "nodes": [node("vic-c", [[0, 1, 2, 3]])],
        "instances": [instance("6c1a9e10-0000-4000-8000-0000000c0001", "vic-c", {0: 0}),
                      instance("6c1a9e10-0000-4000-8000-0000000c0002", "vic-c", {0: 0})]})
    assert (made["nodes"]["vic-c"]["usage_error"] or "").startswith("CPUPinningInvalid"), made
    r = victoria_objects(victoria, "check", {"nodes": ["vic-c"]})["vic-c"]
    assert len(r["errors"]) == 1 and r["errors"][0].startswith("CPUPinningInvalid"), r
