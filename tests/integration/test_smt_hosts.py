"""The moves on multi-socket SMT NUMA hosts (tests/lab/smt.sh up): smt1 (2 sockets x 2 cores x 2 threads, node 0 =
CPUs 0-3) and smt2 (1 socket x 4 cores x 2 threads, its cores dealt over the nodes: node 0 = CPUs 0-1,4-5), both
with vcpu_pin_set 2-7 and 2 MiB hugepages on node 1 only. So a pCPU id of smt1 names another core, often on
another node, on smt2: every move below is a move between two different layouts.

Each guest is defined on smt1 the way Nova 19.3.2 places it there, with Nova's rows (its InstanceNUMATopology
and flavor, Placement allocations), then drained to smt2 through playbooks/drain_host.yml over SSH. After every
move: libvirt's pins (`virsh vcpupin`, `emulatorpin`, the live `<numatune>`), the kernel's inside smt2
(/proc/<qemu>/task/*/status), the memory per host node (`numastat -p` and the bound ranges of
/proc/<qemu>/numa_maps), Nova's row (host smt2, the pins libvirt runs) and Stein's own accounting
(hardware.numa_usage_from_instances over each node's instances, in the lab's Nova venv), which must raise nothing
and agree with the node rows the fixup wrote."""
import uuid as uuidlib
from pathlib import Path

import pytest

import labdb
import smtlib
from smtlib import SmtHost

REPO = Path(__file__).resolve().parents[2]
PB = REPO / "playbooks" / "drain_host.yml"


@pytest.fixture(scope="module")
def smt(lab):
    smtlib.wait_up(lab)
    hosts = {h: SmtHost(lab, h) for h in ("smt1", "smt2")}
    for h in hosts.values():
        assert h.sh("virsh -q version", check=False), (
            "%s does not answer: start the SMT hosts with tests/lab/smt.sh up" % h.name)
    conn = lab.connect_db(autocommit=False)
    for h in hosts.values():
        rc, res = lab.run_module("numa_facts", {"uri": h.uri, "host": h.name})
        assert rc == 0, res
        smtlib.register_node(lab, conn, h, res["ansible_facts"]["numa"])
    yield hosts
    for h in hosts.values():
        smtlib.unregister_node(conn, h)
    conn.close()


@pytest.fixture
def guest(lab, smt):
    """guest(name, cells, ...) -> uuid: defined and started on smt1 and recorded in Nova's DB there; removed from
    both hosts and from the DB afterwards."""
    made = []
    conn = lab.connect_db(autocommit=False)

    def make(name, cells, host="smt1", extra_specs=None, emulator=None, emulator_threads_policy=None,
             hugepages=False, thread_policy=None, threads=1):
        uuid = str(uuidlib.uuid4())
        made.append((name, uuid))
        h = smt[host]
        h.define(name, smtlib.domain_xml(name, uuid, cells, emulator=emulator, hugepages=hugepages, threads=threads))
        vcpu, nova_cells = 0, []
        for i, c in enumerate(cells):
            pins = {vcpu + k: p for k, p in enumerate(c["pins"])}
            vcpu += len(c["pins"])
            reserved = sorted(emulator) if emulator_threads_policy == "isolate" and i == 0 else None
            nova_cells.append(labdb.instance_numa_cell(pins, c["memory_mib"], cell_id=i, cpu_thread_policy=thread_policy,
                                                       pagesize=2048 if hugepages else None, cpuset_reserved=reserved,
                                                       topology=(len(pins) // threads, 1, threads)))
        smtlib.insert_guest_rows(lab, conn, h, uuid, name, nova_cells, extra_specs=extra_specs,
                                 emulator_threads_policy=emulator_threads_policy)
        return uuid

    yield make
    for name, uuid in made:
        for h in smt.values():
            h.remove(name)
        with conn.cursor() as cur:
            labdb.delete_instance(cur, uuid)
        conn.commit()
    conn.close()


def drain(lab, smt, names):
    p = lab.ansible_playbook(PB, inventory_path=lab.data["smt"]["inventory"],
                             extra_vars={"target_host": "smt1", "numa_repin_drain_guests": names,
                                         "numa_repin_allow_leftovers": True})
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]
    return p.stdout


def check_moved(lab, smt, name, uuid):
    """On smt2 only, running; libvirt's and the kernel's pins agree; memory on the nodes the definition binds;
    Nova's row follows and Stein's accounting of both nodes raises nothing. Returns what runs."""
    src, dst = smt["smt1"], smt["smt2"]
    assert not src.has(name), "%s left on smt1" % name
    assert dst.virsh("domstate", name).strip() == "running"
    pins = dst.vcpupin(name)
    emu = dst.emulatorpin(name)
    aff = dst.affinity(name)
    assert aff["vcpus"] == pins and aff["emulator"] == emu, (aff, pins, emu)
    assert set().union(*pins.values(), emu) <= dst.pin_set, (pins, emu)
    memnodes = dst.memnodes(name)
    # The persistent definition is the running one (a restart keeps the new pins).
    assert dst.virsh("dumpxml", "--inactive", name).count("<vcpupin") == len(pins)
    # QEMU's guest RAM: every bound range is on the node its policy names.
    bound = dst.bound_ranges(name)
    assert bound, "no guest RAM bound to a host node"
    for nodes, pages in bound:
        assert set(pages) <= nodes, (nodes, pages)
    stat = dst.numastat(name)
    assert stat["Total"], stat
    row = smtlib.instance_row(lab.connect_db(), uuid)
    assert (row["host"], row["node"]) == ("smt2", "smt2"), row
    db_pins = {int(v): {p} for c in row["cells"] for v, p in c["cpu_pinning_raw"].items()}
    assert db_pins == pins, (db_pins, pins)
    lab.assert_nova_accepts_nodes(["smt1", "smt2"])
    return {"pins": pins, "emulator": emu, "memnodes": memnodes, "numastat": stat, "row": row}


def test_two_cell_guest_and_require_guest(lab, smt, guest):
    """Moved together (one drain, the tier's cases run together to keep CI short):
    - a 2-cell guest on smt1 (cell 0 on node 0, pCPUs 2-3; cell 1 on node 1, pCPUs 4-5). On smt2, pCPUs 2-3 are
      node 1's: copied verbatim, cell 0's vCPUs would run on node 1 with its memory bound to node 0. Moved, each
      guest cell runs on one host node of smt2 and its memory (memnode) is bound to that same node;
    - a `require` guest (2 vCPUs on smt1's sibling pair 6-7) lands on a sibling pair of smt2.
    smt2's six pCPUs are then all taken."""
    uuid = guest("smt-2cell", [{"pins": [2, 3], "node": 0, "memory_mib": 32},
                               {"pins": [4, 5], "node": 1, "memory_mib": 32}])
    ureq = guest("smt-require", [{"pins": [6, 7], "node": 1, "memory_mib": 32}], thread_policy="require", threads=2,
                 extra_specs={"hw:cpu_thread_policy": "require"})
    drain(lab, smt, ["smt-2cell", "smt-require"])
    got = check_moved(lab, smt, "smt-2cell", uuid)
    dst = smt["smt2"]
    cell_nodes = {}
    for cell, vcpus in ((0, (0, 1)), (1, (2, 3))):
        nodes = {dst.node_of(p) for v in vcpus for p in got["pins"][v]}
        assert len(nodes) == 1, (cell, got["pins"])
        cell_nodes[cell] = nodes.pop()
        assert got["memnodes"][cell] == {cell_nodes[cell]}, (cell, got["memnodes"], got["pins"])
    assert cell_nodes[0] != cell_nodes[1]
    # Both bound ranges (one per guest cell) are on their own node.
    assert sorted(min(n) for n, _ in dst.bound_ranges("smt-2cell")) == [0, 1]
    assert {c["id"]: c for c in got["row"]["cells"]}.keys() == {0, 1}

    got = check_moved(lab, smt, "smt-require", ureq)
    (a,), (b,) = got["pins"][0], got["pins"][1]
    assert dst.siblings(a) == {a, b}, got["pins"]


def test_isolate_guest_known_only_from_novas_db_gets_a_whole_core(lab, smt, guest):
    """An `isolate` guest (the policy only in its InstanceNUMATopology row; libvirt does not keep it) drained onto
    smt2, where a resident holds pCPU 4 and leaves its sibling 5 free on node 0. Assuming prefer, the fit takes
    that partly used core; with the policy the drain reads from Nova's DB, the guest gets a whole free core of
    node 1 and nothing runs on its sibling."""
    guest("smt-resident", [{"pins": [4], "node": 0, "memory_mib": 32}], host="smt2")
    uuid = guest("smt-isolate", [{"pins": [2], "node": 0, "memory_mib": 32}], thread_policy="isolate")
    src, dst = smt["smt1"], smt["smt2"]
    # What a plan without Nova's DB does: the free thread of the resident's core.
    rc, res = lab.run_module("pin_fit_check", {"guest": "smt-isolate", "source_uri": src.uri, "uri": dst.uri})
    assert rc == 0 and res["fits"], res
    assert res["policy_source"] == "assumed", res
    assumed = {p for c in res["placement"]["cells"] for p in c["vcpu_pins"].values()}
    assert assumed == {5}, res["placement"]
    out = drain(lab, smt, ["smt-isolate"])
    got = check_moved(lab, smt, "smt-isolate", uuid)
    (pin,) = got["pins"][0]
    assert pin != 5 and dst.node_of(pin) == 1, got["pins"]
    busy = set().union(*dst.vcpupin("smt-resident").values())
    assert not (dst.siblings(pin) & busy), "a sibling of the isolate guest's core is in use"
    assert "isolate" in out, out[-3000:]
    # Stein counts an isolate guest's whole core as pinned.
    pinned = lab.nova_accounting(["smt2"])["smt2"]["pinned"]
    assert dst.siblings(pin) <= set(pinned["1"]), pinned


def test_isolated_emulator_thread_and_hugepage_guest(lab, smt, guest):
    """Moved together (one drain):
    - hw:emulator_threads_policy=isolate: the emulator on a pCPU of its own (Nova's cpuset_reserved), kept so on
      smt2, on the vCPU's node, and recorded in Nova's row;
    - a guest backed by 2 MiB pages (16 of smt1's node 1 pool) goes to smt2's node 1, the only node with
      hugepages there: its pages come out of that pool and go back to smt1's."""
    src, dst = smt["smt1"], smt["smt2"]
    uemu = guest("smt-emu", [{"pins": [4], "node": 1, "memory_mib": 32}], emulator={5},
                 emulator_threads_policy="isolate", extra_specs={"hw:emulator_threads_policy": "isolate"})
    uhuge = guest("smt-huge", [{"pins": [6], "node": 1, "memory_mib": 32}], hugepages=True)
    assert src.free_hugepages(1) == 48 - 16
    free_before = dst.free_hugepages(1)
    drain(lab, smt, ["smt-emu", "smt-huge"])

    got = check_moved(lab, smt, "smt-emu", uemu)
    (pin,) = got["pins"][0]
    assert len(got["emulator"]) == 1 and pin not in got["emulator"], got
    (emu,) = got["emulator"]
    assert dst.node_of(emu) == dst.node_of(pin), got
    assert got["row"]["cells"][0]["cpuset_reserved"] == [emu], got["row"]

    got = check_moved(lab, smt, "smt-huge", uhuge)
    (pin,) = got["pins"][0]
    assert dst.node_of(pin) == 1 and got["memnodes"] == {0: {1}}, got
    assert dst.free_hugepages(1) == free_before - 16
    assert src.free_hugepages(1) == 48
    assert got["numastat"]["Huge"][1] == pytest.approx(32, abs=0.5) and got["numastat"]["Huge"][0] == 0, got
    assert got["row"]["cells"][0]["pagesize"] == 2048
