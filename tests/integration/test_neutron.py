"""The guest's network follows it (issue 16), proven with the lab's real neutron-server (Stein, ml2 +
linuxbridge, in the control host) and a real Linux bridge agent in each compute, over RabbitMQ.

What counts is what Neutron and the agents did, read from them: the port's bindings from
neutron-server's API; its status ACTIVE, which neutron-server sets only when the agent of the host the
port is bound to reports the device up (an agent that finds a tap of a port bound elsewhere logs that
and leaves it DOWN); and the destination's bridge holding the guest's tap and the physnet interface
(eth1). The lab's standard guests are reseeded before and after each test (`seeded`)."""
import json
import re
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DRAIN = REPO / "playbooks" / "drain_host.yml"
AUDIT = REPO / "playbooks" / "numa_audit.yml"
TAKEN = "6c1a9e10-0000-4000-8000-000000000002"  # vm-taken: cmp1 -> cmp2 in a drain of cmp1


def agent_refused(lab, host, tap, timeout=30):
    """The host's Linux bridge agent saw the tap and found its port not bound (actively) to it."""
    log = Path(lab.hosts[host]["dir"]) / "neutron/log/neutron-linuxbridge-agent.log"
    pat = re.compile(r"Device %s (has no active binding in host|not defined on plugin or binding failed)" % tap)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pat.search(log.read_text(errors="replace")):
            return True
        time.sleep(1)
    return False


def wired(lab, host, tap):
    """The tap is in the network's bridge on host, with the physnet interface the agent adds."""
    return lab.bridge_members(host, lab.neutron_json()["bridge"]) >= {tap, lab.data["neutron"]["physnet_interface"]}


def test_the_lab_ports_are_bound_and_wired_by_the_agents(lab, seeded):
    n = lab.neutron_json()
    for g in lab.data["guests"]:
        p = lab.wait_port(g["uuid"], g["host"])
        assert lab.port_bindings(p["id"]) == {g["host"]: "ACTIVE"}
        assert wired(lab, g["host"], n["ports"][g["uuid"]]["tap"])
    st, agents = lab.neutron_api("GET", "/agents")
    assert {a["host"] for a in agents["agents"] if a["alive"]} >= set(lab.data["host_names"])


def test_drain_moves_the_ports_through_the_api(lab, seeded, ansible_playbook):
    tap = lab.neutron_json()["ports"][TAKEN]["tap"]
    port = lab.wait_port(TAKEN, "cmp1")
    p = ansible_playbook(DRAIN, extra_vars={"target_host": "cmp1", "numa_repin_allow_leftovers": True})
    assert p.returncode == 0, p.stdout[-4000:]
    assert lab.guest_host("vm-taken") == "cmp2"
    # neutron-server: bound and ACTIVE on the destination, which the destination's agent reports only
    # after wiring it; the source keeps no binding.
    after = lab.wait_port(TAKEN, "cmp2", timeout=30)
    assert after["id"] == port["id"]
    assert lab.port_bindings(port["id"]) == {"cmp2": "ACTIVE"}
    assert wired(lab, "cmp2", tap)
    assert tap not in (lab.bridge_members("cmp1", lab.neutron_json()["bridge"]) or set())
    # the API path, not the DB fallback
    assert "no L2 agent" not in p.stdout
    # Kolla's files gave the credentials (the inventory sets none); the password never shows
    assert lab.data["keystone"]["password"] not in p.stdout
    assert "Neutron ports of vm-taken: prepared on cmp2" in p.stdout
    assert "Neutron ports of vm-taken: active on cmp2" in p.stdout


def test_a_failed_migration_leaves_the_binding_on_the_source(lab, seeded, ansible_playbook):
    port = lab.wait_port(TAKEN, "cmp1")
    # The destination's QEMU cannot listen on another host's address: the migration fails after the
    # destination binding was made, and the role must delete it again.
    p = ansible_playbook(DRAIN, extra_vars={"target_host": "cmp1", "numa_repin_allow_leftovers": True,
                                            "migrate_address": "10.77.0.13"})
    assert lab.guest_host("vm-taken") == "cmp1", p.stdout[-4000:]
    assert "Neutron ports of vm-taken: prepared on cmp2" in p.stdout
    assert "Neutron ports of vm-taken: rolled_back on cmp2" in p.stdout, p.stdout[-4000:]
    assert lab.port_bindings(port["id"]) == {"cmp1": "ACTIVE"}
    lab.wait_port(TAKEN, "cmp1")
    assert wired(lab, "cmp1", lab.neutron_json()["ports"][TAKEN]["tap"])


def test_an_unreachable_api_refuses_the_move_before_migrating(lab, seeded, ansible_playbook):
    port = lab.wait_port(TAKEN, "cmp1")
    pins_before = lab.affinity("cmp1", "vm-taken")["vcpus"]
    p = ansible_playbook(DRAIN, extra_vars={"target_host": "cmp1", "numa_repin_allow_leftovers": True,
                                            "numa_repin_neutron_args": {"kolla_config_dir": "/etc/kolla",
                                                                        "neutron_url": "http://10.77.0.10:9"}})
    out = p.stdout
    assert lab.guest_host("vm-taken") == "cmp1"  # never migrated
    assert lab.affinity("cmp1", "vm-taken")["vcpus"] == pins_before
    assert "http://10.77.0.10:9" in out, out[-4000:]  # says which API it could not reach
    assert "Migrate with new pins: vm-taken" not in out  # the block stopped before the migration task
    assert lab.port_bindings(port["id"]) == {"cmp1": "ACTIVE"}


def test_audit_reports_a_port_bound_elsewhere_and_fix_moves_it(lab, seeded, ansible_playbook, run_module):
    """A move that bypassed Neutron (an old run, or the DB fallback): the guest runs on cmp2, its port
    is bound to cmp1, so cmp2's agent leaves it unwired. The audit lists it; the fix moves it through
    the API and the agent wires it."""
    tap = lab.neutron_json()["ports"][TAKEN]["tap"]
    port = lab.wait_port(TAKEN, "cmp1")
    rc, res = run_module("repin_migrate", {"guest": "vm-taken", "source_uri": lab.uri("cmp1"), "dest_uri": lab.uri("cmp2"),
                                           "dest_nova_conf": lab.nova_conf("cmp2"), "source_host": "cmp1",
                                           "dest_host": "cmp2",
                                           "migrate_uri": "tcp://" + lab.hosts["cmp2"]["migrate_address"]})
    assert rc == 0 and res["changed"], res
    assert lab.port_of(TAKEN)["binding:host_id"] == "cmp1"
    # the field's outage: cmp2's agent finds the tap, is told the port is not bound there, leaves it
    # DOWN; cmp1's agent reports the device gone
    assert agent_refused(lab, "cmp2", tap)
    lab.wait_port(TAKEN, "cmp1", status="DOWN", timeout=30)

    p = ansible_playbook(AUDIT, extra_vars={"numa_repin_allow_leftovers": True})
    assert p.returncode == 0, p.stdout[-4000:]
    assert "Neutron port %s" % port["id"] in p.stdout and "is bound to cmp1" in p.stdout, p.stdout[-4000:]
    assert lab.port_bindings(port["id"]) == {"cmp1": "ACTIVE"}  # the audit changed nothing

    p = ansible_playbook(AUDIT, extra_vars={"numa_repin_allow_leftovers": True, "numa_repin_fix": True}, check=True)
    assert p.returncode == 0, p.stdout[-4000:]
    assert lab.port_bindings(port["id"]) == {"cmp1": "ACTIVE"}  # check mode neither

    p = ansible_playbook(AUDIT, extra_vars={"numa_repin_allow_leftovers": True, "numa_repin_fix": True})
    assert p.returncode == 0, p.stdout[-4000:]
    lab.wait_port(TAKEN, "cmp2", timeout=30)
    assert lab.port_bindings(port["id"]) == {"cmp2": "ACTIVE"}
    assert wired(lab, "cmp2", tap)


def test_module_prepare_and_rollback_cycle(lab, seeded, run_module):
    """The module alone: check mode writes nothing, each state is idempotent, and a rollback never takes
    away the binding the guest runs on."""
    port = lab.wait_port(TAKEN, "cmp1")
    base = {"instance_uuid": TAKEN, "kolla_config_dir": lab.data["neutron"]["kolla_config_dir"], "wait_active_s": 30}

    def run(state, host, check=False):
        return run_module("neutron_port_binding", dict(base, state=state, host=host), check_mode=check)

    for state in ("prepared", "active"):  # where it is bound and active already: nothing to do
        rc, res = run(state, "cmp1")
        assert rc == 0 and not res["changed"], res
    # check mode: neutron-server's own request log shows only GETs (the agents keep writing the DB, so a
    # DB checksum cannot tell)
    api_log = Path(lab.nodes["control"]["dir"]) / "neutron/log/neutron-server.log"
    seen = api_log.stat().st_size
    rc, res = run("prepared", "cmp2", check=True)
    assert rc == 0 and res["changed"], res
    with open(api_log, errors="replace") as f:
        f.seek(seen)
        requests = re.findall(r'"(GET|POST|PUT|DELETE) /v2.0/', f.read())
    assert requests and set(requests) == {"GET"}, requests
    assert lab.port_bindings(port["id"]) == {"cmp1": "ACTIVE"}

    rc, res = run("prepared", "cmp2")
    assert rc == 0 and res["changed"], res
    assert lab.port_bindings(port["id"]) == {"cmp1": "ACTIVE", "cmp2": "INACTIVE"}
    rc, res = run("prepared", "cmp2")
    assert rc == 0 and not res["changed"], res

    rc, res = run("rolled_back", "cmp1")  # the binding the guest runs on: refused, nothing changed
    assert rc != 0 and res["failed"] and "cmp1" in res["msg"], res
    assert lab.port_bindings(port["id"]) == {"cmp1": "ACTIVE", "cmp2": "INACTIVE"}

    rc, res = run("rolled_back", "cmp2")
    assert rc == 0 and res["changed"], res
    assert lab.port_bindings(port["id"]) == {"cmp1": "ACTIVE"}
    rc, res = run("rolled_back", "cmp2")
    assert rc == 0 and not res["changed"], res
    lab.wait_port(TAKEN, "cmp1")


def test_module_refuses_a_host_without_an_agent(lab, seeded, run_module):
    """A destination Neutron cannot bind (no L2 agent there): refused before any migration, and the
    inactive binding it tried is not left behind."""
    port = lab.wait_port(TAKEN, "cmp1")
    rc, res = run_module("neutron_port_binding", {"state": "prepared", "instance_uuid": TAKEN, "host": "cmp9",
                                                  "kolla_config_dir": lab.data["neutron"]["kolla_config_dir"]})
    assert rc != 0 and res["failed"] and "cmp9" in res["msg"], res
    assert lab.port_bindings(port["id"]) == {"cmp1": "ACTIVE"}


def test_keystone_credentials_three_ways_and_the_password_never_shows(lab, run_module, tmp_path):
    """The lab's real Keystone (Stein): Kolla's files with admin-openrc.sh, Kolla's files without it
    (globals.yml's internal VIP and passwords.yml), and os_auth; a wrong password is Keystone's 401, named,
    with neither password in the result."""
    k = lab.data["keystone"]
    kolla = Path(lab.data["neutron"]["kolla_config_dir"])
    audit = {"state": "audited", "guests": {g["uuid"]: g["host"] for g in lab.data["guests"]}}
    rc, res = run_module("neutron_port_binding", dict(audit, kolla_config_dir=str(kolla)))
    assert rc == 0 and res["ports_checked"] == len(lab.data["guests"]), res

    only = tmp_path / "kolla"  # no admin-openrc.sh: the deploy host's post-deploy file is not everywhere
    only.mkdir()
    for f in ("passwords.yml", "globals.yml"):
        (only / f).write_text((kolla / f).read_text())
    rc, res = run_module("neutron_port_binding", dict(audit, kolla_config_dir=str(only)))
    assert rc == 0 and res["ports_checked"] == len(lab.data["guests"]), res

    os_auth = {"auth_url": k["auth_url"], "username": k["username"], "password": k["password"],
               "project_name": k["project_name"]}
    rc, res = run_module("neutron_port_binding", dict(audit, os_auth=os_auth))
    assert rc == 0 and res["ports_checked"] == len(lab.data["guests"]), res

    wrong = "Wr0ng-" + k["password"][::-1]
    rc, res = run_module("neutron_port_binding", dict(audit, os_auth=dict(os_auth, password=wrong)))
    assert rc != 0 and res["failed"], res
    assert "401" in res["msg"] and k["auth_url"] in res["msg"], res
    assert wrong not in json.dumps(res) and k["password"] not in json.dumps(res)
