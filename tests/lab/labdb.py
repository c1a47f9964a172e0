"""Rows of the lab's Nova, Placement and Neutron databases: Nova's JSON formats and idempotent insert/delete helpers.

Pure Python (3.7+, PyMySQL cursors), shared by tests/lab/seed_db.py (run in the Nova 19.3.2 venv, which checks the
JSON below against Nova's own objects) and tests/integration/lablib.py (Python 3.11 fixtures).

Formats (docs/design.md §5, Nova's stored formats): `instance_extra.numa_topology` is InstanceNUMATopology 1.3 with InstanceNUMACell 1.4
("stein": pinned vCPUs in `cpuset`) or 1.5 ("victoria": pinned vCPUs in `pcpuset`, `cpuset` empty);
`compute_nodes.numa_topology` is NUMATopology 1.2 / NUMACell 1.3 (Rocky/Stein). Like a Nova object freshly built and
saved, every object carries `nova_object.changes` (all its set fields; Nova's order is arbitrary, ours sorted).
"""
import json
import uuid as uuidlib

# Placement's standard resource class ids (list positions in os-resource-classes).
VCPU, MEMORY_MB, DISK_GB, PCPU = 0, 1, 2, 14
NETWORK_ID = "6c1a9e10-0000-4000-8000-0000000000ee"
CELL1 = "cell1"


def _obj(name, version, data, changes=True):
    o = {"nova_object.name": name, "nova_object.namespace": "nova", "nova_object.version": version,
         "nova_object.data": data}
    if changes:
        o["nova_object.changes"] = sorted(data)
    return o


def instance_numa_cell(pins, memory_mb, cell_id=0, fmt="stein", cpu_policy="dedicated", cpu_thread_policy=None,
                       pagesize=None, cpuset_reserved=None, topology=None):
    """InstanceNUMACell primitive. pins: {vcpu: pcpu} (ints); topology: (sockets, cores, threads),
    default (1, nvcpus, 1)."""
    vcpus = sorted(int(v) for v in pins)
    sockets, cores, threads = topology or (1, len(vcpus), 1)
    data = {"id": cell_id, "cpuset": vcpus, "memory": memory_mb, "pagesize": pagesize,
            "cpu_topology": _obj("VirtCPUTopology", "1.0", {"sockets": sockets, "cores": cores, "threads": threads}),
            "cpu_pinning_raw": {str(int(v)): int(p) for v, p in sorted(pins.items(), key=lambda kv: int(kv[0]))},
            "cpu_policy": cpu_policy, "cpu_thread_policy": cpu_thread_policy,
            "cpuset_reserved": sorted(cpuset_reserved) if cpuset_reserved is not None else None}
    version = "1.4"
    if fmt == "victoria":
        data["pcpuset"] = vcpus
        data["cpuset"] = []
        version = "1.5"
    elif fmt != "stein":
        raise ValueError("fmt must be 'stein' or 'victoria', not %r" % fmt)
    return _obj("InstanceNUMACell", version, data)


def instance_numa_topology(cells, emulator_threads_policy=None):
    """InstanceNUMATopology primitive of InstanceNUMACell primitives (instance_numa_cell)."""
    return _obj("InstanceNUMATopology", "1.3", {"cells": cells, "emulator_threads_policy": emulator_threads_policy})


def instance_numa_primitive(pins, memory_mb, cell_id=0, fmt="stein", cpu_policy="dedicated",
                            cpu_thread_policy=None, pagesize=None, cpuset_reserved=None,
                            emulator_threads_policy=None, topology=None):
    """InstanceNUMATopology primitive of a guest with one NUMA cell (see instance_numa_cell)."""
    cell = instance_numa_cell(pins, memory_mb, cell_id, fmt, cpu_policy, cpu_thread_policy, pagesize,
                              cpuset_reserved, topology)
    return instance_numa_topology([cell], emulator_threads_policy)


def instance_numa_json(*a, **kw):
    return json.dumps(instance_numa_primitive(*a, **kw))


def compute_numa_primitive(cells):
    """NUMATopology 1.2 primitive. cells: [{id, cpuset, memory (MiB), cpu_usage, memory_usage, pinned_cpus,
    siblings [[..]], mempages [(size_kb, total, used, reserved)]}]."""
    out = []
    for c in cells:
        pages = [_obj("NUMAPagesTopology", "1.1", {"size_kb": s, "total": t, "used": u, "reserved": r})
                 for s, t, u, r in c["mempages"]]
        data = {"id": c["id"], "cpuset": sorted(c["cpuset"]), "memory": c["memory"], "cpu_usage": c["cpu_usage"],
                "memory_usage": c["memory_usage"], "pinned_cpus": sorted(c["pinned_cpus"]),
                "siblings": [sorted(s) for s in c["siblings"]], "mempages": pages,
                "network_metadata": _obj("NetworkMetadata", "1.0", {"physnets": [], "tunneled": False})}
        out.append(_obj("NUMACell", "1.3", data))
    return _obj("NUMATopology", "1.2", {"cells": out})


def flavor_primitive(name, vcpus, memory_mb, root_gb=0, flavorid=None, extra_specs=None):
    """instance_extra.flavor: {"cur": Flavor 1.2, "old": null, "new": null}."""
    specs = {"hw:cpu_policy": "dedicated"}
    specs.update(extra_specs or {})
    data = {"id": 1, "name": name, "memory_mb": memory_mb, "vcpus": vcpus, "root_gb": root_gb, "ephemeral_gb": 0,
            "flavorid": flavorid or name, "swap": 0, "rxtx_factor": 1.0, "vcpu_weight": 0, "disabled": False,
            "is_public": True, "extra_specs": specs, "description": None}
    return {"cur": _obj("Flavor", "1.2", data), "old": None, "new": None}


def same_primitive(a, b):
    """Compare two Nova primitives, `nova_object.changes` as sets (Nova's order is arbitrary)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return False
        for k in a:
            if k == "nova_object.changes":
                if set(a[k]) != set(b[k]):
                    return False
            elif not same_primitive(a[k], b[k]):
                return False
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_primitive(x, y) for x, y in zip(a, b))
    return a == b


# ------------------------------------------------------------------------------------------------ nova
def _one(cur, q, args=()):
    cur.execute(q, args)
    r = cur.fetchone()
    return r[0] if r else None


def instance_exists(cur, uuid):
    return bool(_one(cur, "SELECT COUNT(*) FROM nova.instances WHERE uuid=%s AND deleted=0", (uuid,)))


def insert_instance(cur, uuid, name, host, pins, vcpus=None, memory_mb=64, fmt="stein", node=None,
                    project_id="6c1a9e10-0000-4000-8000-0000000000aa", user_id="6c1a9e10-0000-4000-8000-0000000000bb",
                    numa_json=None, flavor_json=None, vm_state="active", root_gb=0):
    """Insert an active instance: nova.instances + instance_extra (numa_topology, flavor) + instance_info_caches
    + nova_api.instance_mappings (cell1). pins: {vcpu: pcpu}. Returns the instance id."""
    vcpus = vcpus or len(pins)
    node = node or host
    if numa_json is None:
        numa_json = instance_numa_json(pins, memory_mb, fmt=fmt)
    if flavor_json is None:
        flavor_json = json.dumps(flavor_primitive("pinned.%dc%dm" % (vcpus, memory_mb), vcpus, memory_mb, root_gb))
    cur.execute(
        "INSERT INTO nova.instances (created_at, launched_at, uuid, display_name, hostname, host, node, launched_on,"
        " vm_state, power_state, task_state, vcpus, memory_mb, root_gb, ephemeral_gb, instance_type_id, project_id,"
        " user_id, availability_zone, image_ref, deleted, cleaned, locked, disable_terminate, ephemeral_key_uuid,"
        " config_drive, root_device_name)"
        " VALUES (NOW(), NOW(), %s, %s, %s, %s, %s, %s, %s, 1, NULL, %s, %s, %s, 0, 1, %s, %s, 'nova', '', 0, 0, 0, 0,"
        " NULL, '', '/dev/vda')",
        (uuid, name, name, host, node, host, vm_state, vcpus, memory_mb, root_gb, project_id, user_id))
    iid = cur.lastrowid
    cur.execute("INSERT INTO nova.instance_extra (created_at, deleted, instance_uuid, numa_topology, flavor,"
                " pci_requests, vcpu_model, migration_context, keypairs, device_metadata, trusted_certs)"
                " VALUES (NOW(), 0, %s, %s, %s, '[]', NULL, NULL, NULL, NULL, NULL)", (uuid, numa_json, flavor_json))
    cur.execute("INSERT INTO nova.instance_info_caches (created_at, deleted, instance_uuid, network_info)"
                " VALUES (NOW(), 0, %s, '[]')", (uuid,))
    cell = _one(cur, "SELECT id FROM nova_api.cell_mappings WHERE name=%s", (CELL1,))
    cur.execute("DELETE FROM nova_api.instance_mappings WHERE instance_uuid=%s", (uuid,))
    cur.execute("INSERT INTO nova_api.instance_mappings (created_at, instance_uuid, cell_id, project_id, user_id,"
                " queued_for_delete) VALUES (NOW(), %s, %s, %s, %s, 0)", (uuid, cell, project_id, user_id))
    return iid


def delete_instance(cur, uuid, ports=True):
    """Remove every row about the instance: all nova tables with an instance_uuid column, instances,
    nova_api.instance_mappings/request_specs, placement allocations/consumer, neutron ports (ports=False: keep
    them, the standard guests' ports are neutron-server's, made through its API)."""
    cur.execute("SELECT table_name FROM information_schema.columns WHERE table_schema='nova'"
                " AND column_name='instance_uuid' AND table_name NOT LIKE 'shadow_%%'")
    tables = [r[0] for r in cur.fetchall()]
    if "instance_actions" in tables:
        cur.execute("DELETE FROM nova.instance_actions_events WHERE action_id IN"
                    " (SELECT id FROM nova.instance_actions WHERE instance_uuid=%s)", (uuid,))
    # Children first (instance_actions after its events; instance_extra & co reference instances.uuid).
    for t in sorted(tables, key=lambda t: t == "instances"):
        cur.execute("DELETE FROM nova.`%s` WHERE instance_uuid=%%s" % t, (uuid,))
    cur.execute("DELETE FROM nova.instances WHERE uuid=%s", (uuid,))
    cur.execute("DELETE FROM nova_api.instance_mappings WHERE instance_uuid=%s", (uuid,))
    cur.execute("DELETE FROM nova_api.request_specs WHERE instance_uuid=%s", (uuid,))
    delete_allocations(cur, uuid)
    if ports:
        delete_ports(cur, uuid)


def upsert_service(cur, host, binary="nova-compute", topic="compute", version=40):
    sid = _one(cur, "SELECT id FROM nova.services WHERE host=%s AND `binary`=%s AND deleted=0", (host, binary))
    if sid is None:
        cur.execute("INSERT INTO nova.services (created_at, updated_at, host, `binary`, topic, report_count, disabled,"
                    " deleted, forced_down, version, uuid, last_seen_up) VALUES (NOW(), NOW(), %s, %s, %s, 0, 0, 0, 0,"
                    " %s, %s, NOW())", (host, binary, topic, version, str(uuidlib.uuid4())))
        sid = cur.lastrowid
    return sid


def upsert_compute_node(cur, host, uuid, address, vcpus, memory_mb, numa_json, vcpus_used, memory_mb_used,
                        running_vms, local_gb=50, cpu_info=None, service_id=None):
    cpu_info = cpu_info or json.dumps({"arch": "x86_64", "model": "qemu64", "vendor": "AMD",
                                       "topology": {"cells": 1, "sockets": 1, "cores": vcpus, "threads": 1},
                                       "features": []})
    vals = dict(service_id=service_id, vcpus=vcpus, memory_mb=memory_mb, local_gb=local_gb, vcpus_used=vcpus_used,
                memory_mb_used=memory_mb_used, local_gb_used=0, hypervisor_type="QEMU", hypervisor_version=7002000,
                cpu_info=cpu_info, disk_available_least=local_gb, free_ram_mb=memory_mb - memory_mb_used,
                free_disk_gb=local_gb, current_workload=0, running_vms=running_vms, hypervisor_hostname=host,
                deleted=0, host_ip=address, supported_instances=json.dumps([["x86_64", "qemu", "hvm"]]),
                pci_stats=json.dumps({"nova_object.name": "PciDevicePoolList", "nova_object.namespace": "nova",
                                      "nova_object.version": "1.1", "nova_object.data": {"objects": []},
                                      "nova_object.changes": ["objects"]}),
                metrics="[]", extra_resources=None, stats="{}", numa_topology=numa_json, host=host,
                ram_allocation_ratio=1.5, cpu_allocation_ratio=16.0, disk_allocation_ratio=1.0, mapped=1)
    cid = _one(cur, "SELECT id FROM nova.compute_nodes WHERE uuid=%s", (uuid,))
    if cid is None:
        cols = ["uuid", "created_at", "updated_at"] + list(vals)
        cur.execute("INSERT INTO nova.compute_nodes (%s) VALUES (%%s, NOW(), NOW(), %s)"
                    % (", ".join("`%s`" % c for c in cols), ", ".join(["%s"] * len(vals))), [uuid] + list(vals.values()))
        cid = cur.lastrowid
    else:
        cur.execute("UPDATE nova.compute_nodes SET updated_at=NOW(), %s WHERE id=%%s"
                    % ", ".join("`%s`=%%s" % c for c in vals), list(vals.values()) + [cid])
    cell = _one(cur, "SELECT id FROM nova_api.cell_mappings WHERE name=%s", (CELL1,))
    if not _one(cur, "SELECT COUNT(*) FROM nova_api.host_mappings WHERE host=%s", (host,)):
        cur.execute("INSERT INTO nova_api.host_mappings (created_at, cell_id, host) VALUES (NOW(), %s, %s)",
                    (cell, host))
    return cid


# ------------------------------------------------------------------------------------------------ placement
def upsert_provider(cur, uuid, name, inventories):
    """inventories: {class_id: (total, reserved, max_unit, allocation_ratio)}. Returns the provider id."""
    rp = _one(cur, "SELECT id FROM placement.resource_providers WHERE uuid=%s", (uuid,))
    if rp is None:
        cur.execute("INSERT INTO placement.resource_providers (created_at, uuid, name, generation) VALUES"
                    " (NOW(), %s, %s, 1)", (uuid, name))
        rp = cur.lastrowid
        cur.execute("UPDATE placement.resource_providers SET root_provider_id=%s WHERE id=%s", (rp, rp))
    cur.execute("DELETE FROM placement.inventories WHERE resource_provider_id=%s", (rp,))
    for rc, (total, reserved, max_unit, ratio) in sorted(inventories.items()):
        cur.execute("INSERT INTO placement.inventories (created_at, resource_provider_id, resource_class_id, total,"
                    " reserved, min_unit, max_unit, step_size, allocation_ratio) VALUES (NOW(), %s, %s, %s, %s, 1, %s,"
                    " 1, %s)", (rp, rc, total, reserved, max_unit, ratio))
    return rp


def _ext_id(cur, table, external_id):
    i = _one(cur, "SELECT id FROM placement.`%s` WHERE external_id=%%s" % table, (external_id,))
    if i is None:
        cur.execute("INSERT INTO placement.`%s` (created_at, external_id) VALUES (NOW(), %%s)" % table, (external_id,))
        i = cur.lastrowid
    return i


def set_allocations(cur, consumer, provider_uuid, used, project_id="6c1a9e10-0000-4000-8000-0000000000aa",
                    user_id="6c1a9e10-0000-4000-8000-0000000000bb"):
    """Replace the consumer's allocations with {class_id: used} against one provider."""
    rp = _one(cur, "SELECT id FROM placement.resource_providers WHERE uuid=%s", (provider_uuid,))
    if rp is None:
        raise LookupError("no resource provider %s" % provider_uuid)
    cur.execute("DELETE FROM placement.allocations WHERE consumer_id=%s", (consumer,))
    if not _one(cur, "SELECT COUNT(*) FROM placement.consumers WHERE uuid=%s", (consumer,)):
        cur.execute("INSERT INTO placement.consumers (created_at, uuid, project_id, user_id, generation) VALUES"
                    " (NOW(), %s, %s, %s, 1)", (consumer, _ext_id(cur, "projects", project_id),
                                                _ext_id(cur, "users", user_id)))
    for rc, n in sorted(used.items()):
        cur.execute("INSERT INTO placement.allocations (created_at, resource_provider_id, consumer_id,"
                    " resource_class_id, used) VALUES (NOW(), %s, %s, %s, %s)", (rp, consumer, rc, n))


def delete_allocations(cur, consumer):
    cur.execute("DELETE FROM placement.allocations WHERE consumer_id=%s", (consumer,))
    cur.execute("DELETE FROM placement.consumers WHERE uuid=%s", (consumer,))


# ------------------------------------------------------------------------------------------------ neutron
def _std_attr(cur, resource_type):
    cur.execute("INSERT INTO neutron.standardattributes (resource_type, created_at, updated_at, description,"
                " revision_number) VALUES (%s, NOW(), NOW(), '', 1)", (resource_type,))
    return cur.lastrowid


def ensure_network(cur, project_id="6c1a9e10-0000-4000-8000-0000000000aa"):
    if not _one(cur, "SELECT COUNT(*) FROM neutron.networks WHERE id=%s", (NETWORK_ID,)):
        sa = _std_attr(cur, "networks")
        cur.execute("INSERT INTO neutron.networks (project_id, id, name, status, admin_state_up, vlan_transparent,"
                    " standard_attr_id, availability_zone_hints, mtu) VALUES (%s, %s, 'lab-db-net', 'ACTIVE', 1, 0, %s,"
                    " '[]', 1450)", (project_id, NETWORK_ID, sa))
    return NETWORK_ID


def port_id_for(instance_uuid):
    """The lab's port of an instance: a fixed function of the instance uuid."""
    return str(uuidlib.uuid5(uuidlib.UUID(instance_uuid), "port-0"))


def insert_port(cur, instance_uuid, host, project_id="6c1a9e10-0000-4000-8000-0000000000aa"):
    """One ACTIVE compute port of the instance bound (ml2_port_bindings) to host. Returns the port id."""
    ensure_network(cur, project_id)
    pid = port_id_for(instance_uuid)
    delete_ports(cur, instance_uuid)
    mac = "fa:16:3e:%s:%s:%s" % (pid[0:2], pid[2:4], pid[4:6])
    sa = _std_attr(cur, "ports")
    cur.execute("INSERT INTO neutron.ports (project_id, id, name, network_id, mac_address, admin_state_up, status,"
                " device_id, device_owner, standard_attr_id, ip_allocation) VALUES (%s, %s, '', %s, %s, 1, 'ACTIVE',"
                " %s, 'compute:nova', %s, 'immediate')", (project_id, pid, NETWORK_ID, mac, instance_uuid, sa))
    cur.execute("INSERT INTO neutron.ml2_port_bindings (port_id, host, vif_type, vnic_type, profile, vif_details,"
                " status) VALUES (%s, %s, 'ovs', 'normal', '{}', %s, 'ACTIVE')",
                (pid, host, json.dumps({"port_filter": True, "ovs_hybrid_plug": False})))
    return pid


def delete_ports(cur, instance_uuid):
    cur.execute("SELECT id, standard_attr_id FROM neutron.ports WHERE device_id=%s", (instance_uuid,))
    for pid, sa in cur.fetchall():
        cur.execute("DELETE FROM neutron.ml2_port_bindings WHERE port_id=%s", (pid,))
        cur.execute("DELETE FROM neutron.ports WHERE id=%s", (pid,))
        cur.execute("DELETE FROM neutron.standardattributes WHERE id=%s", (sa,))
