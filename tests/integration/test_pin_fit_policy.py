"""pin_fit_check reads existing guests' thread policies from Nova's DB (the lab's real Nova 19.3.2
schema): instance rows made here (numa_topology cells, flavor, image properties in
instance_system_metadata), hosts as saved facts (an SMT host from tests/fixtures/saved, guests
written here), so nothing on the lab's hosts is touched and the module only reads the DB."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lablib  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SAVED = REPO / "tests" / "fixtures" / "saved"
CAPS = SAVED / "caps-2s12c2t.xml"  # 2 sockets x 12 cores x 2 threads: pCPU n and n+24 are siblings
NOT_IN_DB = "6c1a9e10-0000-4000-8000-0000000000e1"
RESIDENT = "6c1a9e10-0000-4000-8000-0000000000e2"


def creds(lab):
    return {"db_nova_conf": lab.data["db"]["nova_conductor_conf"], "passwords_file": lab.data["db"]["passwords_file"]}


def domain(name, uuid, pins, mem_mb=64):
    """A Nova-style pinned guest on host cell 0 (as src/model/domain.rs's test fixture writes them)."""
    n = len(pins)
    tune = "".join("<vcpupin vcpu='%d' cpuset='%d'/>" % (v, p) for v, p in enumerate(pins))
    return ("<domain type='kvm'><name>%s</name><uuid>%s</uuid><memory unit='KiB'>%d</memory>"
            "<vcpu placement='static'>%d</vcpu><cputune>%s<emulatorpin cpuset='%s'/></cputune>"
            "<numatune><memory mode='strict' nodeset='0'/><memnode cellid='0' mode='strict' nodeset='0'/></numatune>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os><cpu><numa><cell id='0' cpus='0-%d' memory='%d'"
            " unit='KiB'/></numa></cpu><devices/></domain>") % (
        name, uuid, mem_mb * 1024, n, tune, ",".join(map(str, pins)), n - 1, mem_mb * 1024)


def module(name, args):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(args, f)
    try:
        r = subprocess.run([str(REPO / "library" / name), f.name], capture_output=True, text=True, timeout=300)
    finally:
        os.unlink(f.name)
    return lablib.module_result(r)


def saved_facts(tmp_path, host, guests):
    files = []
    for name, uuid, pins in guests:
        p = tmp_path / ("%s-%s.xml" % (host, name))
        p.write_text(domain(name, uuid, pins))
        files.append(str(p))
    rc, res = module("numa_facts", {"capabilities_file": str(CAPS), "domain_files": files, "host": host,
                                    "nova_conf": str(SAVED / "nova.conf")})
    assert rc == 0, res
    return res["ansible_facts"]["numa"]


def set_policies(lab, uuid, cells=None, image=None):
    """Rewrite the row's numa_topology cells' policy fields (cells: dict to set; {} drops them, as rows
    written before InstanceNUMACell 1.3) and add image properties to instance_system_metadata."""
    with lab.connect_db() as conn, conn.cursor() as c:
        if cells is not None:
            c.execute("SELECT numa_topology FROM nova.instance_extra WHERE instance_uuid=%s", (uuid,))
            doc = json.loads(c.fetchone()[0])
            for cell in doc["nova_object.data"]["cells"]:
                d = cell["nova_object.data"]
                d.pop("cpu_policy", None)
                d.pop("cpu_thread_policy", None)
                d.update(cells)
            c.execute("UPDATE nova.instance_extra SET numa_topology=%s WHERE instance_uuid=%s", (json.dumps(doc), uuid))
        for k, v in (image or {}).items():
            c.execute("INSERT INTO nova.instance_system_metadata (created_at, deleted, instance_uuid, `key`, value)"
                      " VALUES (NOW(), 0, %s, %s, %s)", (uuid, "image_" + k, v))


def by_guest(res):
    return {m["guest"]: m for m in res["plan"]["moves"]}


def test_drain_uses_the_thread_policies_nova_records(lab, fresh_instance_rows, tmp_path):
    iso = fresh_instance_rows("cmp1", [5], allocations=False, port=False)
    req = fresh_instance_rows("cmp1", [6, 7], allocations=False, port=False)
    set_policies(lab, iso, cells={"cpu_policy": "dedicated", "cpu_thread_policy": "isolate"})
    # An old row (no policy in its cells): the flavor (dedicated) with the image's require.
    set_policies(lab, req, cells={}, image={"hw_cpu_thread_policy": "require"})
    # The destination: pCPU 2 taken, so its sibling 26 is the free thread of a partly used core.
    dst = saved_facts(tmp_path, "dst", [("resident", RESIDENT, [2])])

    # The isolate guest alone: assumed prefer it takes 26; with the DB's isolate a whole free core.
    alone = {"sources": [saved_facts(tmp_path, "src1", [("iso", iso, [5])])], "candidates": [dst]}
    rc, res = module("pin_fit_check", {"drain": alone})
    assert rc == 0, res
    m = by_guest(res)["iso"]
    assert (m["policy_source"], m["placement"]["cells"][0]["vcpu_pins"]["0"]) == ("assumed", 26), res
    assert "1 assumed prefer (libvirt does not record them" in res["msg"], res
    rc, res = module("pin_fit_check", dict(creds(lab), drain=alone))
    assert rc == 0, res
    m = by_guest(res)["iso"]
    assert (m["thread_policy"], m["policy_source"]) == ("isolate", "nova_db"), res
    pin = m["placement"]["cells"][0]["vcpu_pins"]["0"]
    assert pin not in (2, 26), res

    # All three: the image's require through the flavor, and a guest Nova does not know.
    src = saved_facts(tmp_path, "src", [("iso", iso, [5]), ("req", req, [6, 7]), ("ghost", NOT_IN_DB, [8])])
    rc, res = module("pin_fit_check", dict(creds(lab), drain={"sources": [src], "candidates": [dst]}))
    assert rc == 0, res
    moves = by_guest(res)
    assert (moves["iso"]["thread_policy"], moves["iso"]["policy_source"]) == ("isolate", "nova_db"), res
    assert (moves["req"]["thread_policy"], moves["req"]["policy_source"]) == ("require", "nova_db"), res
    assert (moves["ghost"]["thread_policy"], moves["ghost"]["policy_source"]) == ("prefer", "assumed"), res
    assert [n["uuid"] for n in res["policy_notes"]] == [NOT_IN_DB], res
    assert "2 from Nova's DB, 0 from drain.thread_policy, 1 assumed prefer" in res["msg"], res
    # Nobody on the isolate guest's sibling; require: both vCPUs on one core's threads.
    pin = moves["iso"]["placement"]["cells"][0]["vcpu_pins"]["0"]
    sibling = pin + 24 if pin < 24 else pin - 24
    others = {p for m in res["plan"]["moves"] if m["guest"] != "iso" for c in m["placement"]["cells"]
              for p in c["vcpu_pins"].values()}
    assert sibling not in others | {2}, res
    a, b = sorted(moves["req"]["placement"]["cells"][0]["vcpu_pins"].values())
    assert b - a == 24, res


def test_guest_mode_refuses_an_argument_the_db_contradicts(lab, fresh_instance_rows, tmp_path):
    iso = fresh_instance_rows("cmp1", [5], allocations=False, port=False)
    set_policies(lab, iso, cells={"cpu_policy": "dedicated", "cpu_thread_policy": "isolate"})
    src = saved_facts(tmp_path, "src", [("iso", iso, [5])])
    dst = saved_facts(tmp_path, "dst", [("resident", RESIDENT, [2])])
    args = dict(creds(lab), host_facts=dst, guest="iso", source_facts=src)
    rc, res = module("pin_fit_check", dict(args, thread_policy="prefer"))
    assert rc == 1 and "thread_policy prefer contradicts Nova's DB, which records isolate for iso" in res["msg"], res
    rc, res = module("pin_fit_check", args)
    assert rc == 0 and res["fits"] and (res["thread_policy"], res["policy_source"]) == ("isolate", "nova_db"), res
    assert res["placement"]["cells"][0]["vcpu_pins"]["0"] != 26, res
    # A wrong password: refused, and never echoed.
    url = lab.data["db"]["urls"]["nova"].replace(lab.data["db"]["password"], "not-the-password")
    rc, res = module("pin_fit_check", {"host_facts": dst, "guest": "iso", "source_facts": src, "db_connection": url})
    assert rc == 1 and "cannot connect to Nova's database" in res["msg"] and "not-the-password" not in json.dumps(res)
