"""Seed the lab's Nova/Placement/Neutron rows for the standard guests (tests/lab/guests/standard.json). Idempotent.

Runs in the Nova 19.3.2 venv (tests/lab/venv.sh nova), so the JSON is Nova's own:
    $(tests/lab/venv.sh nova)/bin/python tests/lab/seed_db.py --nova-conf $LAB_DIR/etc/kolla/nova-conductor/nova.conf \
        --lab-dir $LAB_DIR [--reset]

- instances/instance_extra/instance_info_caches/nova_api.instance_mappings for each guest, inserted when absent
  (--reset: deleted first). instance_extra.numa_topology and .flavor come from Nova's objects (Stein format);
  the guest marked "numa_format": "victoria" gets the Victoria+ layout (InstanceNUMACell 1.5 with pcpuset), which
  Stein's objects cannot produce: labdb.py writes it, and its Stein part is checked against Nova's objects.
- services + compute_nodes (every compute of --hosts; compute_nodes.host_ip is the host's nova.conf my_ip)
  with numa_topology (NUMATopology 1.2 / NUMACell 1.3) recomputed on every
  run from the instances on each host and the host's vcpu_pin_set, plus nova_api.host_mappings. (lab.sh up runs
  this only when some standard rows are missing.)
- placement: a resource provider per compute node (VCPU, MEMORY_MB, DISK_GB, PCPU inventories) and allocations
  per instance (Stein format: VCPU + MEMORY_MB; Victoria format: PCPU + MEMORY_MB).
- neutron: not here; the standard guests' ports are made through neutron-server's API (neutron_lab.py).
Finally every Stein row is loaded back through Nova's objects (Instance.get_by_uuid, ComputeNode).
"""
import argparse
import configparser
import json
import os
import sys
from urllib.parse import urlparse, unquote

import pymysql

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import labdb  # noqa: E402
import labspec  # noqa: E402

from nova import objects  # noqa: E402

objects.register_all()
from oslo_serialization import jsonutils  # noqa: E402



def node_uuid(host):
    """cmpN's compute node (and resource provider) uuid: ...0000000c000N."""
    return "6c1a9e10-0000-4000-8000-0000000c%04d" % int(host[len("cmp"):])


RESERVED_MB = labspec.RESERVED_HOST_MEMORY_MB  # each compute's nova.conf reserved_host_memory_mb


def cpuset(spec):
    out = set()
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-")
            out.update(range(int(a), int(b) + 1))
        elif part:
            out.add(int(part))
    return out


def host_memory_mb():
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def nova_instance_numa(pins, memory_mb):
    cell = objects.InstanceNUMACell(
        id=0, cpuset=set(int(v) for v in pins), memory=memory_mb, pagesize=None,
        cpu_topology=objects.VirtCPUTopology(sockets=1, cores=len(pins), threads=1),
        cpu_pinning={int(v): int(p) for v, p in pins.items()}, cpu_policy="dedicated", cpu_thread_policy=None,
        cpuset_reserved=None)
    return objects.InstanceNUMATopology(cells=[cell], emulator_threads_policy=None)


def nova_flavor(name, vcpus, memory_mb):
    f = objects.Flavor(id=1, name=name, memory_mb=memory_mb, vcpus=vcpus, root_gb=0, ephemeral_gb=0, flavorid=name,
                       swap=0, rxtx_factor=1.0, vcpu_weight=0, disabled=False, is_public=True,
                       extra_specs={"hw:cpu_policy": "dedicated"}, description=None)
    return {"cur": f.obj_to_primitive(), "old": None, "new": None}


def pins_of(numa_json):
    """{vcpu: pcpu} of an instance_extra.numa_topology (any format)."""
    if not numa_json:
        return {}
    top = json.loads(numa_json)
    out = {}
    for c in top["nova_object.data"]["cells"]:
        for v, p in (c["nova_object.data"].get("cpu_pinning_raw") or {}).items():
            out[int(v)] = p
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nova-conf", required=True)
    ap.add_argument("--lab-dir", required=True)
    ap.add_argument("--hosts", required=True, help="the computes, space-separated (cmp1 cmp2 ...)")
    ap.add_argument("--reset", action="store_true", help="delete and re-insert the standard guests' rows")
    a = ap.parse_args()
    cp = configparser.ConfigParser()
    cp.read(a.nova_conf)
    u = urlparse(cp.get("database", "connection"))
    conn = pymysql.connect(host=u.hostname, port=u.port or 3306, user=unquote(u.username),
                           password=unquote(u.password), autocommit=False, charset="utf8")
    std = json.load(open(os.path.join(HERE, "guests", "standard.json")))
    cur = conn.cursor()
    made = []
    for g in std["guests"]:
        pins = {i: p for i, p in enumerate(g["pins"])}
        top = nova_instance_numa(pins, g["memory_mib"])
        nova_prim = jsonutils.loads(top._to_json())
        ours = labdb.instance_numa_primitive(pins, g["memory_mib"], fmt="stein")
        if not labdb.same_primitive(nova_prim, ours):
            sys.exit("labdb.instance_numa_primitive differs from Nova's objects:\n%s\n%s"
                     % (json.dumps(nova_prim, sort_keys=True), json.dumps(ours, sort_keys=True)))
        if g.get("numa_format", "stein") == "victoria":
            numa_json = labdb.instance_numa_json(pins, g["memory_mib"], fmt="victoria")
        else:
            numa_json = top._to_json()
        flavor = nova_flavor("pinned.%dc%dm" % (g["vcpus"], g["memory_mib"]), g["vcpus"], g["memory_mib"])
        if a.reset:
            labdb.delete_instance(cur, g["uuid"], ports=False)
        if not labdb.instance_exists(cur, g["uuid"]):
            labdb.insert_instance(cur, g["uuid"], g["name"], g["host"], pins, g["vcpus"], g["memory_mib"],
                                  numa_json=numa_json, flavor_json=jsonutils.dumps(flavor),
                                  project_id=std["project_id"], user_id=std["user_id"])
            made.append(g["name"])
    # Compute nodes, from the instances each host has now (tests may have moved some).
    mem = host_memory_mb()
    labdb.upsert_service(cur, "control", "nova-conductor", "conductor")
    for h in a.hosts.split():
        conf = configparser.ConfigParser()
        conf.read(os.path.join(a.lab_dir, h, "etc/kolla/nova-compute/nova.conf"))
        addr = conf.get("DEFAULT", "my_ip")
        allowed = cpuset(conf.get("DEFAULT", "vcpu_pin_set"))
        cur.execute("SELECT i.vcpus, i.memory_mb, e.numa_topology FROM nova.instances i LEFT JOIN nova.instance_extra e"
                    " ON e.instance_uuid=i.uuid WHERE i.host=%s AND i.deleted=0", (h,))
        rows = cur.fetchall()
        # Usage as Nova's resource tracker computes it (hardware.numa_usage_from_instances): the union of the
        # pins (cmp1's seeded overlap is one the tracker would refuse), the vCPUs and memory of the cells, and
        # the memory in the smallest pages (a cell without a page size takes those).
        pinned = set()
        for _, _, nt in rows:
            pinned |= set(pins_of(nt).values())
        vcpus_used = sum(r[0] for r in rows)
        mem_used = sum(r[1] for r in rows)
        cell = objects.NUMACell(
            id=0, cpuset=allowed, memory=mem, cpu_usage=vcpus_used, memory_usage=mem_used, pinned_cpus=pinned,
            siblings=[set([c]) for c in sorted(allowed)],
            mempages=[objects.NUMAPagesTopology(size_kb=4, total=mem * 256, used=mem_used * 256, reserved=0),
                      objects.NUMAPagesTopology(size_kb=2048, total=0, used=0, reserved=0)],
            network_metadata=objects.NetworkMetadata(physnets=set(), tunneled=False))
        numa = objects.NUMATopology(cells=[cell])._to_json()
        ours = labdb.compute_numa_primitive([{"id": 0, "cpuset": allowed, "memory": mem, "cpu_usage": vcpus_used,
                                              "memory_usage": mem_used, "pinned_cpus": pinned,
                                              "siblings": [[c] for c in sorted(allowed)],
                                              "mempages": [(4, mem * 256, mem_used * 256, 0), (2048, 0, 0, 0)]}])
        if not labdb.same_primitive(jsonutils.loads(numa), ours):
            sys.exit("labdb.compute_numa_primitive differs from Nova's objects")
        sid = labdb.upsert_service(cur, h)
        labdb.upsert_compute_node(cur, h, node_uuid(h), addr, len(allowed), mem, numa, vcpus_used,
                                  mem_used + RESERVED_MB, len(rows), service_id=sid)
        labdb.upsert_provider(cur, node_uuid(h), h, {
            labdb.VCPU: (len(allowed), 0, len(allowed), 16.0),
            labdb.PCPU: (len(allowed), 0, len(allowed), 1.0),
            labdb.MEMORY_MB: (mem, RESERVED_MB, mem, 1.5),
            labdb.DISK_GB: (50, 0, 50, 1.0)})
    # Placement allocations of the standard guests, where they are now (their Neutron ports: neutron_lab.py).
    for g in std["guests"]:
        cur.execute("SELECT host FROM nova.instances WHERE uuid=%s AND deleted=0", (g["uuid"],))
        row = cur.fetchone()
        if not row:
            continue
        host = row[0]
        cur.execute("SELECT COUNT(*) FROM placement.allocations WHERE consumer_id=%s", (g["uuid"],))
        if a.reset or g["name"] in made or not cur.fetchone()[0]:
            cls = labdb.PCPU if g.get("numa_format") == "victoria" else labdb.VCPU
            labdb.set_allocations(cur, g["uuid"], node_uuid(host), {cls: g["vcpus"], labdb.MEMORY_MB: g["memory_mib"]},
                                  std["project_id"], std["user_id"])
    conn.commit()
    verify(a.nova_conf, std, a.hosts.split())
    print("seed_db: %s" % ("inserted " + ", ".join(made) if made else "standard rows present"))


def verify(conf, std, hosts):
    """Load the rows back through Nova's own DB API and objects."""
    import nova.conf
    from nova import context
    nova.conf.CONF([], default_config_files=[conf], project="nova")
    ctxt = context.get_admin_context()
    for g in std["guests"]:
        if g.get("numa_format", "stein") != "stein":
            continue
        inst = objects.Instance.get_by_uuid(ctxt, g["uuid"], expected_attrs=["numa_topology", "flavor"])
        cell = inst.numa_topology.cells[0]
        assert cell.cpu_pinning == {i: p for i, p in enumerate(g["pins"])}, (g["name"], cell.cpu_pinning)
        assert inst.flavor.vcpus == g["vcpus"]
    for h in hosts:
        cn = objects.ComputeNode.get_by_host_and_nodename(ctxt, h, h)
        objects.NUMATopology.obj_from_db_obj(cn.numa_topology)


if __name__ == "__main__":
    main()
