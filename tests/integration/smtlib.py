"""The lab's SMT NUMA hosts (tests/lab/smt.sh): QEMU machines under TCG with 2 NUMA nodes, thread siblings and
hugepages, each with its own kernel, libvirtd and sshd. Helpers to read them the way an operator would check a
move: libvirt's pins (`virsh vcpupin`, `emulatorpin`, `numatune`), the kernel's (/proc/<qemu>/task/*/status),
memory per node (`numastat -p`, /proc/<qemu>/numa_maps), and Nova's rows for their guests."""
import json
import os
import re
import subprocess
import time
import uuid as uuidlib

import labdb
from lablib import cpuset


def fmt_set(cpus):
    return ",".join(str(c) for c in sorted(cpus))


UP_LOG = "/var/log/numa-repin-smt-up.log"


def wait_up(lab, timeout=1200):
    """Wait for `tests/lab/smt.sh up` (tests/run.sh starts it in the background after the lab): its ready
    marker, or fail with its failed one. Started by nobody (no marker at all), fail at once with the command."""
    d = os.path.join(lab.data["lab_dir"], "smt")
    end = time.time() + timeout
    while True:
        if os.path.exists(os.path.join(d, "ready")):
            return
        if os.path.exists(os.path.join(d, "failed")):
            raise AssertionError("the SMT hosts did not come up: %s (tests/run.sh logs it to %s)"
                                 % (open(os.path.join(d, "failed")).read().strip(), UP_LOG))
        if not os.path.isdir(d):
            raise AssertionError("the SMT hosts are not up: run tests/lab/smt.sh up")
        assert time.time() < end, "tests/lab/smt.sh up did not finish within %d s" % timeout
        time.sleep(5)


class SmtHost:
    def __init__(self, lab, name):
        self.lab, self.name = lab, name
        self.spec = lab.data["smt"]["hosts"][name]
        self.address = self.spec["address"]
        self.uri = self.spec["libvirt_uri"]
        self.nodes = {i: cpuset(c) for i, c in enumerate(self.spec["nodes"])}
        self.pin_set = cpuset(self.spec["vcpu_pin_set"])

    def sh(self, cmd, check=True, timeout=120):
        s = self.lab.data["ssh"]
        r = subprocess.run(["ssh", "-F", s["config"], "-i", s["key"], "root@%s" % self.address, cmd],
                           capture_output=True, text=True, timeout=timeout)
        if check:
            assert r.returncode == 0, "%s on %s: %s" % (cmd, self.name, r.stderr[-800:])
        return r.stdout

    def virsh(self, *args, check=True):
        return self.sh("virsh -q " + " ".join(str(a) for a in args), check=check)

    def node_of(self, pcpu):
        return next(n for n, cpus in self.nodes.items() if pcpu in cpus)

    def siblings(self, pcpu):
        return cpuset(self.sh("cat /sys/devices/system/cpu/cpu%d/topology/thread_siblings_list" % pcpu).strip())

    def free_hugepages(self, node):
        return int(self.sh("cat /sys/devices/system/node/node%d/hugepages/hugepages-2048kB/free_hugepages" % node))

    def has(self, name):
        return self.sh("virsh -q dominfo %s" % name, check=False, timeout=60) != ""

    def define(self, name, xml):
        self.sh("cat > /tmp/%s.xml <<'EOF'\n%s\nEOF\nvirsh -q define /tmp/%s.xml && virsh -q start %s"
                % (name, xml, name, name), timeout=240)

    def remove(self, name):
        self.sh("virsh -q destroy %s; virsh -q undefine %s" % (name, name), check=False)

    # ------------------------------------------------------------------ what runs
    def vcpupin(self, name):
        """{vcpu: {pCPUs}} from `virsh vcpupin` (libvirt's live pins)."""
        out = {}
        for line in self.virsh("vcpupin", name).splitlines():
            v, c = line.split()
            out[int(v)] = cpuset(c)
        return out

    def emulatorpin(self, name):
        line = self.virsh("emulatorpin", name).strip().splitlines()[-1]
        return cpuset(line.split(":")[-1].strip())

    def memnodes(self, name):
        """{guest cell: host nodeset} of the live definition's <numatune><memnode>."""
        xml = self.virsh("dumpxml", name)
        return {int(c): cpuset(n) for c, n in re.findall(r"<memnode cellid='(\d+)' mode='strict' nodeset='([^']+)'/>",
                                                           xml)}

    def numatune(self, name):
        out = dict(re.findall(r"(\w+)\s*:\s*(\S+)", self.virsh("numatune", name)))
        return out

    def qemu_pid(self, name):
        return int(self.sh("cat /run/libvirt/qemu/%s.pid" % name).strip())

    def affinity(self, name):
        """The kernel's view inside the host: {vcpu: {pCPUs}} and the emulator's {pCPUs}."""
        pid = self.qemu_pid(name)
        out = self.sh("for t in /proc/%d/task/*; do printf '%%s\\t%%s\\t%%s\\n' \"${t##*/}\" \"$(cat $t/comm)\" "
                      "\"$(sed -n 's/^Cpus_allowed_list:\\s*//p' $t/status)\"; done" % pid)
        vcpus, emulator = {}, None
        for line in out.splitlines():
            tid, comm, allowed = line.split("\t")
            m = re.match(r"CPU (\d+)/", comm)
            if m:
                vcpus[int(m.group(1))] = cpuset(allowed)
            elif tid == str(pid):
                emulator = cpuset(allowed)
        return {"vcpus": vcpus, "emulator": emulator}

    def numastat(self, name):
        """`numastat -p <qemu>`: {row: [MB per node]} (rows Huge, Heap, Stack, Private, Total)."""
        out = self.sh("numastat -p %d" % self.qemu_pid(name))
        rows = {}
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] in ("Huge", "Heap", "Stack", "Private", "Total"):
                rows[parts[0]] = [float(x) for x in parts[1:-1]]
        return rows

    def bound_ranges(self, name):
        """The guest RAM mappings QEMU bound to host nodes (/proc/<qemu>/numa_maps): [(policy nodes,
        {node: pages})] for every `bind:` mapping."""
        out = []
        for line in self.sh("cat /proc/%d/numa_maps" % self.qemu_pid(name)).splitlines():
            m = re.search(r" bind:([\d,-]+)", line)
            if m:
                pages = {int(n): int(p) for n, p in re.findall(r" N(\d+)=(\d+)", line)}
                out.append((cpuset(m.group(1)), pages))
        return out


def domain_xml(name, uuid, cells, emulator=None, hugepages=False, threads=1):
    """A guest as Nova 19.3.2 defines a pinned one. cells: [{"pins": [pCPU per vCPU], "node": host node,
    "memory_mib": n}] in guest-cell order; emulator: the emulator's pCPUs (default: every vCPU's)."""
    vcpus, vcpupins, numa, memnodes, pin_all = 0, [], [], [], set()
    for i, c in enumerate(cells):
        first = vcpus
        for p in c["pins"]:
            vcpupins.append("    <vcpupin vcpu='%d' cpuset='%d'/>" % (vcpus, p))
            pin_all.add(p)
            vcpus += 1
        numa.append("      <cell id='%d' cpus='%d-%d' memory='%d' unit='KiB'/>" % (i, first, vcpus - 1,
                                                                                      c["memory_mib"] * 1024))
        memnodes.append("    <memnode cellid='%d' mode='strict' nodeset='%d'/>" % (i, c["node"]))
    memory_kib = sum(c["memory_mib"] for c in cells) * 1024
    nodes = fmt_set({c["node"] for c in cells})
    backing = ("  <memoryBacking>\n    <hugepages>\n      <page size='2048' unit='KiB' nodeset='%s'/>\n"
               "    </hugepages>\n  </memoryBacking>\n" % fmt_set(range(len(cells)))) if hugepages else ""
    return """<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.0">
      <nova:package version="19.3.2"/>
      <nova:name>{name}</nova:name>
    </nova:instance>
  </metadata>
  <memory unit='KiB'>{memory_kib}</memory>
  <currentMemory unit='KiB'>{memory_kib}</currentMemory>
{backing}  <vcpu placement='static'>{vcpus}</vcpu>
  <cputune>
    <shares>{shares}</shares>
{vcpupins}
    <emulatorpin cpuset='{emulator}'/>
  </cputune>
  <numatune>
    <memory mode='strict' nodeset='{nodes}'/>
{memnodes}
  </numatune>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <cpu>
    <topology sockets='{sockets}' cores='1' threads='{threads}'/>
    <numa>
{numa}
    </numa>
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <memballoon model='none'/>
  </devices>
</domain>""".format(name=name, uuid=uuid, memory_kib=memory_kib, backing=backing, vcpus=vcpus, shares=1024 * vcpus,
                    vcpupins="\n".join(vcpupins), emulator=fmt_set(emulator or pin_all), nodes=nodes,
                    memnodes="\n".join(memnodes), sockets=vcpus // threads, threads=threads, numa="\n".join(numa))


# ------------------------------------------------------------------------------------------------ Nova's rows
def node_uuid(host):
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, "numa-repin-lab-node-" + host))


def register_node(lab, conn, host, facts):
    """services, compute_nodes (NUMATopology from the host's own numa_facts and its vcpu_pin_set, no usage: the
    fixup recomputes it from the instances), nova_api.host_mappings and a Placement provider, as nova-compute's
    first periodic would write them."""
    pin_set = cpuset(host.spec["vcpu_pin_set"])
    cells, vcpus, memory_mb = [], 0, 0
    for c in facts["cells"]:
        cpus = {x["id"] for x in c["cpus"]} & pin_set
        sib = {tuple(sorted(set(x["siblings"]) & cpus)) for x in c["cpus"]}
        pages = [(p["size_kb"], p["total"], 0, 0) for p in c["pages"]]
        cells.append({"id": c["id"], "cpuset": cpus, "memory": c["memory_mb"], "cpu_usage": 0, "memory_usage": 0,
                      "pinned_cpus": [], "siblings": sorted(list(x) for x in sib if len(x) > 1), "mempages": pages})
        vcpus += len(cpus)
        memory_mb += c["memory_mb"]
    numa = json.dumps(labdb.compute_numa_primitive(cells))
    with conn.cursor() as cur:
        sid = labdb.upsert_service(cur, host.name)
        labdb.upsert_compute_node(cur, host.name, node_uuid(host.name), host.address, vcpus, memory_mb, numa, 0, 0, 0,
                                  service_id=sid)
        labdb.upsert_provider(cur, node_uuid(host.name), host.name,
                              {labdb.VCPU: (vcpus, 0, vcpus, 1.0), labdb.MEMORY_MB: (memory_mb, 0, memory_mb, 1.0)})
    conn.commit()


def unregister_node(conn, host):
    """Take the host's rows out again (register_node's), so the lab's DB is as the standard seed left it: the
    other tests check every compute node with Nova's accounting."""
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM placement.resource_providers WHERE uuid=%s", (node_uuid(host.name),))
        rp = cur.fetchone()
        if rp:
            cur.execute("DELETE FROM placement.allocations WHERE resource_provider_id=%s", (rp[0],))
            cur.execute("DELETE FROM placement.inventories WHERE resource_provider_id=%s", (rp[0],))
            # root_provider_id references the row itself
            cur.execute("UPDATE placement.resource_providers SET root_provider_id=NULL WHERE id=%s", (rp[0],))
            cur.execute("DELETE FROM placement.resource_providers WHERE id=%s", (rp[0],))
        cur.execute("DELETE FROM nova.compute_nodes WHERE host=%s", (host.name,))
        cur.execute("DELETE FROM nova.services WHERE host=%s", (host.name,))
        cur.execute("DELETE FROM nova_api.host_mappings WHERE host=%s", (host.name,))
    conn.commit()


def insert_guest_rows(lab, conn, host, uuid, name, cells, extra_specs=None, emulator_threads_policy=None,
                      memory_mb=None):
    """An instance on `host` with Nova's InstanceNUMATopology of `cells` ([labdb.instance_numa_cell(...)]), its
    flavor's extra specs, and Placement allocations on the host's provider."""
    vcpus = sum(len(c["nova_object.data"]["cpuset"]) for c in cells)
    memory_mb = memory_mb or sum(c["nova_object.data"]["memory"] for c in cells)
    numa = json.dumps(labdb.instance_numa_topology(cells, emulator_threads_policy))
    specs = {"hw:cpu_policy": "dedicated"}
    specs.update(extra_specs or {})
    flavor = json.dumps(labdb.flavor_primitive("smt.%dc%dm" % (vcpus, memory_mb), vcpus, memory_mb,
                                               extra_specs=specs))
    with conn.cursor() as cur:
        labdb.insert_instance(cur, uuid, name, host.name, {}, vcpus, memory_mb, numa_json=numa, flavor_json=flavor,
                              project_id=lab.data["project_id"], user_id=lab.data["user_id"])
        labdb.set_allocations(cur, uuid, node_uuid(host.name), {labdb.VCPU: vcpus, labdb.MEMORY_MB: memory_mb},
                              lab.data["project_id"], lab.data["user_id"])
    conn.commit()


def instance_row(conn, uuid):
    with conn.cursor() as c:
        c.execute("SELECT i.host, i.node, e.numa_topology FROM nova.instances i JOIN nova.instance_extra e"
                  " ON e.instance_uuid=i.uuid WHERE i.uuid=%s", (uuid,))
        host, node, numa = c.fetchone()
    cells = [c["nova_object.data"] for c in json.loads(numa)["nova_object.data"]["cells"]]
    return {"host": host, "node": node, "cells": cells}
