#!/usr/bin/env python3
"""Render a lab guest's libvirt domain XML from tests/lab/guests/*.xml.in (stdlib only, Python 2.7/3.x).

    render_guest.py --standard vm-taken [--disk-path /var/lib/libvirt/images/vm-taken.qcow2]
    render_guest.py --name g1 --uuid <uuid> --vcpus 2 --pins 0,1 --memory-mib 64 [--disk-path P]
    render_guest.py --standard vm-taken --neutron $LAB_DIR/neutron.json   # with its Neutron port's <interface>
    render_guest.py --list          # tab-separated: name host uuid vcpus pins memory_mib disk_mib numa_format

`pins` is one pCPU set per vCPU (an int, or a string like "0-1"); the emulator is pinned to their union.
Disk paths are as seen by libvirtd inside the host's mount namespace: /var/lib/libvirt/images is per host.
"""
from __future__ import print_function

import argparse
import json
import os
import string
import sys
import uuid as uuidlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import labspec  # noqa: E402

GUESTS = os.path.join(HERE, "guests")
IMAGES = labspec.IMAGES_DIR_IN_HOST  # per-host bind mount inside each lab host's namespace


def standard():
    with open(os.path.join(GUESTS, "standard.json")) as f:
        return json.load(f)


def standard_guest(name):
    for g in standard()["guests"]:
        if g["name"] == name:
            return g
    raise KeyError("no standard guest %r (see %s)" % (name, os.path.join(GUESTS, "standard.json")))


def _expand(cpuset):
    out = set()
    for part in str(cpuset).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            out.update(range(int(a), int(b) + 1))
        else:
            out.add(int(part))
    return out


def _fmt(cpus):
    return ",".join(str(c) for c in sorted(cpus))


def disk_path(name):
    return "%s/%s.qcow2" % (IMAGES, name)


INTERFACE = """    <interface type='bridge'>
      <mac address='%(mac_address)s'/>
      <source bridge='%(bridge)s'/>
      <target dev='%(tap)s'/>
      <model type='virtio'/>
    </interface>
"""


def render(name, uuid=None, vcpus=1, pins=None, memory_mib=64, disk_path=None, nodeset="0",
           emulator_pins=None, flavor=None, disk_gb=0, ports=()):
    """Return the domain XML (str). pins: list, one pCPU set per vCPU (default: vCPU i -> pCPU i).
    ports: dicts {mac_address, bridge, tap}, one <interface> each, as Nova writes a Linux bridge port."""
    if pins is None:
        pins = list(range(vcpus))
    if len(pins) != vcpus:
        raise ValueError("pins must have one entry per vCPU (%d), got %r" % (vcpus, pins))
    union = set()
    lines = []
    for i, p in enumerate(pins):
        cpus = _expand(p)
        union |= cpus
        lines.append("    <vcpupin vcpu='%d' cpuset='%s'/>\n" % (i, _fmt(cpus)))
    emu = _fmt(_expand(emulator_pins)) if emulator_pins is not None else _fmt(union)
    disks = ""
    if disk_path:
        with open(os.path.join(GUESTS, "disk.xml.in")) as f:
            disks = string.Template(f.read()).substitute(path=disk_path)
    std = standard()
    with open(os.path.join(GUESTS, "domain.xml.in")) as f:
        tmpl = string.Template(f.read())
    return tmpl.substitute(
        name=name,
        uuid=uuid or str(uuidlib.uuid4()),
        flavor=flavor or "pinned.%dc%dm" % (vcpus, memory_mib),
        memory_mib=memory_mib,
        memory_kib=memory_mib * 1024,
        disk_gb=disk_gb,
        vcpus=vcpus,
        vcpupins="".join(lines),
        emulator_cpuset=emu,
        nodeset=nodeset,
        guest_cpus="0-%d" % (vcpus - 1) if vcpus > 1 else "0",
        disks=disks,
        interfaces="".join(INTERFACE % p for p in ports),
        user_id=std["user_id"],
        project_id=std["project_id"],
    )


def neutron_ports(neutron_file, instance_uuid):
    """The guest's ports from the lab's neutron.json (tests/lab/neutron_lab.py), with their bridge."""
    if not neutron_file:
        return []
    with open(neutron_file) as f:
        n = json.load(f)
    p = n["ports"].get(instance_uuid)
    return [dict(p, bridge=n["bridge"])] if p else []


def render_standard(name, disk_path_override=None, neutron_file=None):
    g = standard_guest(name)
    dp = None
    if g.get("disk_mib"):
        dp = disk_path_override or disk_path(name)
    return render(g["name"], g["uuid"], g["vcpus"], g["pins"], g["memory_mib"], dp,
                  ports=neutron_ports(neutron_file, g["uuid"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--standard")
    ap.add_argument("--name")
    ap.add_argument("--uuid")
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--pins", help="comma list, one pCPU per vCPU; use ':' between per-vCPU sets, e.g. 0-1:0-1")
    ap.add_argument("--memory-mib", type=int, default=64)
    ap.add_argument("--disk-path")
    ap.add_argument("--nodeset", default="0")
    ap.add_argument("--neutron", help="the lab's neutron.json: give a standard guest its port's <interface>")
    a = ap.parse_args(argv)
    if a.list:
        for g in standard()["guests"]:
            print("\t".join(str(x) for x in (g["name"], g["host"], g["uuid"], g["vcpus"],
                                             ",".join(str(p) for p in g["pins"]), g["memory_mib"],
                                             g.get("disk_mib", 0), g.get("numa_format", "stein"))))
        return 0
    if a.standard:
        sys.stdout.write(render_standard(a.standard, a.disk_path, a.neutron))
        return 0
    if not a.name:
        ap.error("--name (or --standard/--list) is required")
    pins = None
    if a.pins:
        pins = a.pins.split(":") if ":" in a.pins else [int(p) for p in a.pins.split(",")]
    sys.stdout.write(render(a.name, a.uuid, a.vcpus, pins, a.memory_mib, a.disk_path, a.nodeset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
