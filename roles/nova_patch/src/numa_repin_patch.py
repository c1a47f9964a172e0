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
# Nova's own numa_fit_instance_to_host decides (see fit() below); these turn
# its answer into the shape the XML rewrite takes, and explain a refusal.

def placement_from_topology(instance_numa):
    """A fitted InstanceNUMATopology (object, primitive or JSON) -> list (one
    per guest cell) of dicts: index, host_cell, pins {vcpu: pcpu}, reserved
    [pcpu], memory."""
    out = []
    for g in instance_cells(instance_numa):
        if len(g["pins"]) != len(g["vcpus"]):
            raise RepinError("guest cell %d is not pinned in the fitted "
                             "topology" % g["index"])
        out.append({"index": g["index"], "host_cell": int(g["id"]),
                    "pins": dict(g["pins"]), "reserved": list(g["reserved"]),
                    "memory": g["memory"]})
    return out


def refusal(instance_numa, compute_numa):
    """NoNumaAvailable for an instance no cell set of this host holds: the
    field message (the instance's vCPUs and memory in all), and per host cell
    what it has free."""
    guests = instance_cells(instance_numa)
    vcpus = sum(len(g["vcpus"]) for g in guests)
    memory = sum(g["memory"] for g in guests)
    reasons = []
    try:
        pagesize = guests[0]["pagesize"] if guests else None
        for h in host_cells(compute_numa):
            reasons.append(_cell_reason(h, h["cpus"] - h["pinned"], pagesize))
    except RepinError:
        pass
    return NoNumaAvailable(vcpus, memory, reasons)


def _cell_reason(cell, free, pagesize):
    return "cell %d: %d free pCPUs, %d MiB free" % (
        cell["id"], len(free), _free_memory(cell, pagesize))


def _free_memory(cell, pagesize):
    if pagesize and pagesize > 0 and pagesize in cell["pages"]:
        return cell["pages"][pagesize] * pagesize // 1024
    return cell["memory"] - cell["memory_used"]


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
# Called from the hooks; imports Nova lazily.  The flow is Train's (the
# release that fixed bug 1289064), built from the objects Queens already has:
#   conductor      pinned instances are no longer refused outright; a
#                  destination is refused when Nova's own fit finds no cells
#                  there (check_destination);
#   destination    check_can_live_migrate_destination claims the fitted pCPUs
#                  under the resource tracker's lock: a MigrationContext with
#                  new_numa_topology, accounted as an incoming migration, so
#                  the periodic update and the next claim both see it
#                  (claim_on_destination, is_claimed_live_migration,
#                  with_claimed_live_migrations);
#   source         the migration XML carries the claimed pins
#                  (rewrite_migration_xml); after the destination has saved
#                  the instance, the source's stale copy of numa_topology is
#                  replaced by the saved one, so no later save of the source
#                  writes the old pins back (forget_source_topology);
#   destination    post_live_migration_at_destination saves the claimed
#                  topology and drops the context (apply_claim) and persists
#                  the live pins into the persistent definition
#                  (persist_live_pins); a rollback drops the claim
#                  (drop_claim).
# What happens on error: the checks and the claim refuse (the guest stays on
# its source); the XML rewrite fails the migration (Nova rolls back, the
# guest stays on its source); post-migration steps log and carry on (the
# guest already runs on the destination).

def fit(host_topology, instance_topology, limits=None):
    """Nova's own numa_fit_instance_to_host on a copy of the instance's
    request (the fit writes its choice into the cells it is given): -> the
    fitted InstanceNUMATopology.  Raises NoNumaAvailable with the field
    message.  host_topology: NUMATopology object or its JSON (as
    compute_nodes.numa_topology holds it, usage included)."""
    from nova import objects
    from nova.virt import hardware
    host = host_topology
    if not hasattr(host, "cells"):
        if not host:
            raise RepinError("the destination reports no NUMA topology")
        host = objects.NUMATopology.obj_from_db_obj(host)
    fitted = hardware.numa_fit_instance_to_host(host, _fresh(instance_topology),
                                                limits=limits)
    if fitted is None and any(c.pagesize for c in instance_topology.cells):
        # Nova's search writes the page size it picked on one host cell into
        # the request it then tries on the next permutation, so it can miss a
        # fit.  Each ordered choice of host cells gets a fresh request here,
        # still decided by Nova's own cell fit.
        import itertools
        for cells in itertools.permutations(host.cells,
                                            len(instance_topology.cells)):
            fitted = hardware.numa_fit_instance_to_host(
                objects.NUMATopology(cells=list(cells)),
                _fresh(instance_topology), limits=limits)
            if fitted is not None:
                break
    if fitted is None:
        raise refusal(instance_topology, host.obj_to_primitive())
    if instance_topology.obj_attr_is_set("instance_uuid"):
        fitted.instance_uuid = instance_topology.instance_uuid
    return fitted


def handles(instance):
    """Conductor: the live migrations this patch takes over from Nova's
    refusal: pinned instances without PCI requests (a PCI device's NUMA
    affinity would need its own claim, which Stein has no way to move)."""
    if not is_pinned(instance.numa_topology):
        return False
    try:
        reqs = instance.pci_requests
        return not (reqs and reqs.requests)
    except Exception:
        return False


def _fresh(instance_topology):
    """A copy of the request without the pins it has on its source (they
    are not a wish; Nova's fit writes its choice into the copy)."""
    request = instance_topology.obj_clone()
    request.clear_host_pinning()
    return request


def check_destination(instance, destination_info, error_cls):
    """Conductor: refuse a destination where Nova's own fit finds no cells
    for the pinned instance, against the compute node's stored usage (which
    includes the claims in flight there).  The destination's claim repeats
    the fit under its resource tracker's lock; this only refuses early."""
    if not is_pinned(instance.numa_topology):
        return None
    try:
        return fit(destination_info.numa_topology, instance.numa_topology)
    except NoNumaAvailable as e:
        raise error_cls(reason="%s on %s" % (e, destination_info.host))
    except RepinError as e:
        raise error_cls(reason="numa-repin: cannot check %s: %s"
                        % (destination_info.host, e))


def _rt_lock(fn):
    from nova.compute import resource_tracker
    from nova import utils
    return utils.synchronized(resource_tracker.COMPUTE_RESOURCE_SEMAPHORE)(fn)


def _accepted_migration(context, instance):
    """The live migration the conductor created for this request (status
    'accepted' until the source starts it)."""
    from nova import objects
    found = [m for m in objects.MigrationList.get_by_filters(
        context, {"instance_uuid": instance.uuid, "status": "accepted"})
        if m.migration_type == "live-migration"]
    if not found:
        return None
    return max(found, key=lambda m: m.id)


_ENDED = ("completed", "error", "failed", "cancelled", "done", "confirmed",
          "reverted")


def _drop_stale_claims(rt, context, nodename):
    """Claims of live migrations that ended without a rollback on this host
    (a shared instance path has none; a conductor failure after the claim)
    are dropped before a new claim, with Nova's own drop_move_claim."""
    from nova import objects
    for uuid, mig in list(rt.tracked_migrations.items()):
        if mig.migration_type != "live-migration":
            continue
        fresh = objects.Migration.get_by_id(context, mig.id)
        if fresh.status not in _ENDED:
            continue
        inst = objects.Instance.get_by_uuid(
            context, uuid, expected_attrs=["migration_context", "flavor"])
        LOG.info("numa-repin: dropping the claim of %s on %s (migration %s "
                 "is %s)", uuid, nodename, fresh.id, fresh.status)
        rt.drop_move_claim(context, inst, nodename)


def tracker(manager):
    """The compute manager's resource tracker: an attribute from Stein
    (19.x), a getter before, so one hook text serves every release."""
    rt = getattr(manager, "rt", None)
    if rt is not None:
        return rt
    return manager._get_resource_tracker()


def claim_on_destination(rt, context, instance, dst_compute_info, error_cls):
    """Destination compute, at the end of check_can_live_migrate_destination:
    fit the pinned instance with Nova's own numa_fit_instance_to_host against
    this node's live accounting (claims in flight included) and hold the
    chosen pCPUs: a MigrationContext (new_numa_topology) on the instance and
    the migration accounted as incoming, as Train's live-migration claim
    does.  Raises error_cls (MigrationPreCheckError) with the field message:
    the conductor then tries the scheduler's next host, or fails a forced
    one, and the guest stays where it is."""
    if not is_pinned(instance.numa_topology):
        return
    from nova import objects
    nodename = _data(dst_compute_info).get("hypervisor_hostname")
    migration = _accepted_migration(context, instance)
    if migration is None:
        raise error_cls(reason="numa-repin: no accepted live migration of %s "
                        "to claim pCPUs for" % instance.uuid)
    _drop_stale_claims(rt, context, nodename)

    @_rt_lock
    def claim():
        cn = rt.compute_nodes.get(nodename)
        if cn is None:
            raise error_cls(reason="numa-repin: node %s is not tracked on %s"
                            % (nodename, rt.host))
        try:
            fitted = fit(cn.numa_topology, instance.numa_topology)
        except NoNumaAvailable as e:
            raise error_cls(reason="%s on %s" % (e, rt.host))
        except RepinError as e:
            raise error_cls(reason="numa-repin: cannot claim on %s: %s"
                            % (rt.host, e))
        migration.dest_compute = rt.host
        migration.dest_node = nodename
        migration.save()
        instance.migration_context = objects.MigrationContext(
            context=context, instance_uuid=instance.uuid,
            migration_id=migration.id,
            old_numa_topology=instance.numa_topology,
            new_numa_topology=fitted,
            old_pci_devices=None, new_pci_devices=None,
            old_pci_requests=None, new_pci_requests=None)
        instance.save()
        rt._update_usage_from_migration(context, instance, migration, nodename)
        rt._update(context.elevated(), cn)
        LOG.info("numa-repin: claimed %s on %s for %s (migration %s)",
                 [(p["host_cell"], p["pins"]) for p in
                  placement_from_topology(fitted)], nodename, instance.uuid,
                 migration.id)
    claim()


def is_claimed_live_migration(instance, migration):
    """Resource tracker: a live migration of a pinned instance with our
    claim (its MigrationContext) counts like a resize on the destination, as
    in Train; every other live migration is still ignored."""
    try:
        if migration.migration_type != "live-migration":
            return False
        if instance.task_state != "migrating":
            return False
        mc = instance.migration_context
        return (mc is not None and mc.migration_id == migration.id
                and is_pinned(mc.new_numa_topology))
    except Exception:
        return False


def with_claimed_live_migrations(context, migrations, host, nodename):
    """Resource tracker periodic: Nova lists 'accepted' migrations as not in
    progress, but a claim is taken while its migration is still 'accepted';
    add those to the list so the periodic keeps holding the pCPUs."""
    try:
        from nova import objects
        seen = set(m.id for m in migrations)
        extra = [m for m in objects.MigrationList.get_by_filters(
            context, {"host": host, "status": "accepted"})
            if m.migration_type == "live-migration" and m.id not in seen
            and m.dest_compute == host and m.dest_node == nodename]
    except Exception:
        LOG.exception("numa-repin: could not list accepted live migrations")
        return migrations
    if not extra:
        return migrations
    return list(migrations) + extra


def _claimed_topology(context, instance, migration_id=None):
    from nova import objects
    mc = objects.MigrationContext.get_by_instance_uuid(context, instance.uuid)
    if mc is None or mc.new_numa_topology is None:
        return None
    if migration_id is not None and mc.migration_id != migration_id:
        return None
    return mc.new_numa_topology


def rewrite_migration_xml(context, instance, migrate_data, xml):
    """Source compute: the migration XML with the pins the destination
    claimed.  With no claim for this migration the migration fails (Nova
    rolls back; the guest stays on its source)."""
    if xml is None or not is_pinned(instance.numa_topology):
        return xml
    migration_id = None
    if migrate_data is not None and migrate_data.obj_attr_is_set("migration"):
        migration_id = migrate_data.migration.id
    claimed = _claimed_topology(context, instance, migration_id)
    if claimed is None:
        raise RepinError("numa-repin: the destination holds no claim for "
                         "migration %s of %s" % (migration_id, instance.uuid))
    placement = placement_from_topology(claimed)
    LOG.info("numa-repin: migrating %s with pins %s", instance.uuid,
             [(p["host_cell"], p["pins"]) for p in placement])
    return rewrite_xml(xml, placement)


def persist_live_pins(host, instance):
    """Destination compute: write the persistent definition with the pins
    the guest runs with, so a libvirt-level restart keeps them."""
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


def apply_claim(context, driver, instance):
    """Destination compute, before post_live_migration_at_destination saves
    the instance (host, node): numa_topology becomes the one it runs with
    here (the claim, checked against the live XML; the live XML wins if they
    differ) and the migration context is dropped."""
    if not is_pinned(instance.numa_topology):
        return
    try:
        xml = driver._host.get_guest(instance).get_xml_desc()
        live = placement_from_xml(instance.numa_topology, xml)
        claimed = _claimed_topology(context, instance)
        new = claimed
        if claimed is None or _pins(placement_from_topology(claimed)) != _pins(live):
            LOG.warning("numa-repin: %s runs with pins %s, not the claimed %s; "
                        "recording what runs", instance.uuid, _pins(live),
                        claimed and _pins(placement_from_topology(claimed)))
            from nova import objects
            new = objects.InstanceNUMATopology.obj_from_primitive(
                updated_topology(instance.numa_topology, live))
        new.instance_uuid = instance.uuid
        instance.numa_topology = new
        instance.migration_context = None
    except Exception:
        LOG.exception("numa-repin: could not record the new pins of %s",
                      instance.uuid)


def _pins(placement):
    return sorted((p["index"], p["host_cell"], sorted(p["pins"].items()),
                   sorted(p["reserved"])) for p in placement)


def forget_source_topology(context, instance):
    """Source compute, right after post_live_migration_at_destination: the
    destination has saved the new pins; replace this process's stale copy
    (whose stored form carries nova_object.changes, so any later
    instance.save(), e.g. in the driver's cleanup, would write the source
    pins back) by what is saved now, with no pending changes."""
    if not is_pinned(instance.numa_topology):
        return
    try:
        from nova import objects
        fresh = objects.InstanceNUMATopology.get_by_instance_uuid(
            context, instance.uuid)
        instance.numa_topology = fresh
        if fresh is not None:
            fresh.obj_reset_changes(recursive=True)
        instance.obj_reset_changes(["numa_topology"])
    except Exception:
        LOG.exception("numa-repin: could not reload numa_topology of %s",
                      instance.uuid)


def drop_claim(rt, context, instance, nodename=None):
    """Destination compute, on rollback: give the claimed pCPUs back now
    (Nova's own drop_move_claim) and drop the migration context."""
    if not is_pinned(instance.numa_topology):
        return
    try:
        from nova import objects
        if nodename is None:
            nodename = next(iter(rt.compute_nodes), None)
        # The instance as saved, with its migration context: the copy that
        # came over RPC may carry none.
        saved = objects.Instance.get_by_uuid(
            context, instance.uuid,
            expected_attrs=["migration_context", "flavor", "numa_topology"])
        if instance.uuid in rt.tracked_migrations and nodename:
            rt.drop_move_claim(context, saved, nodename)
        if saved.migration_context is not None:
            saved.migration_context = None
            saved.save()
    except Exception:
        LOG.exception("numa-repin: could not drop the claim of %s; the "
                      "periodic resource update will", instance.uuid)
