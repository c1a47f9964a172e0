"""The playbooks under ansible-core 2.16, the last release that manages Python 2.7 and 3.6 hosts (CentOS 7,
Ubuntu 18.04), on the lab inventory whose control host is ctl27: a separate bullseye host whose only Python
is 2.7. The DB audit and fixup run there (binary modules), and so do the Nova patch role's builtin Python
modules (staging the patch sets with `copy`). The control case: the current ansible-core cannot run a Python
module on that host at all."""
import re
import textwrap
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]


def recap(out):
    got = {}
    for line in out.split("PLAY RECAP")[-1].splitlines():
        m = re.match(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", line)
        if m:
            got[m[1]] = {"changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5])}
    return got


def test_ctl27_has_only_python_27(lab):
    r = lab.ssh("ls /usr/bin /usr/local/bin | grep -E '^python[0-9.]*$' | sort | tr '\\n' ' '; echo; cat /etc/hostname",
                host="ctl27")
    assert r.returncode == 0, r.stderr
    pythons, hostname = r.stdout.splitlines()
    assert pythons.split() == ["python2.7"], pythons
    assert hostname == "ctl27"


def test_python_modules_on_the_py27_host_need_ansible_216(lab, ansible_playbook, tmp_path):
    pb = tmp_path / "pb.yml"
    pb.write_text(textwrap.dedent("""
        - hosts: control
          gather_facts: false
          tasks:
            - ansible.builtin.setup:
                gather_subset: [min]
            - ansible.builtin.debug:
                msg: "{{ ansible_hostname }} python {{ ansible_python_version }}"
    """))
    r = ansible_playbook(pb, ansible="ansible216")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "ctl27 python 2.7.18" in r.stdout
    v = lab.data["ansible216"]["playbook"].replace("ansible-playbook", "ansible")
    import subprocess
    ver = subprocess.run([v, "--version"], capture_output=True, text=True).stdout
    assert re.search(r"core 2\.16\.", ver), ver
    # The control case: today's ansible-core refuses Python 2.7 on the managed host.
    cur = lab.data["ansible"]
    import os
    env = dict(os.environ, ANSIBLE_CONFIG=cur["config"], ANSIBLE_NOCOLOR="1")
    r = subprocess.run([cur["playbook"], "-i", lab.data["ansible216"]["inventory"], str(pb)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode != 0 and "ctl27 python 2.7.18" not in r.stdout


def test_audit_drain_and_patch_check_under_ansible_216(lab, seeded, ansible_playbook):
    r = ansible_playbook(REPO / "playbooks" / "numa_audit.yml", {"numa_audit_report_name": "audit-2.16",
                                                                  "numa_repin_allow_leftovers": True},
                         ansible="ansible216")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    rc = recap(r.stdout)
    assert set(rc) >= {"cmp1", "cmp2", "control01", "localhost"}, rc
    assert all(v["changed"] == 0 and v["failed"] == 0 for v in rc.values()), rc
    assert "control01 nova_conductor:" in r.stdout  # the status ran on ctl27 (staging with copy on Python 2.7)
    assert "cannot load it" not in r.stdout and "could not ask the Nova" not in r.stdout  # asked from ctl27

    r = ansible_playbook(REPO / "playbooks" / "deploy_nova_patch.yml", check=True, diff=True, ansible="ansible216")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "nova_conductor" in r.stdout

    r = ansible_playbook(REPO / "playbooks" / "drain_host.yml", {"target_host": "cmp1", "numa_repin_allow_leftovers": True},
                         ansible="ansible216")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "moved ['vm-taken']; refused ['vm-toobig']" in r.stdout
    assert "DB drift after: 0" in r.stdout
    assert lab.guest_host("vm-taken") == "cmp2"
