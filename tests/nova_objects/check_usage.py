"""Run in Nova 19.3.2's own venv: does Nova accept what nova_instance_fixup wrote?

stdin: {"host": <compute_nodes.numa_topology JSON text>, "instances": [<instance_extra.numa_topology JSON text>, ...]}
Loads every instance topology with InstanceNUMATopology.obj_from_primitive and runs Nova's own
usage accounting (hardware.numa_usage_from_instances) over the host as the resource tracker
rebuilds it (no pins yet): an overlap raises CPUPinningInvalid, as in the tracker's log.
stdout: {"ok": true} or {"error": "<ExceptionClass>: <message>"}.
"""
import json
import sys

from nova import objects
from nova.virt import hardware
from oslo_serialization import jsonutils

objects.register_all()


def main():
    req = json.load(sys.stdin)
    try:
        host = objects.NUMATopology.obj_from_primitive(jsonutils.loads(req["host"]))
        for cell in host.cells:  # the tracker starts from libvirt's view: nothing pinned yet
            cell.pinned_cpus = set()
            cell.cpu_usage = 0
            cell.memory_usage = 0
        insts = [objects.InstanceNUMATopology.obj_from_primitive(jsonutils.loads(t)) for t in req["instances"]]
        for t in insts:
            host = hardware.numa_usage_from_instances(host, [t])
        print(json.dumps({"ok": True, "pinned": {c.id: sorted(c.pinned_cpus) for c in host.cells}}))
    except Exception as e:  # the check reports Nova's own exception class
        print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))


if __name__ == "__main__":
    main()
