# -*- coding: utf-8 -*-
# numa-repin in-band patch for Nova 17 (Queens), 18 (Rocky), 19 (Stein).
#
# Installed as nova/numa_repin_patch.py in nova_conductor and nova_compute.
# Valid Python 2.7 and 3: Queens/Rocky Kolla images run 2.7.
#
# The first part (parsing, free pCPUs, cell choice, XML rewrite, topology
# update) is pure: it works on Nova's JSON primitives and the domain XML and
# imports nothing from Nova, so it is tested with plain pytest + lxml.  The
# last part ("Nova glue") is what the short hooks in conductor, compute
# manager and libvirt driver call; it imports Nova lazily.
"""Repin a CPU-pinned instance onto free pCPUs of one fitting destination
NUMA cell during live migration (pre-Train Nova copies the source pins)."""

from __future__ import absolute_import, division, print_function

import json
import logging

LOG = logging.getLogger(__name__)

MESSAGE = "No numa available with %d vcpu and %d memory"


class NoNumaAvailable(Exception):
    """No destination cell fits; str() is the operator message."""

    def __init__(self, vcpus, memory, reasons=None):
        self.vcpus = vcpus
        self.memory = memory
        self.reasons = reasons or []
        msg = MESSAGE % (vcpus, memory)
        if self.reasons:
            msg += " (" + "; ".join(self.reasons) + ")"
        super(NoNumaAvailable, self).__init__(msg)


class RepinError(ValueError):
    """Input the patch cannot act on safely (hostile or malformed XML,
    malformed topology)."""


# --------------------------------------------------------------- CPU sets

def parse_cpu_spec(spec):
    """Nova's CPU spec ('0-3,^2,8') -> set of ints."""
    include, exclude = set(), set()
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        target = include
        if part.startswith("^"):
            target, part = exclude, part[1:]
        if "-" in part:
            lo, hi = part.split("-", 1)
            lo, hi = int(lo), int(hi)
            if hi < lo:
                raise RepinError("bad CPU range %r" % part)
            target.update(range(lo, hi + 1))
        else:
            target.add(int(part))
    return include - exclude


def format_cpu_spec(cpus):
    """set of ints -> '0-3,8' (what libvirt writes)."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(_run(run))
        run = [c]
    if run:
        out.append(_run(run))
    return ",".join(out)


def _run(run):
    if len(run) == 1:
        return str(run[0])
    return "%d-%d" % (run[0], run[-1])


# ------------------------------------------------------ Nova's primitives

def _data(obj):
    """Unwrap a nova_object envelope (dict or JSON string) to its data."""
    if obj is None:
        return None
    if isinstance(obj, (bytes, bytearray)):
        obj = obj.decode("utf-8")
    if not isinstance(obj, dict):
        try:
            obj = json.loads(obj)
        except (TypeError, ValueError) as e:
            raise RepinError("not a Nova NUMA topology: %s" % e)
    if not isinstance(obj, dict):
        raise RepinError("not a Nova NUMA topology: %r" % type(obj))
    return obj.get("nova_object.data", obj)


def _primitive(topology):
    """An InstanceNUMATopology object, primitive dict or JSON -> dict."""
    if hasattr(topology, "obj_to_primitive"):
        return topology.obj_to_primitive()
    if isinstance(topology, dict):
        return topology
    return json.loads(topology)


def host_cells(compute_numa):
    """compute_nodes.numa_topology (NUMATopology 1.2, NUMACell 1.2-1.3) ->
    list of dicts: id, cpus (pinnable: Nova already limits cpuset to
    vcpu_pin_set), pinned, siblings, memory, memory_used, pages."""
    data = _data(compute_numa)
    if not data or not data.get("cells"):
        raise RepinError("the destination reports no NUMA topology")
    cells = []
    for raw in data["cells"]:
        c = _data(raw)
        cpus = set(c.get("pcpuset") or c.get("cpuset") or [])
        pages = {}
        for p in c.get("mempages") or []:
            p = _data(p)
            free = p.get("total", 0) - p.get("used", 0) - p.get("reserved", 0)
            pages[p.get("size_kb")] = free
        cells.append({
            "id": int(c["id"]),
            "cpus": cpus,
            "pinned": set(c.get("pinned_cpus") or []),
            "siblings": [set(s) for s in c.get("siblings") or []],
            "memory": int(c.get("memory") or 0),
            "memory_used": int(c.get("memory_usage") or 0),
            "pages": pages,
        })
    return cells


def instance_cells(instance_numa):
    """instance_extra.numa_topology (InstanceNUMATopology 1.3) -> list of
    dicts: index, id (host cell), vcpus, pins, memory, pagesize, reserved,
    thread_policy, policy."""
    data = _data(_primitive(instance_numa))
    if not data or not data.get("cells"):
        return []
    cells = []
    for i, raw in enumerate(data["cells"]):
        c = _data(raw)
        vcpus = sorted(set(c.get("cpuset") or []) | set(c.get("pcpuset") or []))
        pins = dict((int(k), int(v))
                    for k, v in (c.get("cpu_pinning_raw") or {}).items())
        cells.append({
            "index": i,
            "id": c.get("id"),
            "vcpus": vcpus,
            "pins": pins,
            "memory": int(c.get("memory") or 0),
            "pagesize": c.get("pagesize"),
            "reserved": sorted(c.get("cpuset_reserved") or []),
            "policy": c.get("cpu_policy"),
            "thread_policy": c.get("cpu_thread_policy"),
        })
    return cells


def is_pinned(instance_numa):
    """True when the instance has dedicated (pinned) CPUs."""
    if not instance_numa:
        return False
    for c in instance_cells(instance_numa):
        if c["pins"] or c["policy"] == "dedicated":
            return True
    return False


# ------------------------------------------------------ placement

def _cores(cell, free):
    """Free pCPUs of a cell grouped by core: (partly used cores, whole free
    cores), each a list of sorted lists."""
    seen, partial, whole = set(), [], []
    for sib in cell["siblings"] or []:
        sib = sib & cell["cpus"]
        if not sib:
            continue
        seen |= sib
        f = sorted(sib & free)
        if not f:
            continue
        (whole if len(f) == len(sib) else partial).append(f)
    for c in sorted(free - seen):     # no sibling info: one thread per core
        whole.append([c])
    return partial, whole


def _pick(cell, free, n, thread_policy):
    """n pCPUs out of `free` in `cell`, or None.  prefer (default): free
    threads of partly used cores first, so whole cores stay free for
    isolate/require guests; isolate: one thread per whole free core (its
    siblings stay unused); require: whole free cores filled thread by thread."""
    partial, whole = _cores(cell, free)
    if thread_policy == "isolate":
        if len(whole) < n:
            return None
        return [core[0] for core in whole[:n]], [c for core in whole[:n] for c in core]
    if thread_policy == "require":
        pool = [c for core in whole for c in core]
    else:
        pool = [c for core in partial for c in core] + [c for core in whole for c in core]
    if len(pool) < n:
        return None
    return pool[:n], pool[:n]


def _cell_reason(cell, free, pagesize):
    return "cell %d: %d free pCPUs, %d MiB free" % (
        cell["id"], len(free), _free_memory(cell, pagesize))


def _free_memory(cell, pagesize):
    if pagesize and pagesize in cell["pages"]:
        return cell["pages"][pagesize] * pagesize // 1024
    return cell["memory"] - cell["memory_used"]


def plan(instance_numa, compute_numa, same_host=False):
    """Choose, for every guest cell, one destination cell with enough free
    pCPUs (pinnable, not pinned by others) and free memory, and the pCPUs in
    it.  Best fit: the cell left with the fewest free pCPUs, then the lowest
    id.  Returns a list (one per guest cell) of dicts: index, host_cell,
    pins {vcpu: pcpu}, reserved [pcpu], memory.  Raises NoNumaAvailable.

    same_host: the instance's own pins are counted as free (repin in place).
    """
    guests = instance_cells(instance_numa)
    hosts = host_cells(compute_numa)
    if same_host:
        mine = set()
        for g in guests:
            mine |= set(g["pins"].values()) | set(g["reserved"])
        for h in hosts:
            h["pinned"] = h["pinned"] - mine
    used = set()
    out = []
    # Largest guest cells first: they have the fewest candidates.
    for g in sorted(guests, key=lambda g: (-len(g["vcpus"]), g["index"])):
        need = len(g["vcpus"]) + len(g["reserved"])
        best, reasons = None, []
        for h in hosts:
            if h["id"] in used:
                continue
            free = h["cpus"] - h["pinned"]
            mem_ok = _free_memory(h, g["pagesize"]) >= g["memory"]
            picked = _pick(h, free, need, g["thread_policy"]) if mem_ok else None
            if picked is None:
                reasons.append(_cell_reason(h, free, g["pagesize"]))
                continue
            key = (len(free) - len(picked[1]), h["id"])
            if best is None or key < best[0]:
                best = (key, h, picked)
        if best is None:
            raise NoNumaAvailable(need, g["memory"], reasons)
        _, h, (cpus, taken) = best
        used.add(h["id"])
        h["pinned"] = h["pinned"] | set(taken)
        vc = cpus[:len(g["vcpus"])]
        out.append({
            "index": g["index"],
            "host_cell": h["id"],
            "pins": dict(zip(g["vcpus"], vc)),
            "reserved": sorted(cpus[len(g["vcpus"]):]),
            "memory": g["memory"],
        })
    return sorted(out, key=lambda p: p["index"])


# ------------------------------------------------------ domain XML

def _parse(xml):
    """Parse domain XML with no DTD, no entities, no network: hostile input
    (DOCTYPE, entity bombs, XXE) is refused before the parser sees it."""
    from lxml import etree
    if isinstance(xml, bytes):
        text = xml.decode("utf-8", "replace")
    else:
        text = xml
    low = text.lower()
    if "<!doctype" in low or "<!entity" in low:
        raise RepinError("domain XML with a DTD or entities refused")
    parser = etree.XMLParser(resolve_entities=False, no_network=True,
                             load_dtd=False, huge_tree=False,
                             remove_blank_text=False)
    try:
        root = etree.fromstring(xml if isinstance(xml, bytes)
                                else xml.encode("utf-8"), parser)
    except etree.XMLSyntaxError as e:
        raise RepinError("malformed domain XML: %s" % e)
    if root.tag != "domain":
        raise RepinError("not a libvirt domain XML (root <%s>)" % root.tag)
    return root


def _tostring(root):
    from lxml import etree
    return etree.tostring(root, encoding="unicode")


def read_pins(xml):
    """Pins as the domain XML has them: ({vcpu: set(pcpus)}, emulator set,
    {guest cell: set(host nodes)})."""
    root = _parse(xml)
    vcpus, emulator, memnodes = {}, set(), {}
    for vp in root.findall("cputune/vcpupin"):
        vcpus[int(vp.get("vcpu"))] = parse_cpu_spec(vp.get("cpuset"))
    ep = root.find("cputune/emulatorpin")
    if ep is not None:
        emulator = parse_cpu_spec(ep.get("cpuset"))
    for mn in root.findall("numatune/memnode"):
        memnodes[int(mn.get("cellid"))] = parse_cpu_spec(mn.get("nodeset"))
    return vcpus, emulator, memnodes


def rewrite_xml(xml, placement):
    """Domain XML with the placement's pins: vcpupin, emulatorpin, numatune
    memory/memnode.  Guest NUMA cells (<cpu><numa>) name guest cells and keep
    their ids; their host mapping is memnode.  Everything else is kept."""
    from lxml import etree
    root = _parse(xml)
    pins, nodes, reserved = {}, set(), set()
    for p in placement:
        pins.update(p["pins"])
        nodes.add(p["host_cell"])
        reserved |= set(p["reserved"])
    cputune = root.find("cputune")
    if cputune is None:
        cputune = etree.SubElement(root, "cputune")
    seen = set()
    for vp in cputune.findall("vcpupin"):
        v = int(vp.get("vcpu"))
        if v in pins:
            vp.set("cpuset", str(pins[v]))
            seen.add(v)
    for v in sorted(set(pins) - seen):
        el = etree.Element("vcpupin", vcpu=str(v), cpuset=str(pins[v]))
        first_other = cputune.find("emulatorpin")
        if first_other is not None:
            first_other.addprevious(el)
        else:
            cputune.append(el)
    # Nova pins the emulator to the guest's pCPUs, or to the reserved ones
    # under emulator_threads_policy=isolate.
    emu = reserved or set(pins.values())
    ep = cputune.find("emulatorpin")
    if ep is None:
        ep = etree.SubElement(cputune, "emulatorpin")
    ep.set("cpuset", format_cpu_spec(emu))
    numatune = root.find("numatune")
    if numatune is not None:
        mem = numatune.find("memory")
        if mem is not None:
            mem.set("nodeset", format_cpu_spec(nodes))
        by_index = dict((p["index"], p["host_cell"]) for p in placement)
        for mn in numatune.findall("memnode"):
            cid = int(mn.get("cellid"))
            if cid in by_index:
                mn.set("nodeset", str(by_index[cid]))
    return _tostring(root)


def placement_from_xml(instance_numa, xml):
    """The placement a running guest has (read back from its live XML), in
    plan()'s shape: vcpupin gives the pins, memnode the host cell."""
    vcpus, emulator, memnodes = read_pins(xml)
    out = []
    for g in instance_cells(instance_numa):
        pins = {}
        for v in g["vcpus"]:
            got = vcpus.get(v)
            if not got or len(got) != 1:
                raise RepinError("vCPU %d is not pinned to one pCPU in the "
                                 "guest XML" % v)
            pins[v] = next(iter(got))
        nodes = memnodes.get(g["index"])
        if nodes and len(nodes) == 1:
            host_cell = next(iter(nodes))
        else:
            host_cell = g["id"]
        reserved = sorted(emulator) if g["reserved"] else []
        out.append({"index": g["index"], "host_cell": host_cell, "pins": pins,
                    "reserved": reserved, "memory": g["memory"]})
    return out


def updated_topology(instance_numa, placement):
    """instance_extra.numa_topology primitive with the placement applied:
    cell id (host cell), cpu_pinning_raw, cpuset_reserved.  Every other field
    and the object versions are kept."""
    prim = json.loads(json.dumps(_primitive(instance_numa)))
    data = _data(prim)
    by_index = dict((p["index"], p) for p in placement)
    for i, raw in enumerate(data.get("cells") or []):
        p = by_index.get(i)
        if p is None:
            continue
        c = _data(raw)
        c["id"] = p["host_cell"]
        c["cpu_pinning_raw"] = dict((str(v), int(pc)) for v, pc in sorted(p["pins"].items()))
        if c.get("cpuset_reserved"):
            c["cpuset_reserved"] = sorted(p["reserved"])
        for env in (raw, prim):
            if isinstance(env, dict) and "nova_object.changes" in env:
                env.pop("nova_object.changes")
    return prim


# ------------------------------------------------------------ Nova glue
# Called from the hooks.  Each states what happens on error: the conductor
# check and the source XML rewrite refuse (the guest stays where it is);
# post-migration steps log and carry on (the guest already runs on the
# destination; the resource tracker's periodic run corrects counts).

def check_destination(instance, destination_info, error_cls):
    """Conductor: refuse a destination with no fitting NUMA cell."""
    if not is_pinned(instance.numa_topology):
        return None
    try:
        return plan(instance.numa_topology, destination_info.numa_topology)
    except NoNumaAvailable as e:
        raise error_cls(reason="%s on %s" % (e, destination_info.host))
    except RepinError as e:
        raise error_cls(reason="numa-repin: cannot check %s: %s"
                        % (destination_info.host, e))


def rewrite_migration_xml(context, instance, dest_host, xml):
    """Source compute: the destination XML with new pins on free pCPUs of
    one fitting destination cell (same choice as the conductor's check)."""
    if xml is None or not is_pinned(instance.numa_topology):
        return xml
    from nova import objects
    node = objects.ComputeNode.get_first_node_by_host_for_old_compat(
        context, dest_host)
    placement = plan(instance.numa_topology, node.numa_topology)
    LOG.info("numa-repin: migrating %s to %s with pins %s", instance.uuid,
             dest_host, [(p["host_cell"], p["pins"]) for p in placement])
    return rewrite_xml(xml, placement)


def persist_live_pins(host, instance):
    """Destination compute: DEST_XML changes only the running definition;
    write the persistent one with the pins the guest runs with, so a reboot
    keeps them."""
    if not is_pinned(instance.numa_topology):
        return
    try:
        guest = host.get_guest(instance)
        placement = placement_from_xml(instance.numa_topology,
                                       guest.get_xml_desc())
        inactive = guest.get_xml_desc(dump_inactive=True, dump_sensitive=True)
        host.write_instance_config(rewrite_xml(inactive, placement))
    except Exception:
        LOG.exception("numa-repin: could not persist the new pins of %s; "
                      "a reboot may restore the old ones", instance.uuid)


def release_on_source(rt, context, instance, nodename):
    """Source compute, first of the three DB steps: free the instance's
    pinned pCPUs and memory in the source node's accounting."""
    _rt_step(rt, context, instance, nodename, True)


def update_topology_from_guest(driver, instance):
    """Destination compute, second step (the caller then saves the instance
    through the conductor): numa_topology with the pins the guest runs with
    here (pre-Train keeps the source pins, bug 1289064)."""
    if not is_pinned(instance.numa_topology):
        return
    try:
        from nova import objects
        xml = driver._host.get_guest(instance).get_xml_desc()
        placement = placement_from_xml(instance.numa_topology, xml)
        prim = updated_topology(instance.numa_topology, placement)
        instance.numa_topology = (
            objects.InstanceNUMATopology.obj_from_primitive(prim))
    except Exception:
        LOG.exception("numa-repin: could not update numa_topology of %s",
                      instance.uuid)


def account_on_destination(rt, context, instance, nodename):
    """Destination compute, third step: account the instance (with its new
    pins) on the destination node."""
    _rt_step(rt, context, instance, nodename, False)


def _rt_step(rt, context, instance, nodename, removed):
    if not is_pinned(instance.numa_topology) or not nodename:
        return
    try:
        _with_rt_lock(lambda: _rt_update(rt, context, instance, nodename,
                                         removed))
    except Exception:
        LOG.exception("numa-repin: %s %s on %s failed; the periodic resource "
                      "update will do it", "releasing" if removed
                      else "accounting", instance.uuid, nodename)


def _with_rt_lock(fn):
    from nova.compute import resource_tracker
    from nova import utils
    return utils.synchronized(resource_tracker.COMPUTE_RESOURCE_SEMAPHORE)(fn)()


def _rt_update(rt, context, instance, nodename, removed):
    if nodename not in rt.compute_nodes:
        return
    tracked = instance.uuid in rt.tracked_instances
    if removed and not tracked:
        return
    if not removed and tracked:
        return
    rt._update_usage_from_instance(context, instance, nodename,
                                   is_removed=removed)
    rt._update(context.elevated(), rt.compute_nodes[nodename])
