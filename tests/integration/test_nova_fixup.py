"""nova_instance_fixup on the lab's real schema (Nova 19.3.2's nova-manage, Placement's and
Neutron's own migrations): the transaction, Nova's acceptance of what it wrote, check mode,
idempotency, faults, bad input, secrets, audit."""
import json
import re
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def creds(lab):
    return {"nova_conf": lab.data["db"]["nova_conductor_conf"], "passwords_file": lab.data["db"]["passwords_file"]}


def placement(pins, host_cell=0, mem=64):
    return {"cells": [{"guest_cell": 0, "host_cell": host_cell, "vcpus": sorted(int(v) for v in pins),
                       "vcpu_pins": {str(v): p for v, p in pins.items()}, "memory_mb": mem, "pagesize_kb": None,
                       "cpuset_reserved": []}], "emulator_pins": sorted(pins.values()), "dedicated": True}


def rows(db, uuid):
    with db.cursor() as c:
        c.execute("SELECT i.host, i.node, e.numa_topology FROM nova.instances i JOIN nova.instance_extra e "
                  "ON e.instance_uuid=i.uuid WHERE i.uuid=%s", (uuid,))
        host, node, numa = c.fetchone()
        c.execute("SELECT rp.name FROM placement.allocations a JOIN placement.resource_providers rp "
                  "ON rp.id=a.resource_provider_id WHERE a.consumer_id=%s", (uuid,))
        rps = sorted({r[0] for r in c.fetchall()})
        c.execute("SELECT b.host FROM neutron.ml2_port_bindings b JOIN neutron.ports p ON p.id=b.port_id "
                  "WHERE p.device_id=%s", (uuid,))
        bindings = sorted(r[0] for r in c.fetchall())
        c.execute("SELECT COUNT(*) FROM nova.migrations WHERE instance_uuid=%s AND status='completed' "
                  "AND migration_type='live-migration'", (uuid,))
        migs = c.fetchone()[0]
    return {"host": host, "node": node, "numa": json.loads(numa), "rps": rps, "bindings": bindings, "migrations": migs}


def node_numa(db, node):
    with db.cursor() as c:
        c.execute("SELECT numa_topology FROM nova.compute_nodes WHERE hypervisor_hostname=%s AND deleted=0", (node,))
        return c.fetchone()[0]


def nova_accepts(lab, node_text, instance_texts):
    venv = subprocess.run([str(REPO / "tests/lab/venv.sh"), "nova"], capture_output=True, text=True, check=True).stdout.strip()
    p = subprocess.run([f"{venv}/bin/python", str(REPO / "tests/nova_objects/check_usage.py")],
                       input=json.dumps({"host": node_text, "instances": instance_texts}), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def pins_of(numa):
    return numa["nova_object.data"]["cells"][0]["nova_object.data"]["cpu_pinning_raw"]


def test_move_in_one_transaction_and_nova_accepts_it(lab, db, fresh_instance_rows, run_module):
    u = fresh_instance_rows("cmp1", [1])
    before = rows(db, u)
    assert (before["host"], before["rps"], before["bindings"]) == ("cmp1", ["cmp1"], ["cmp1"])
    # neutron_database: the named fallback that writes the binding host into Neutron's DB (the API path:
    # test_neutron.py); by default the fixup leaves Neutron alone.
    args = dict(creds(lab), instance_uuid=u, dest_host="cmp2", placement=placement({0: 0}), neutron_database="neutron")
    fp = lab.db_fingerprint()
    rc, res = run_module("nova_instance_fixup", args, check_mode=True, diff=True)
    assert rc == 0 and res["changed"] and "nothing written" in res["msg"], res
    # check mode wrote nothing: every table's checksum and AUTO_INCREMENT (the migrations row it would
    # insert) as before
    assert lab.fingerprint_diff(fp, lab.db_fingerprint()) == {}
    assert '"cpu_pinning_raw"' in res["diff"]["after"]

    rc, res = run_module("nova_instance_fixup", args)
    assert rc == 0 and res["changed"], res
    assert any("no L2 agent" in w for w in res.get("warnings", [])), res  # the fallback names itself
    after = rows(db, u)
    assert (after["host"], after["node"], after["rps"], after["bindings"], after["migrations"]) == ("cmp2", "cmp2", ["cmp2"], ["cmp2"], 1)
    assert pins_of(after["numa"]) == {"0": 0}
    # everything else of the stored object kept
    assert after["numa"]["nova_object.data"]["cells"][0]["nova_object.version"] == before["numa"]["nova_object.data"]["cells"][0]["nova_object.version"]
    assert json.loads(node_numa(db, "cmp2"))["nova_object.data"]["cells"][0]["nova_object.data"]["pinned_cpus"].count(0) == 1

    # second run: nothing to do
    rc, res = run_module("nova_instance_fixup", args)
    assert rc == 0 and not res["changed"] and "already matches" in res["msg"], res

    # Nova 19.3.2's own objects load it, and its usage accounting finds no overlap with a
    # resident pinned to pCPU 1 (Stein's objects read the Stein format: 1.4 cells)
    resident = fresh_instance_rows("cmp2", [1])
    ok = nova_accepts(lab, node_numa(db, "cmp2"), [json.dumps(after["numa"]), json.dumps(rows(db, resident)["numa"])])
    assert ok.get("ok") and ok["pinned"]["0"] == [0, 1], ok


def test_release_keeps_the_pcpus_other_guests_hold(lab, db, seeded, run_module):
    """The seeded cmp1: vm-taken (pCPU 1) and vm-toobig (pCPUs 0, 1) overlap, as after an unpatched
    migration. Moving vm-taken to cmp2's pCPU 0 must leave cmp1's pCPU 1 pinned (vm-toobig holds it),
    and Nova's own accounting must then agree with every node row."""
    acc = lab.nova_accounting()
    assert any("CPUPinningInvalid" in e for e in acc["cmp1"]["errors"]), acc  # the control: the overlap is seen
    taken = next(g for g in lab.data["guests"] if g["name"] == "vm-taken")
    rc, res = run_module("nova_instance_fixup", dict(creds(lab), instance_uuid=taken["uuid"], dest_host="cmp2",
                                                     placement=placement({0: 0})))
    assert rc == 0 and res["changed"], res
    cmp1 = json.loads(node_numa(db, "cmp1"))["nova_object.data"]["cells"][0]["nova_object.data"]
    assert cmp1["pinned_cpus"] == [0, 1], cmp1
    lab.assert_nova_accepts_nodes()


def test_a_move_onto_pcpus_the_db_gives_another_guest_is_refused(lab, db, seeded, run_module):
    """c2-resident holds cmp2's pCPU 1 in the DB: recording vm-taken there would leave a node row Nova refuses."""
    taken = next(g for g in lab.data["guests"] if g["name"] == "vm-taken")
    fp = lab.db_fingerprint()
    rc, res = run_module("nova_instance_fixup", dict(creds(lab), instance_uuid=taken["uuid"], dest_host="cmp2",
                                                     placement=placement({0: 1})))
    assert rc == 1 and "would leave a compute node Nova refuses" in res["msg"] and "nothing was changed" in res["msg"], res
    assert lab.fingerprint_diff(fp, lab.db_fingerprint()) == {}


def test_nova_rejects_an_overlap_control(lab, db, fresh_instance_rows):
    """The acceptance check can fail: the same accounting over two instances pinned to one pCPU."""
    a = fresh_instance_rows("cmp2", [1])
    b = fresh_instance_rows("cmp2", [1])
    r = nova_accepts(lab, node_numa(db, "cmp2"), [json.dumps(rows(db, a)["numa"]), json.dumps(rows(db, b)["numa"])])
    assert r.get("error", "").startswith("CPUPinningInvalid"), r


def test_victoria_format_round_trip(lab, db, fresh_instance_rows, run_module):
    u = fresh_instance_rows("cmp1", [1], fmt="victoria")
    rc, res = run_module("nova_instance_fixup", dict(creds(lab), instance_uuid=u, dest_host="cmp2", placement=placement({0: 0})))
    assert rc == 0 and res["changed"], res
    cell = rows(db, u)["numa"]["nova_object.data"]["cells"][0]
    assert cell["nova_object.version"] == "1.5" and cell["nova_object.data"]["pcpuset"] == [0]
    assert cell["nova_object.data"]["cpu_pinning_raw"] == {"0": 0}
    # (Nova 19.3.2 cannot load InstanceNUMACell 1.5: the Victoria layout is checked field by field)


@pytest.mark.parametrize("bad,expect", [
    ("00000000-0000-4000-8000-00000000dead", "no instance 00000000-0000-4000-8000-00000000dead"),
    ("x' OR '1'='1", "not a uuid"),
    ("6c1a9e10-0000-4000-8000-000000000002; DROP TABLE instances", "not a uuid"),
])
def test_bad_instances_write_nothing(lab, db, run_module, bad, expect):
    with db.cursor() as c:
        c.execute("SELECT COUNT(*), MAX(updated_at) FROM nova.instances")
        before = c.fetchone()
    rc, res = run_module("nova_instance_fixup", dict(creds(lab), instance_uuid=bad, dest_host="cmp2", placement=placement({0: 0})))
    assert rc == 1 and res["failed"] and expect in res["msg"], res
    with db.cursor() as c:
        c.execute("SELECT COUNT(*), MAX(updated_at) FROM nova.instances")
        assert c.fetchone() == before


def test_malformed_row_is_refused_and_left_alone(lab, db, fresh_instance_rows, run_module):
    u = fresh_instance_rows("cmp1", [1])
    with db.cursor() as c:
        c.execute("UPDATE nova.instance_extra SET numa_topology='{\"nova_object.name\": ' WHERE instance_uuid=%s", (u,))
    db.commit()
    rc, res = run_module("nova_instance_fixup", dict(creds(lab), instance_uuid=u, dest_host="cmp2", placement=placement({0: 0})))
    assert rc == 1 and "not valid JSON" in res["msg"] and "left as it is" in res["msg"], res
    with db.cursor() as c:
        c.execute("SELECT i.host, e.numa_topology FROM nova.instances i JOIN nova.instance_extra e ON e.instance_uuid=i.uuid WHERE i.uuid=%s", (u,))
        assert c.fetchone() == ("cmp1", '{"nova_object.name": ')


def test_secrets_never_reach_output(lab, run_module):
    pw = lab.data["db"]["password"]
    url = f"mysql+pymysql://nova:{pw}@127.0.0.1:1/nova"  # nothing listens there: the DB is "down"
    rc, res = run_module("nova_instance_fixup", {"db_connection": url, "instance_uuid": "6c1a9e10-0000-4000-8000-000000000002",
                                                 "dest_host": "cmp2", "placement": placement({0: 0})})
    assert rc == 1 and "cannot connect to Nova's database nova@127.0.0.1:1/nova" in res["msg"], res
    assert pw not in json.dumps(res) and pw not in res.get("_stderr", "")
    wrong = f"mysql+pymysql://nova:not-{pw}@127.0.0.1:3306/nova"
    rc, res = run_module("nova_instance_fixup", {"db_connection": wrong, "instance_uuid": "6c1a9e10-0000-4000-8000-000000000002",
                                                 "dest_host": "cmp2", "placement": placement({0: 0})})
    assert rc == 1 and pw not in json.dumps(res) and f"not-{pw}" not in json.dumps(res), res


def test_database_stopped_then_killed_mid_transaction_then_rerun(lab, run_module):
    # Own connections: the kill drops every open one (the shared fixtures' too).
    conn = lab.connect_db()
    u = lab.insert_instance_rows(conn, "cmp1", [1])
    before = rows(conn, u)
    conn.close()
    args = dict(creds(lab), instance_uuid=u, dest_host="cmp2", placement=placement({0: 0}))
    # MariaDB stopped before the module runs: a clear failure, nothing else
    os.kill(int(Path(lab.data["db"]["pid_file"]).read_text().strip()), signal.SIGKILL)
    time.sleep(1)
    rc, res = run_module("nova_instance_fixup", args)
    assert rc == 1 and "cannot connect to Nova's database" in res["msg"] and "is MariaDB up" in res["msg"], res
    assert lab.lab_sh("up").returncode == 0
    env = dict(os.environ, NUMA_REPIN_TEST_PAUSE_BEFORE_COMMIT_S="6")
    argf = Path(lab.data["lab_dir"]) / f"fixup-{u}.json"
    argf.write_text(json.dumps(args))
    try:
        proc = subprocess.Popen([str(REPO / "library/nova_instance_fixup"), str(argf)], stdout=subprocess.PIPE, text=True, env=env)
        time.sleep(3)  # inside the transaction, every row written, not committed
        pid = int(Path(lab.data["db"]["pid_file"]).read_text().strip())
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
        res = json.loads(out)
        assert proc.returncode == 1 and res["failed"] and "nothing was changed" in res["msg"], res
        assert lab.lab_sh("up").returncode == 0  # MariaDB back; InnoDB recovery rolls the transaction back
        conn = lab.connect_db()
        assert rows(conn, u) == before
        rc, res = run_module("nova_instance_fixup", args)
        assert rc == 0 and res["changed"], res
        assert rows(conn, u)["host"] == "cmp2"
        lab.delete_instance_rows(conn, u)
        conn.close()
    finally:
        argf.unlink()


def test_audit_reports_drift_and_fix_repairs_it(lab, db, fresh_guest, fresh_instance_rows, run_module):
    g = fresh_guest("cmp2", [0])
    fresh_instance_rows("cmp1", [1], uuid=g.uuid)  # the DB still thinks: cmp1, pCPU 1
    hosts = [lab.numa_facts("cmp2")]
    rc, res = run_module("nova_instance_fixup", dict(creds(lab), audit=True, hosts=hosts))
    assert rc == 0 and not res["changed"], res
    mine = [d for d in res["drift"] if d["instance_uuid"] == g.uuid]
    assert len(mine) == 1 and "DB says host cmp1" in mine[0]["kind"] and "live pins" in mine[0]["kind"], res["drift"]
    fp = lab.db_fingerprint()
    rc, res = run_module("nova_instance_fixup", dict(creds(lab), audit=True, fix=True, hosts=hosts), check_mode=True)
    assert rc == 0 and res["changed"] and any(x["instance_uuid"] == g.uuid for x in res["fixed"]), res
    assert lab.fingerprint_diff(fp, lab.db_fingerprint()) == {}
    rc, res = run_module("nova_instance_fixup", dict(creds(lab), audit=True, fix=True, hosts=hosts))
    assert rc == 0 and res["changed"] and any(x["instance_uuid"] == g.uuid for x in res["fixed"]), res
    r = rows(db, g.uuid)
    assert (r["host"], pins_of(r["numa"])) == ("cmp2", {"0": 0})
    rc, res = run_module("nova_instance_fixup", dict(creds(lab), audit=True, hosts=hosts))
    assert not [d for d in res["drift"] if d["instance_uuid"] == g.uuid]
    # A stale, shut-off copy of it left on cmp1 (same uuid, as after an interrupted migration): the audit
    # reports the uuid defined on two hosts, and fix leaves its rows alone (which copy is the guest is the
    # operator's call).
    fresh_guest("cmp1", [1], uuid=g.uuid, name=g.name + "-stale", start=False)
    both = [lab.numa_facts(h) for h in ("cmp1", "cmp2")]
    before = rows(db, g.uuid)
    rc, res = run_module("nova_instance_fixup", dict(creds(lab), audit=True, fix=True, hosts=both))
    assert rc == 0, res
    twice = [d for d in res["drift"] if d["instance_uuid"] == g.uuid and d["kind"].startswith("defined on two hosts")]
    assert twice and "cmp1 (shutoff)" in twice[0]["kind"] and "cmp2 (running)" in twice[0]["kind"], res["drift"]
    assert not [x for x in res["fixed"] if x["instance_uuid"] == g.uuid], res
    assert rows(db, g.uuid) == before


def test_audit_names_rows_the_running_nova_cannot_load(lab, fresh_instance_rows, ansible_playbook):
    """A row in the Victoria+ layout (InstanceNUMACell 1.5) in this Stein DB: the Nova 19.3.2 that runs in the
    lab's nova_conductor container is asked, cannot load it, and the audit names it and fails."""
    u = fresh_instance_rows("cmp2", [0], fmt="victoria")
    p = ansible_playbook(REPO / "playbooks" / "numa_audit.yml", extra_vars={"numa_audit_report_name": "rows"})
    assert p.returncode != 0, p.stdout[-3000:]
    assert re.search(r"instance_extra row %s on cmp2: Nova 19\.3\.2 cannot load it: \w+: .*1\.5" % u, p.stdout), \
        p.stdout[-4000:]
    assert "NUMA audit: " in p.stdout and "left unresolved" in p.stdout


def test_audit_reports_a_compute_node_row_no_service_stands_behind(lab, db, run_module):
    """A compute node row left by a removed host (no nova-compute service on it): reported; the lab's own
    nodes (cmp1, cmp2, each with its service) are not."""
    import uuid as uuidlib
    import lablib
    u = str(uuidlib.uuid4())
    with db.cursor() as c:
        lablib.labdb.upsert_compute_node(c, "cmp9", u, "10.77.0.99", 2, 1024, None, 0, 0, 0)
    db.commit()
    try:
        rc, res = run_module("nova_instance_fixup", dict(creds(lab), audit=True, hosts=[]))
        assert rc == 0, res
        stale = {n["node"]: n for n in res["stale_compute_nodes"]}
        assert "cmp9" in stale and "no live nova-compute service" in stale["cmp9"]["kind"], res
        assert not {"cmp1", "cmp2"} & set(stale), res
        assert "1 stale compute node rows" in res["msg"], res
    finally:
        with db.cursor() as c:
            c.execute("DELETE FROM nova.compute_nodes WHERE uuid=%s", (u,))
            c.execute("DELETE FROM nova_api.host_mappings WHERE host='cmp9'")
        db.commit()


def test_audit_fix_rewrites_a_row_the_running_nova_cannot_load(lab, fresh_instance_rows, ansible_playbook, db):
    """numa_audit.yml -e numa_repin_fix=true: the Victoria+ row (InstanceNUMACell 1.5) that Stein's Nova
    refuses is rewritten as InstanceNUMACell 1.4, as Victoria's own obj_make_compatible does (pcpuset becomes
    cpuset), and the running Nova, asked again, loads it. --check --diff first: the diff, nothing written."""
    u = fresh_instance_rows("cmp2", [0], fmt="victoria")
    fp = lab.db_fingerprint()
    extra = {"numa_audit_report_name": "rows-fix", "numa_repin_fix": True, "numa_repin_allow_leftovers": True}
    p = ansible_playbook(REPO / "playbooks" / "numa_audit.yml", extra_vars=extra, check=True, diff=True)
    assert p.returncode == 0, p.stdout[-4000:]
    assert lab.fingerprint_diff(fp, lab.db_fingerprint()) == {}
    assert '"pcpuset"' in p.stdout and "rewritten as InstanceNUMACell 1.4" in p.stdout, p.stdout[-4000:]

    backup = "/tmp/numa-repin-fix-backup-%s" % os.urandom(3).hex()  # on the control host, where the fix runs
    p = ansible_playbook(REPO / "playbooks" / "numa_audit.yml", extra_vars=dict(extra, numa_repin_fix_backup_dir=backup))
    assert p.returncode == 0, p.stdout[-4000:]
    # The row as it was, kept before the write.
    files = list((Path(lab.nodes["control"]["root"]) / backup.lstrip("/")).glob(u + "-*.json"))
    assert len(files) == 1, files
    kept = json.loads(files[0].read_text())["numa_topology"]["nova_object.data"]["cells"][0]
    assert kept["nova_object.version"] == "1.5" and kept["nova_object.data"]["pcpuset"] == [0], kept
    with db.cursor() as c:
        c.execute("SELECT numa_topology FROM nova.instance_extra WHERE instance_uuid=%s", (u,))
        cell = json.loads(c.fetchone()[0])["nova_object.data"]["cells"][0]
    assert cell["nova_object.version"] == "1.4", cell
    assert cell["nova_object.data"]["cpuset"] == [0] and "pcpuset" not in cell["nova_object.data"], cell
    assert cell["nova_object.data"]["cpu_pinning_raw"] == {"0": 0}, cell
    # Asked again after the repair, the running Nova loads every row.
    after = p.stdout.split("The running Nova asked again, after the repair")[-1]
    assert "cannot load it" not in after, after[-3000:]
    # A second run has nothing left to rewrite.
    p = ansible_playbook(REPO / "playbooks" / "numa_audit.yml", extra_vars=extra)
    assert p.returncode == 0 and "rewritten as InstanceNUMACell" not in p.stdout, p.stdout[-3000:]
