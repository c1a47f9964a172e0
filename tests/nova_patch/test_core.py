# -*- coding: utf-8 -*-
# Tests of the in-band Nova patch's core (roles/nova_patch/src/numa_repin_patch.py).
# Python 2.7 (pytest 4.6) and 3: tests/nova_patch/run.sh runs them on both.
from __future__ import absolute_import, print_function

import copy
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "roles", "nova_patch", "src"))
import numa_repin_patch as p  # noqa: E402


def envelope(name, version, data):
    return {"nova_object.name": name, "nova_object.namespace": "nova",
            "nova_object.version": version, "nova_object.data": data}


def host_cell(cid, cpus, pinned=(), memory=1024, used=0, siblings=None, version="1.3",
              pages=None):
    data = {"id": cid, "cpuset": sorted(cpus), "memory": memory, "cpu_usage": len(pinned),
            "memory_usage": used, "pinned_cpus": sorted(pinned),
            "siblings": siblings if siblings is not None else [[c] for c in sorted(cpus)],
            "mempages": pages or []}
    if version != "1.2":
        data["network_metadata"] = {"nova_object.name": "NetworkMetadata", "nova_object.data": {}}
    return envelope("NUMACell", version, data)


def host(*cells):
    return json.dumps(envelope("NUMATopology", "1.2", {"cells": list(cells)}))


def guest_cell(cid, vcpus, pins, memory=64, reserved=None, thread_policy=None, pagesize=None):
    return envelope("InstanceNUMACell", "1.4", {
        "id": cid, "cpuset": list(vcpus), "cpuset_reserved": reserved, "memory": memory,
        "pagesize": pagesize,
        "cpu_topology": envelope("VirtCPUTopology", "1.0",
                                 {"sockets": 1, "cores": len(vcpus), "threads": 1}),
        "cpu_pinning_raw": dict((str(v), pc) for v, pc in zip(vcpus, pins)),
        "cpu_policy": "dedicated", "cpu_thread_policy": thread_policy})


def instance(*cells):
    return envelope("InstanceNUMATopology", "1.3",
                    {"cells": list(cells), "emulator_threads_policy": None})


# ------------------------------------------------------------------ placement
# Which cells and pCPUs is Nova's own numa_fit_instance_to_host's choice (the
# field cases run through Nova's services in tests/nova_harness/); the core
# turns a fitted topology into the XML rewrite's placement and explains a
# refusal.

def fitted(*cells):
    return instance(*cells)


def test_placement_from_fitted_topology():
    topo = fitted(guest_cell(1, [0, 1], [3, 2], reserved=[1]), guest_cell(0, [2], [0]))
    assert p.placement_from_topology(topo) == [
        {"index": 0, "host_cell": 1, "pins": {0: 3, 1: 2}, "reserved": [1], "memory": 64},
        {"index": 1, "host_cell": 0, "pins": {2: 0}, "reserved": [], "memory": 64}]


def test_unpinned_fitted_cell_is_an_error():
    with pytest.raises(p.RepinError):
        p.placement_from_topology(fitted(guest_cell(0, [0, 1], [3])))


def test_refusal_names_the_whole_instance_and_every_cell():
    inst = instance(guest_cell(0, [0, 1], [0, 1]), guest_cell(1, [2, 3], [2, 3]))
    dest = host(host_cell(0, [0, 1], pinned=[1], memory=1024, used=64),
                host_cell(1, [2, 3], pinned=[2, 3]))
    e = p.refusal(inst, dest)
    assert isinstance(e, p.NoNumaAvailable)
    assert (e.vcpus, e.memory) == (4, 128)
    assert str(e) == ("No numa available with 4 vcpu and 128 memory (cell 0: 1 free pCPUs, "
                      "960 MiB free; cell 1: 0 free pCPUs, 1024 MiB free)")


def test_refusal_of_one_vcpu_with_isolated_emulator_thread():
    # The reserved emulator pCPU is not counted in the field message.
    inst = instance(guest_cell(0, [0], [0], reserved=[1]))
    e = p.refusal(inst, host(host_cell(0, [0, 1], pinned=[0])))
    assert str(e).startswith("No numa available with 1 vcpu and 64 memory (")


def test_refusal_with_unreadable_destination_still_has_the_message():
    e = p.refusal(instance(guest_cell(0, [0], [0])), None)
    assert str(e) == "No numa available with 1 vcpu and 64 memory"


def test_queens_and_train_cell_formats():
    queens = p.host_cells(host(host_cell(0, [0, 1], pinned=[0], version="1.2")))
    assert queens[0]["cpus"] == {0, 1} and queens[0]["pinned"] == {0}
    train = json.loads(host(host_cell(0, [], version="1.4")))
    train["nova_object.data"]["cells"][0]["nova_object.data"]["pcpuset"] = [3]
    assert p.host_cells(json.dumps(train))[0]["cpus"] == {3}


def test_destination_without_numa_topology_is_refused():
    with pytest.raises(p.RepinError):
        p.host_cells(None)
    with pytest.raises(p.RepinError):
        p.host_cells("{not json")


def test_is_pinned():
    assert p.is_pinned(instance(guest_cell(0, [0], [0])))
    assert not p.is_pinned(None)
    unpinned = instance(guest_cell(0, [0], []))
    unpinned["nova_object.data"]["cells"][0]["nova_object.data"]["cpu_policy"] = None
    assert not p.is_pinned(unpinned)


def test_cpu_spec():
    assert p.parse_cpu_spec("0-3,^2,8") == {0, 1, 3, 8}
    assert p.format_cpu_spec({0, 1, 3, 8, 9}) == "0-1,3,8-9"
    with pytest.raises(p.RepinError):
        p.parse_cpu_spec("3-1")


# ------------------------------------------------------------------ XML

NOVA_XML = u"""<domain type="qemu">
  <name>instance-00000001</name>
  <uuid>9b1b1e3a-1111-2222-3333-444455556666</uuid>
  <metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.0"><nova:name>vm \u00e9</nova:name></nova:instance></metadata>
  <memory>65536</memory>
  <vcpu>2</vcpu>
  <cputune>
    <shares>2048</shares>
    <vcpupin vcpu="0" cpuset="0"/>
    <vcpupin vcpu="1" cpuset="1"/>
    <emulatorpin cpuset="0-1"/>
  </cputune>
  <numatune>
    <memory mode="strict" nodeset="0"/>
    <memnode cellid="0" mode="strict" nodeset="0"/>
  </numatune>
  <cpu>
    <topology sockets="1" cores="2" threads="1"/>
    <numa><cell id="0" cpus="0-1" memory="65536"/></numa>
  </cpu>
  <devices><disk type="file" device="disk"><source file="/var/lib/nova/instances/x/disk"/></disk></devices>
</domain>"""


def test_rewrite_xml_repins_everything_nova_wrote():
    placement = [{"index": 0, "host_cell": 1, "pins": {0: 6, 1: 7}, "reserved": [], "memory": 64}]
    out = p.rewrite_xml(NOVA_XML, placement)
    vcpus, emulator, memnodes = p.read_pins(out)
    assert vcpus == {0: {6}, 1: {7}}
    assert emulator == {6, 7}
    assert memnodes == {0: {1}}
    assert 'nodeset="1"' in out.split("<memnode")[0].split("<numatune>")[1]
    # The guest cell keeps its id; everything else is untouched.
    assert '<cell id="0" cpus="0-1" memory="65536"/>' in out
    assert "<shares>2048</shares>" in out and u"vm \u00e9" in out
    assert out.replace('cpuset="6"', 'cpuset="0"').replace('cpuset="7"', 'cpuset="1"') \
        .replace('cpuset="6-7"', 'cpuset="0-1"').replace('nodeset="1"', 'nodeset="0"') == NOVA_XML


def test_rewrite_xml_emulator_on_reserved_and_missing_vcpupin_added():
    xml = NOVA_XML.replace('    <vcpupin vcpu="1" cpuset="1"/>\n', "")
    placement = [{"index": 0, "host_cell": 0, "pins": {0: 2, 1: 3}, "reserved": [4], "memory": 64}]
    vcpus, emulator, _ = p.read_pins(p.rewrite_xml(xml, placement))
    assert vcpus == {0: {2}, 1: {3}} and emulator == {4}


def test_placement_from_live_xml_and_updated_topology():
    inst = instance(guest_cell(0, [0, 1], [0, 1]))
    inst["nova_object.changes"] = ["cells"]
    live = p.rewrite_xml(NOVA_XML, [{"index": 0, "host_cell": 1, "pins": {0: 6, 1: 7},
                                     "reserved": [], "memory": 64}])
    placement = p.placement_from_xml(inst, live)
    assert placement == [{"index": 0, "host_cell": 1, "pins": {0: 6, 1: 7}, "reserved": [],
                          "memory": 64}]
    before = copy.deepcopy(inst)
    new = p.updated_topology(inst, placement)
    assert inst == before, "the input is not modified"
    cell = new["nova_object.data"]["cells"][0]
    assert cell["nova_object.version"] == "1.4" and new["nova_object.version"] == "1.3"
    assert cell["nova_object.data"]["id"] == 1
    assert cell["nova_object.data"]["cpu_pinning_raw"] == {"0": 6, "1": 7}
    assert cell["nova_object.data"]["cpu_topology"] == \
        before["nova_object.data"]["cells"][0]["nova_object.data"]["cpu_topology"]
    assert "nova_object.changes" not in new


def test_unpinned_vcpu_in_live_xml_is_an_error():
    inst = instance(guest_cell(0, [0, 1], [0, 1]))
    xml = NOVA_XML.replace('<vcpupin vcpu="1" cpuset="1"/>', '<vcpupin vcpu="1" cpuset="0-1"/>')
    with pytest.raises(p.RepinError):
        p.placement_from_xml(inst, xml)


HOSTILE = [
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
    '<domain><name>&lol2;</name></domain>',
    '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    '<domain><name>&xxe;</name></domain>',
    '<!doctype domain SYSTEM "http://example.invalid/x.dtd"><domain/>',
    '<domain><cputune><vcpupin vcpu="0" cpuset="0"/></cputune>',
    '',
    '<notadomain/>',
]


@pytest.mark.parametrize("xml", HOSTILE)
def test_hostile_or_malformed_xml_is_refused(xml):
    placement = [{"index": 0, "host_cell": 0, "pins": {0: 1}, "reserved": [], "memory": 64}]
    with pytest.raises(p.RepinError):
        p.rewrite_xml(xml, placement)
    with pytest.raises(p.RepinError):
        p.read_pins(xml)
