"""Run inside Nova 19.3.2's own venv with a patched copy of the nova package first on sys.path
(tests/integration/test_nova_patch.py sets that up): the patch's hooks and data against Nova's
real objects, exceptions, XML config classes and usage accounting. Prints one JSON line."""
import json
import sys

from nova import exception
from nova import numa_repin_patch
from nova import objects
from nova.conductor.tasks import live_migrate
from nova.virt import hardware
from nova.virt.libvirt import config as vconfig

objects.register_all()
out = {"patched_file": live_migrate.__file__}
assert "numa_repin_patch" in open(live_migrate.__file__).read(), "not the patched conductor"


def guest(pins, host_cell=0, memory=64):
    return objects.InstanceNUMATopology(cells=[objects.InstanceNUMACell(
        id=host_cell, cpuset=set(pins), memory=memory, cpu_policy="dedicated",
        cpu_thread_policy=None, pagesize=None, cpuset_reserved=None,
        cpu_topology=objects.VirtCPUTopology(sockets=1, cores=len(pins), threads=1),
        cpu_pinning=dict(pins))])


def host_topology(cells, others=()):
    host = objects.NUMATopology(cells=[objects.NUMACell(
        id=i, cpuset=set(cpus), memory=1024, cpu_usage=0, memory_usage=0, pinned_cpus=set(),
        siblings=[set([c]) for c in cpus],
        mempages=[objects.NUMAPagesTopology(size_kb=4, total=262144, used=0, reserved=0)],
        network_metadata=objects.NetworkMetadata(physnets=set(), tunneled=False))
        for i, cpus in enumerate(cells)])
    # Nova's own accounting puts the other guests' pins on the host
    return hardware.numa_usage_from_instances(host, list(others))


class Node(object):
    def __init__(self, host, topo):
        self.host = host
        self.hypervisor_type = "QEMU"
        self.hypervisor_version = 7002000
        self.numa_topology = topo._to_json()


class Inst(object):
    uuid = "9b1b1e3a-1111-2222-3333-444455556666"

    def __init__(self, topo):
        self.numa_topology = topo


def task_for(instance, nodes):
    task = object.__new__(live_migrate.LiveMigrationTask)
    task.instance, task.source, task.context = instance, "cmp1", None
    task._get_compute_info = lambda host: nodes[host]
    return task


# Field case 1: the source pin (pCPU 1) is taken on cmp2 by another guest.
vm = Inst(guest({0: 1}))
cmp2 = host_topology([[0, 1]], others=[guest({0: 1})])
nodes = {"cmp1": Node("cmp1", host_topology([[0, 1]])), "cmp2": Node("cmp2", cmp2)}
task = task_for(vm, nodes)
task._check_instance_has_no_numa()          # pinned: no blanket refusal any more
task._check_compatible_with_source_hypervisor("cmp2")
placement = numa_repin_patch.plan(vm.numa_topology, nodes["cmp2"].numa_topology)
out["taken_placement"] = placement[0]["pins"]

# Pre-Train keeps the source pins: Nova's accounting refuses them on cmp2 ...
try:
    hardware.numa_usage_from_instances(cmp2, [vm.numa_topology])
    out["source_pins_on_dest"] = "accepted"
except exception.CPUPinningInvalid as e:
    out["source_pins_on_dest"] = "CPUPinningInvalid"
# ... the patched topology (what post_live_migration_at_destination saves) is accepted.
new = objects.InstanceNUMATopology.obj_from_primitive(
    numa_repin_patch.updated_topology(vm.numa_topology, placement))
used = hardware.numa_usage_from_instances(cmp2, [new])
out["dest_pinned_after"] = sorted(used.cells[0].pinned_cpus)

# Field case 3: no single cell has 2 free pCPUs.
vm2 = Inst(guest({0: 0, 1: 1}))
split = host_topology([[0, 1], [2, 3]], others=[guest({0: 1}), guest({0: 2}, host_cell=1)])
nodes["cmp2"] = Node("cmp2", split)
try:
    task_for(vm2, nodes)._check_compatible_with_source_hypervisor("cmp2")
    out["no_cell"] = "accepted"
except exception.MigrationPreCheckError as e:
    out["no_cell"] = str(e)

# An unpinned NUMA instance keeps Nova's own refusal (the workaround flag decides).
unpinned = Inst(objects.InstanceNUMATopology(cells=[objects.InstanceNUMACell(
    id=0, cpuset=set([0]), memory=64, cpu_policy=None, cpu_pinning=None)]))
unpinned.host, unpinned.node = "cmp1", "cmp1"
objects.ComputeNode.get_by_host_and_nodename = classmethod(lambda cls, ctx, h, n: nodes[h])
try:
    task_for(unpinned, nodes)._check_instance_has_no_numa()
    out["unpinned"] = "accepted"
except exception.MigrationPreCheckError as e:
    out["unpinned"] = "refused"

# Driver: Nova's own config classes write the XML the source sends; the patch repins it.
cfg = vconfig.LibvirtConfigGuest()
cfg.virt_type, cfg.name, cfg.uuid, cfg.memory, cfg.vcpus = "qemu", "instance-1", Inst.uuid, 65536, 1
cfg.os_type = "hvm"
cfg.cputune = vconfig.LibvirtConfigGuestCPUTune()
pin = vconfig.LibvirtConfigGuestCPUTuneVCPUPin()
pin.id, pin.cpuset = 0, set([1])
cfg.cputune.vcpupin.append(pin)
cfg.cputune.emulatorpin = vconfig.LibvirtConfigGuestCPUTuneEmulatorPin()
cfg.cputune.emulatorpin.cpuset = set([1])
cfg.numatune = vconfig.LibvirtConfigGuestNUMATune()
cfg.numatune.memory = vconfig.LibvirtConfigGuestNUMATuneMemory()
cfg.numatune.memory.nodeset = [0]
node = vconfig.LibvirtConfigGuestNUMATuneMemNode()
node.cellid, node.nodeset = 0, [0]
cfg.numatune.memnodes.append(node)
xml = numa_repin_patch.rewrite_xml(cfg.to_xml(), placement)
back = vconfig.LibvirtConfigGuest()
back.parse_str(xml)
out["xml_uuid_kept"] = back.uuid == Inst.uuid
vcpus, emulator, memnodes = numa_repin_patch.read_pins(xml)
out["xml_vcpupin"] = sorted(vcpus[0])
out["xml_emulatorpin"] = sorted(emulator)
json.dump(out, sys.stdout)
