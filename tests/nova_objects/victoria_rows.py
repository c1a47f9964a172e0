"""Run in Nova 22.4.0's (Victoria) own venv, against a DB that Victoria's nova-manage made: write NUMA rows with
Victoria's objects, or read them back and run Victoria's own resource-tracker accounting over them.

Usage: victoria_rows.py write|check, request JSON on stdin; stdout (last line) JSON.

write: {"conf": <nova.conf with [database] connection>,
        "nodes": [{"name", "cells": [{"id", "pcpus": [..], "cpus": [..] (shared, default none), "memory" (MiB)}]}],
        "instances": [{"uuid", "node", "memory" (MiB), "cells": [{"id", "pins": {"vcpu": pcpu}, "memory"}]}]}
  Creates a nova-compute Service and a ComputeNode per node (host = node name), the node's NUMATopology as Victoria's
  libvirt driver reports it with only cpu_dedicated_set (NUMACell.pcpuset; cpuset holds the shared CPUs), and each
  Instance (Instance.create: instances + instance_extra) with a pinned InstanceNUMATopology (cpu_policy dedicated:
  pinned vCPUs in pcpuset, cpuset empty). Each node's stored usage is what Victoria's tracker computes from its
  instances (hardware.numa_usage_from_instance_numa, one instance at a time); a node whose instances Victoria refuses
  keeps no usage, and the refusal is reported. stdout: {"nodes": {name: {"usage_error": ..}}, "instances": {uuid: id}}

check: {"conf", "nodes": [name, ..]}
  For each node, as Victoria's tracker does: its topology with NUMATopology.obj_from_db_obj, usage cleared; every
  instance it counts on the node (not deleted, not shelved offloaded) with InstanceNUMATopology.obj_from_db_obj;
  hardware.numa_usage_from_instance_numa over them. stdout: {name: {"errors": [..], "mismatch": [..],
  "pinned": {cell: [..]}, "cells": {cell: {pcpuset, cpuset, version, usage}}, "instances": {uuid: [cell, ..]}}}
"""
import json
import sys

from nova import config
from nova import context as nova_context
from nova import objects
from nova.objects import fields
from nova.virt import hardware
from oslo_serialization import jsonutils
from sqlalchemy import text

objects.register_all()


def setup(conf):
    config.parse_args([sys.argv[0], "--config-file", conf], configure_db=True, init_rpc=True)
    return nova_context.get_admin_context()


def usage(cell):
    return {"pinned_cpus": sorted(cell.pinned_cpus), "cpu_usage": cell.cpu_usage,
            "memory_usage": cell.memory_usage, "pages_used": {str(p.size_kb): p.used for p in cell.mempages}}


def clear(topo):
    for cell in topo.cells:
        cell.pinned_cpus = set()
        cell.cpu_usage = 0
        cell.memory_usage = 0
        for p in cell.mempages:
            p.used = 0
    return topo


def account(host, insts):
    for t in insts:
        host = hardware.numa_usage_from_instance_numa(host, t)
    return host


def host_topology(cells):
    out = []
    for c in cells:
        pcpus, cpus = set(c["pcpus"]), set(c.get("cpus", []))
        out.append(objects.NUMACell(
            id=c["id"], cpuset=cpus, pcpuset=pcpus, memory=c["memory"], cpu_usage=0, memory_usage=0,
            pinned_cpus=set(), siblings=[{p} for p in sorted(cpus | pcpus)],
            mempages=[objects.NUMAPagesTopology(size_kb=4, total=c["memory"] * 256, used=0, reserved=0)],
            network_metadata=objects.NetworkMetadata(physnets=set(), tunneled=False)))
    return objects.NUMATopology(cells=out)


def instance_topology(cells):
    out = []
    for c in cells:
        pins = {int(v): int(p) for v, p in c["pins"].items()}
        cell = objects.InstanceNUMACell(
            id=c["id"], cpuset=set(), pcpuset=set(pins), memory=c["memory"], pagesize=None,
            cpu_policy=fields.CPUAllocationPolicy.DEDICATED, cpu_thread_policy=None, cpuset_reserved=None,
            cpu_topology=objects.VirtCPUTopology(sockets=1, cores=len(pins), threads=1))
        cell.cpu_pinning = pins
        out.append(cell)
    return objects.InstanceNUMATopology(cells=out, emulator_threads_policy=None)


def write(ctx, req):
    res = {"nodes": {}, "instances": {}}
    by_node = {}
    for i in req["instances"]:
        by_node.setdefault(i["node"], []).append(instance_topology(i["cells"]))
    for n in req["nodes"]:
        name = n["name"]
        topo = host_topology(n["cells"])
        err = None
        try:
            topo = account(topo, by_node.get(name, []))
        except Exception as e:  # the tracker would log this and keep no usage
            err = "%s: %s" % (type(e).__name__, e)
            topo = clear(topo)
        svc = objects.Service(ctx, host=name, binary="nova-compute", topic="compute", report_count=0,
                              disabled=False, forced_down=False)
        svc.create()
        ncpu = sum(len(c.cpuset | c.pcpuset) for c in topo.cells)
        mem = sum(c.memory for c in topo.cells)
        insts = [i for i in req["instances"] if i["node"] == name]
        cn = objects.ComputeNode(
            ctx, host=name, hypervisor_hostname=name, service_id=svc.id, vcpus=ncpu, memory_mb=mem, local_gb=10,
            vcpus_used=sum(sum(len(c["pins"]) for c in i["cells"]) for i in insts),
            memory_mb_used=sum(i["memory"] for i in insts), local_gb_used=0, free_ram_mb=mem, free_disk_gb=10,
            current_workload=0, running_vms=len(insts), hypervisor_type="QEMU", hypervisor_version=7002000,
            cpu_info="{}", disk_available_least=10, host_ip="127.0.0.1", supported_hv_specs=[],
            numa_topology=topo._to_json(), cpu_allocation_ratio=16.0, ram_allocation_ratio=1.5,
            disk_allocation_ratio=1.0, pci_device_pools=objects.PciDevicePoolList(objects=[]), stats={})
        cn.create()
        res["nodes"][name] = {"usage_error": err, "id": cn.id, "uuid": cn.uuid}
    for i in req["instances"]:
        vcpus = sum(len(c["pins"]) for c in i["cells"])
        flavor = objects.Flavor(id=1, name="pinned.%dc%dm" % (vcpus, i["memory"]), memory_mb=i["memory"],
                                vcpus=vcpus, root_gb=0, ephemeral_gb=0, flavorid="pinned", swap=0, rxtx_factor=1.0,
                                vcpu_weight=0, disabled=False, is_public=True, description=None,
                                extra_specs={"hw:cpu_policy": "dedicated"})
        inst = objects.Instance(
            ctx, uuid=i["uuid"], display_name="vic-%s" % i["uuid"][:8], hostname="vic-%s" % i["uuid"][:8],
            host=i["node"], node=i["node"], launched_on=i["node"], vm_state="active", power_state=1,
            task_state=None, vcpus=vcpus, memory_mb=i["memory"], root_gb=0, ephemeral_gb=0, instance_type_id=1,
            project_id="6c1a9e10-0000-4000-8000-0000000000aa", user_id="6c1a9e10-0000-4000-8000-0000000000bb",
            availability_zone="nova", image_ref="", flavor=flavor, numa_topology=instance_topology(i["cells"]))
        inst.create()
        res["instances"][i["uuid"]] = inst.id
    return res


def check(ctx, req):
    from nova.db.sqlalchemy import api as db_api
    engine = db_api.get_engine()
    out = {}
    for node in req["nodes"]:
        r = {"errors": [], "mismatch": [], "pinned": {}, "cells": {}, "instances": {}}
        out[node] = r
        with engine.connect() as conn:
            row = conn.execute(text("SELECT numa_topology FROM compute_nodes WHERE hypervisor_hostname=:n"
                                    " AND deleted=0"), n=node).fetchone()
            rows = conn.execute(text(
                "SELECT i.uuid, e.numa_topology FROM instances i JOIN instance_extra e ON e.instance_uuid=i.uuid"
                " WHERE i.node=:n AND i.deleted=0 AND COALESCE(i.vm_state, '') NOT IN ('deleted',"
                " 'shelved_offloaded') ORDER BY i.uuid"), n=node).fetchall()
        if not row or not row[0]:
            r["errors"].append("no compute node row with a numa_topology")
            continue
        try:
            stored = objects.NUMATopology.obj_from_db_obj(row[0])
            fresh = clear(objects.NUMATopology.obj_from_db_obj(row[0]))
        except Exception as e:  # Victoria's own exception class is the report
            r["errors"].append("compute node: %s: %s" % (type(e).__name__, e))
            continue
        raw_cells = jsonutils.loads(row[0])["nova_object.data"]["cells"]
        for c, raw in zip(stored.cells, raw_cells):
            r["cells"][str(c.id)] = {"version": raw["nova_object.version"], "pcpuset": sorted(c.pcpuset),
                                     "cpuset": sorted(c.cpuset), "usage": usage(c)}
        insts = []
        for uuid, text_ in rows:
            if not text_:
                continue
            try:
                t = objects.InstanceNUMATopology.obj_from_db_obj(ctx, uuid, text_)
            except Exception as e:
                r["errors"].append("instance %s: %s: %s" % (uuid, type(e).__name__, e))
                continue
            raw_cells = jsonutils.loads(text_)["nova_object.data"]["cells"]
            r["instances"][uuid] = [
                {"id": c.id, "version": raw["nova_object.version"], "pcpuset": sorted(c.pcpuset),
                 "cpuset": sorted(c.cpuset), "cpu_pinning": {str(k): v for k, v in sorted(c.cpu_pinning.items())},
                 "cpu_policy": c.cpu_policy}
                for c, raw in zip(t.cells, raw_cells)]
            insts.append(t)
        try:
            computed = account(fresh, insts)
        except Exception as e:
            r["errors"].append("%s: %s" % (type(e).__name__, e))
            continue
        for s, c in zip(stored.cells, computed.cells):
            r["pinned"][str(c.id)] = sorted(c.pinned_cpus)
            if usage(s) != usage(c):
                r["mismatch"].append({"cell": c.id, "stored": usage(s), "nova": usage(c)})
    return out


def main():
    mode = sys.argv[1]
    req = json.load(sys.stdin)
    ctx = setup(req["conf"])
    res = {"write": write, "check": check}[mode](ctx, req)
    print(json.dumps(res, default=str))


if __name__ == "__main__":
    main()
