"""drain_host.yml on the lab: cmp1's pinned guests go to cmp2 where they fit (repinned), the
one that fits nowhere is refused with Nova's message, nothing overlaps on cmp2, a second run
changes nothing, and --check --diff changes nothing while showing the plan. The lab's standard
guests are reseeded before and after, so other tests see the lab as seeded."""
import re
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
PB = REPO / "playbooks" / "drain_host.yml"


def recap(out, host):
    m = re.search(rf"^{host}\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out, re.M)
    assert m, out[-2000:]
    return {"ok": int(m[1]), "changed": int(m[2]), "failed": int(m[4])}


def test_drain_cmp1(lab, seeded, ansible_playbook, run_module):
    before1 = lab.numa_facts("cmp1")
    assert {g["name"] for g in before1["guests"]} >= {"vm-taken", "vm-toobig"}

    # --check --diff: the plan is shown, nothing moves, nothing is written (not even an AUTO_INCREMENT step).
    fp = lab.db_fingerprint()
    p = ansible_playbook(PB, extra_vars={"target_host": "cmp1", "numa_repin_allow_leftovers": True}, check=True,
                         diff=True)
    assert p.returncode == 0, p.stdout[-4000:]
    assert lab.fingerprint_diff(fp, lab.db_fingerprint()) == {}
    assert "vm-taken -> cmp2" in p.stdout and "No numa available with 2 vcpu and 64 memory" in p.stdout
    # the diff of the guest XML: pCPU 1 (taken on cmp2) becomes 0
    assert "-    <vcpupin vcpu='0' cpuset='1'/>" in p.stdout and "+    <vcpupin vcpu='0' cpuset='0'/>" in p.stdout
    assert lab.guest_host("vm-taken") == "cmp1"  # check mode moved nothing
    assert lab.numa_facts("cmp1")["guests"] == before1["guests"]

    # The drain. vm-toobig fits nowhere: listed with its reason, accepted here.
    p = ansible_playbook(PB, extra_vars={"target_host": "cmp1", "numa_repin_allow_leftovers": True})
    assert p.returncode == 0, p.stdout[-4000:]
    assert "guest vm-toobig on cmp1: No numa available with 2 vcpu and 64 memory" in p.stdout
    assert recap(p.stdout, "localhost")["changed"] >= 1
    assert "moved ['vm-taken']; refused ['vm-toobig']" in p.stdout
    assert lab.guest_host("vm-taken") == "cmp2"
    assert lab.guest_host("vm-toobig") == "cmp1"
    after2 = lab.numa_facts("cmp2")
    assert after2["overlaps"] == []
    taken = next(g for g in after2["guests"] if g["name"] == "vm-taken")
    assert taken["vcpu_pins"] == {"0": [0]}  # repinned: pCPU 1 belongs to c2-resident
    assert lab.affinity("cmp2", "vm-taken")["vcpus"] == {0: {0}}  # the kernel agrees
    # Nova's DB follows: vm-taken on cmp2 with its new pin; the audit finds no drift
    with lab.connect_db() as conn, conn.cursor() as c:
        c.execute("SELECT i.host, e.numa_topology FROM nova.instances i JOIN nova.instance_extra e ON e.instance_uuid=i.uuid WHERE i.uuid=%s", (taken["uuid"],))
        host, numa = c.fetchone()
    assert host == "cmp2" and '"cpu_pinning_raw": {"0": 0}' in numa  # written the way Nova writes JSON
    assert "DB drift after: 0" in p.stdout
    # Nova's own resource-tracker accounting agrees with every compute node row: no overlap left, no pCPU
    # of vm-toobig released with vm-taken's.
    lab.assert_nova_accepts_nodes()

    # Again, without accepting leftovers: nothing to do, and the play fails naming what is left.
    p = ansible_playbook(PB, extra_vars={"target_host": "cmp1"})
    assert p.returncode != 0, p.stdout[-4000:]
    assert recap(p.stdout, "localhost")["changed"] == 0
    assert "refused ['vm-toobig']" in p.stdout
    assert "Drain of cmp1: 1 left unresolved: vm-toobig" in p.stdout, p.stdout[-3000:]


def test_drain_refuses_unknown_target(lab, ansible_playbook):
    p = ansible_playbook(PB, extra_vars={"target_host": "cmp9"})
    assert p.returncode != 0
    assert "give -e target_host=<one of cmp1, cmp2>" in p.stdout
