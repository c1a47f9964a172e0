"""kolla-ansible's own multinode inventory, as an operator has it: the file shipped in kolla-ansible 8.3.0
(Stein), downloaded at test time, with only its host lines changed to the lab's hosts (control01 for the
control group, cmp1 and cmp2 for compute; the other groups keep kolla's example hosts, which no play of
ours contacts) and the connection settings in host_vars/ and group_vars/ beside it, as kolla operators
keep them. Every group of kolla's file is there (nova:children, nova-conductor:children, baremetal,
deployment's localhost...). The audit and a drain in check mode run on it, with no warning of a host
named like a group."""
import os
import re
import subprocess
import zipfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("NUMA_REPIN_CACHE", "/var/cache/numa-repin")) / "kolla-ansible"
RELEASE = "8.3.0"  # kolla-ansible's last Stein release


def kolla_multinode():
    CACHE.mkdir(parents=True, exist_ok=True)
    whl = CACHE / ("kolla_ansible-%s-py3-none-any.whl" % RELEASE)
    if not whl.exists():
        subprocess.run(["python3", "-m", "pip", "download", "-q", "--no-deps", "kolla-ansible==" + RELEASE,
                        "-d", str(CACHE)], check=True, timeout=300)
    with zipfile.ZipFile(whl) as z:
        return z.read("kolla_ansible-%s.data/data/share/kolla-ansible/ansible/inventory/multinode"
                      % RELEASE).decode()


def operator_inventory(lab, tmp_path):
    text = kolla_multinode()
    # Only the hosts of the first groups change, as kolla's file tells operators to do.
    lines, group = [], None
    for line in text.splitlines():
        m = re.match(r"^\[([^\]]+)\]$", line)
        if m:
            group = m[1]
        elif group == "control" and re.match(r"^control0\d$", line):
            line = "control01" if line == "control01" else "#" + line
        elif group == "compute" and line == "compute01":
            line = "\n".join(lab.data["cloud_computes"])
        lines.append(line)
    d = tmp_path / "kolla"
    (d / "host_vars").mkdir(parents=True)
    (d / "group_vars").mkdir()
    (d / "multinode").write_text("\n".join(lines) + "\n")
    # Connection and numa-repin settings, from the lab's own inventory.
    inv = yaml.safe_load(open(lab.data["ansible"]["inventory"]))["all"]
    (d / "group_vars" / "all.yml").write_text(yaml.safe_dump(inv["vars"]))
    (d / "host_vars" / "localhost.yml").write_text(yaml.safe_dump(inv["hosts"]["localhost"]))
    for group in ("compute", "control"):
        for h, v in inv["children"][group]["hosts"].items():
            (d / "host_vars" / ("%s.yml" % h)).write_text(yaml.safe_dump(v))
    return d / "multinode", text


def test_audit_and_drain_check_on_kollas_multinode_inventory(lab, seeded, tmp_path):
    path, original = operator_inventory(lab, tmp_path)
    assert "[nova-conductor:children]" in original and "[deployment]" in original  # kolla's own file
    r = lab.ansible_playbook(REPO / "playbooks" / "numa_audit.yml",
                             {"numa_audit_report_name": "kolla-inventory", "numa_repin_allow_leftovers": True},
                             inventory_path=path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    assert "Found both group and host" not in out, out[-3000:]
    # The one warning left is about kolla's own group names (nova-conductor...), which kolla-ansible's
    # runs print too.
    warnings = {w for w in re.findall(r"\[WARNING\]: (.*)", out)}
    assert warnings <= {"Invalid characters were found in group names but not replaced, use -vvvv to see details"}, \
        warnings
    assert "control01 nova_conductor:" in r.stdout  # the control group's host, as kolla names it
    for h in ("cmp1", "cmp2", "control01"):
        assert re.search(r"^%s\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0" % h, r.stdout, re.M), r.stdout[-3000:]
    r = lab.ansible_playbook(REPO / "playbooks" / "drain_host.yml",
                             {"target_host": "cmp1", "numa_repin_allow_leftovers": True},
                             check=True, diff=True, inventory_path=path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    assert "vm-taken -> cmp2" in r.stdout and "Found both group and host" not in r.stdout + r.stderr
