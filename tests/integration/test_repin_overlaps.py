"""repin_overlaps.yml on the lab: a guest sharing cmp2's pCPU 1 with c2-resident is repinned
live onto pCPU 0 (no reboot: same QEMU process), Nova's DB follows, a rerun changes nothing."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PB = REPO / "playbooks" / "repin_overlaps.yml"


def test_overlap_on_cmp2_is_repinned_live(lab, fresh_guest, fresh_instance_rows, run_module, ansible_playbook, db):
    assert lab.lab_sh("seed").returncode == 0
    g = fresh_guest("cmp2", [1])
    fresh_instance_rows("cmp2", [1], uuid=g.uuid)
    assert {"cpu": 1, "guests": sorted(["c2-resident", g.name])} in lab.numa_facts("cmp2")["overlaps"]
    pid_before = lab.virsh("cmp2", "domid", g.name).stdout.strip()

    p = ansible_playbook(PB, limit="cmp2", check=True, diff=True)
    assert p.returncode == 0, p.stdout[-3000:]
    assert lab.numa_facts("cmp2")["overlaps"] != []  # check mode changed nothing

    p = ansible_playbook(PB, limit="cmp2")
    assert p.returncode == 0, p.stdout[-3000:]
    f = lab.numa_facts("cmp2")
    assert f["overlaps"] == []
    mine = next(x for x in f["guests"] if x["name"] == g.name)
    assert mine["vcpu_pins"] == {"0": [0]}
    assert lab.affinity("cmp2", g.name)["vcpus"] == {0: {0}}
    assert lab.virsh("cmp2", "domid", g.name).stdout.strip() == pid_before  # same running domain: no reboot
    with db.cursor() as c:
        c.execute("SELECT numa_topology FROM nova.instance_extra WHERE instance_uuid=%s", (g.uuid,))
        assert '"cpu_pinning_raw": {"0": 0}' in c.fetchone()[0]

    p = ansible_playbook(PB, limit="cmp2")
    assert p.returncode == 0 and re.search(r"^cmp2\s+: ok=\d+\s+changed=0", p.stdout, re.M), p.stdout[-3000:]


def test_an_overlap_that_cannot_be_resolved_in_place_fails_the_play(lab, ansible_playbook, run_module):
    """The seeded cmp1: vm-taken (pCPU 1) and vm-toobig (pCPUs 0, 1) share pCPU 1, and cmp1 has no third
    pCPU. The play lists vm-toobig with the module's answer and fails, unless leftovers are accepted."""
    assert lab.lab_sh("seed").returncode == 0
    p = ansible_playbook(PB, limit="cmp1")
    assert p.returncode != 0, p.stdout[-3000:]
    assert re.search(r"guest vm-toobig on cmp1: .*No numa available", p.stdout), p.stdout[-3000:]
    assert "Overlap repin on cmp1: 1 left unresolved: vm-toobig" in p.stdout, p.stdout[-3000:]
    assert {"cpu": 1, "guests": ["vm-taken", "vm-toobig"]} in lab.numa_facts("cmp1")["overlaps"]
    p = ansible_playbook(PB, limit="cmp1", extra_vars={"numa_repin_allow_leftovers": True})
    assert p.returncode == 0, p.stdout[-3000:]
    assert re.search(r"guest vm-toobig on cmp1: .*No numa available", p.stdout), p.stdout[-3000:]
