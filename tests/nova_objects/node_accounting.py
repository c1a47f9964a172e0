"""Run in Nova 19.3.2's own venv: is every compute node's stored usage what Nova's resource tracker computes?

stdin: {"db": {"host", "port", "user", "password"}, "nodes": [<hypervisor_hostname>, ...] or null for all}
For each compute node, as the tracker's periodic does: load the node's topology with Nova's objects, clear its
usage (the driver reports none), load every instance the tracker counts on the node (not deleted, not shelved
offloaded) with Nova's objects, and run hardware.numa_usage_from_instances over them. A row Nova cannot load
(an object version above Stein's, malformed JSON) or an overlap (CPUPinningInvalid) is an error, as in the
tracker's log; a stored usage that differs from the recomputed one is a mismatch.
stdout (last line): {"<node>": {"errors": [...], "mismatch": [...], "pinned": {cell: [pCPUs]}}}
"""
import json
import sys

import pymysql
from nova import objects
from nova.virt import hardware
from oslo_serialization import jsonutils

objects.register_all()


def usage(cell):
    pages = {p.size_kb: p.used for p in cell.mempages}
    return {"pinned_cpus": sorted(cell.pinned_cpus), "cpu_usage": cell.cpu_usage,
            "memory_usage": cell.memory_usage, "pages_used": pages}


def check(cur, node):
    out = {"errors": [], "mismatch": [], "pinned": {}}
    cur.execute("SELECT numa_topology FROM nova.compute_nodes WHERE hypervisor_hostname=%s AND deleted=0", (node,))
    row = cur.fetchone()
    if not row or not row[0]:
        out["errors"].append("no compute node row with a numa_topology")
        return out
    try:
        stored = objects.NUMATopology.obj_from_db_obj(row[0])
        fresh = objects.NUMATopology.obj_from_db_obj(row[0])
    except Exception as e:  # Nova's own exception class is the report
        out["errors"].append("compute node: %s: %s" % (type(e).__name__, e))
        return out
    for cell in fresh.cells:
        cell.pinned_cpus = set()
        cell.cpu_usage = 0
        cell.memory_usage = 0
        for p in cell.mempages:
            p.used = 0
    cur.execute("SELECT i.uuid, e.numa_topology FROM nova.instances i JOIN nova.instance_extra e"
                " ON e.instance_uuid=i.uuid WHERE i.node=%s AND i.deleted=0"
                " AND COALESCE(i.vm_state, '') NOT IN ('deleted', 'shelved_offloaded') ORDER BY i.uuid", (node,))
    insts = []
    for uuid, text in cur.fetchall():
        if not text:
            continue
        try:
            insts.append(objects.InstanceNUMATopology.obj_from_db_obj(uuid, text))
        except Exception as e:
            out["errors"].append("instance %s: %s: %s" % (uuid, type(e).__name__, e))
    try:
        computed = hardware.numa_usage_from_instances(fresh, insts)
    except Exception as e:
        out["errors"].append("%s: %s" % (type(e).__name__, e))
        return out
    for s, c in zip(stored.cells, computed.cells):
        out["pinned"][str(c.id)] = sorted(c.pinned_cpus)
        if usage(s) != usage(c):
            out["mismatch"].append({"cell": c.id, "stored": usage(s), "nova": usage(c)})
    return out


def main():
    req = json.load(sys.stdin)
    d = req["db"]
    conn = pymysql.connect(host=d["host"], port=d["port"], user=d["user"], password=d["password"], charset="utf8")
    with conn.cursor() as cur:
        nodes = req.get("nodes")
        if not nodes:
            cur.execute("SELECT hypervisor_hostname FROM nova.compute_nodes WHERE deleted=0 ORDER BY 1")
            nodes = [r[0] for r in cur.fetchall()]
        print(json.dumps({n: check(cur, n) for n in nodes}, default=str))


if __name__ == "__main__":
    main()
