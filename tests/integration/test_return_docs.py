"""Every key a module really returns is documented in its RETURN (docs/modules/<module>.yml, which
scripts/gen_module_docs.py copies into library/<module>.yml for ansible-doc).

Each module is run in its main modes on the lab (tests/lab/lab.sh up), the way the other tests
here run them (numa_facts on saved dumps and the `path` rollout run on this machine and need no
lab): check mode wherever the module changes something on the lab, real runs only on what the
test makes itself (a fresh guest, instance rows, a Nova tree under tmp_path), and the outcomes
the RETURN describes beyond success (a refusal, a failed migration, a failure rolled back)
provoked where that is cheap and safe. Then every key of the result must be documented:

- the top-level keys, except the ones the runtime (src/ansible.rs `render`) and Ansible set on
  every result: changed, failed, msg, warnings, diff, check_mode, invocation (and `_stderr`,
  which lablib's `run_module` adds). `ansible_facts` is not exempt: numa_facts documents it, any
  other module returning it fails here;
- below a documented key that has `contains`, the keys of its dict value (or of each dict in its
  list value), recursively: so `ansible_facts.numa` of numa_facts and its parts are checked
  wherever the docs describe their subkeys;
- deploy_patched_nova's `containers` is keyed by container name; the docs say each container's
  report has the keys the top level has with `path`, and that is what is checked.

An undocumented key fails the test naming the module, the scenario and the key's path.
"""
import copy
import json
import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lablib  # noqa: E402
import nova_hooks  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RUNTIME_KEYS = {"changed", "failed", "msg", "warnings", "diff", "check_mode", "invocation", "_stderr"}
TAKEN = "6c1a9e10-0000-4000-8000-000000000002"     # vm-taken, seeded on cmp1 (vCPU 0 -> pCPU 1)
C2_RESIDENT = "6c1a9e10-0000-4000-8000-000000000001"  # its DB row is in the Victoria+ format
RELEASE = "19.3.2"


def documented(module):
    return yaml.safe_load((REPO / "docs" / "modules" / ("%s.yml" % module)).read_text())["return"]


def undocumented(value, doc, path=""):
    """Paths of the keys in `value` (a dict) that `doc` (a RETURN mapping) does not document,
    recursing into documented keys that have `contains`."""
    out = []
    for key, v in value.items():
        if not path and key in RUNTIME_KEYS:
            continue
        where = path + key
        if key not in doc:
            out.append(where)
            continue
        sub = doc[key].get("contains") if isinstance(doc[key], dict) else None
        if not sub:
            continue
        if isinstance(v, dict):
            out += undocumented(v, sub, where + ".")
        elif isinstance(v, list):
            for i, item in enumerate(v):
                if isinstance(item, dict):
                    out += undocumented(item, sub, "%s[%d]." % (where, i))
    return out


def check(module, scenario, result):
    doc = documented(module)
    bad = undocumented(result, doc)
    if module == "deploy_patched_nova":
        for name, report in (result.get("containers") or {}).items():
            bad += ["containers.%s.%s" % (name, k) for k in report if k not in doc]
    # One line per key, deduplicated over list items.
    seen = sorted(set(bad))
    assert not seen, "%s (%s) returns keys its RETURN does not document (docs/modules/%s.yml):\n  %s\nresult: %s" % (
        module, scenario, module, "\n  ".join(seen), json.dumps(result)[:3000])


def run(run_module, module, scenario, args, **kw):
    rc, res = run_module(module, args, **kw)
    assert "module printed no JSON object" not in res.get("msg", ""), res
    check(module, scenario, res)
    return rc, res


def run_here(module, args, check_mode=False, diff=False):
    """library/<module> <args.json> on this machine, for the runs that need no lab; (rc, result)
    as lablib's run_module gives them."""
    import subprocess
    import tempfile
    a = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="args-%s-" % module, delete=False) as f:
        json.dump(a, f)
    try:
        r = subprocess.run([str(REPO / "library" / module), f.name], capture_output=True, text=True, timeout=600)
    finally:
        os.unlink(f.name)
    return lablib.module_result(r)


def test_the_checker_names_an_undocumented_key():
    doc = {"a": {"contains": {"b": {}}}, "c": {}}
    assert undocumented({"changed": True, "a": [{"b": 1, "x": 2}], "c": {"y": 1}, "z": 0}, doc) == ["a[0].x", "z"]
    assert undocumented({"a": {"b": 1}}, doc) == []


# --------------------------------------------------------------------------------------- numa_facts

def facts(lab, run_module, host, conf=None):
    rc, res = run(run_module, "numa_facts", "live " + host,
                  {"uri": lab.uri(host), "nova_conf": conf or lab.nova_conf(host), "host": host})
    assert rc == 0, res
    return res["ansible_facts"]["numa"]


def test_numa_facts_live(lab, run_module):
    for h in ("cmp1", "cmp2"):
        f = facts(lab, run_module, h)
        assert f["cells"] and f["guests"], f


def test_numa_facts_offline():
    saved = REPO / "tests" / "fixtures" / "saved"
    rc, res = run(run_here, "numa_facts", "offline dumps",
                  {"capabilities_file": str(saved / "caps-2s12c2t.xml"), "nova_conf": str(saved / "nova.conf"),
                   "domain_files": [str(p) for p in sorted(saved.glob("*-1.xml"))]})
    assert rc == 0 and res["ansible_facts"]["numa"]["topology_source"] == "saved", res


# ------------------------------------------------------------------------------------ pin_fit_check

def test_pin_fit_check_fits_refuses_guest_and_drain(lab, run_module):
    cmp1 = facts(lab, run_module, "cmp1")
    cmp2 = facts(lab, run_module, "cmp2", lab.hosts["cmp2"]["nova_conf_allcpus"])
    pinned = {"hw:cpu_policy": "dedicated"}
    rc, res = run(run_module, "pin_fit_check", "request fits",
                  {"host_facts": cmp2, "request": {"vcpus": 1, "memory_mb": 16, "extra_specs": pinned}})
    assert rc == 0, res
    rc, res = run(run_module, "pin_fit_check", "request does not fit",
                  {"host_facts": cmp2, "request": {"vcpus": 64, "memory_mb": 64, "extra_specs": pinned}})
    assert rc == 0 and res["fits"] is False and res["reasons"], res
    rc, res = run(run_module, "pin_fit_check", "no NUMA request",
                  {"host_facts": cmp2, "request": {"vcpus": 1, "memory_mb": 64}})
    assert rc == 0 and res["numa"] is False, res
    rc, res = run(run_module, "pin_fit_check", "existing guest, live hosts",
                  {"uri": lab.uri("cmp2"), "nova_conf": lab.hosts["cmp2"]["nova_conf_allcpus"],
                   "guest": "vm-taken", "source_uri": lab.uri("cmp1")})
    assert rc == 0 and "fits" in res, res
    # A drain with a guest of each skipped kind (the facts are edited here, the lab is not touched).
    src = copy.deepcopy(cmp1)
    if src["guests"]:
        g = src["guests"][0]
        off = dict(copy.deepcopy(g), name=g["name"] + "-off", uuid="6c1a9e10-0000-4000-8000-0000000000f1",
                   state="shutoff")
        floating = dict(copy.deepcopy(g), name=g["name"] + "-float", uuid="6c1a9e10-0000-4000-8000-0000000000f2",
                        vcpu_pins={})
        src["guests"] += [off, floating]
    rc, res = run(run_module, "pin_fit_check", "drain",
                  {"drain": {"sources": [src], "candidates": [cmp2], "max_parallel": 2}})
    assert rc == 0 and "plan" in res and len(res["skipped"]) >= 2, res
    # Thread policies from Nova's DB (read only): the seeded guest is in it; a copy under a uuid Nova does
    # not have gets a policy_note (guest mode) and a policy_notes entry (drain).
    db = {"db_nova_conf": lab.data["db"]["nova_conductor_conf"], "passwords_file": lab.data["db"]["passwords_file"]}
    rc, res = run(run_module, "pin_fit_check", "existing guest, policy from Nova's DB",
                  dict(db, uri=lab.uri("cmp2"), nova_conf=lab.hosts["cmp2"]["nova_conf_allcpus"], guest="vm-taken",
                       source_uri=lab.uri("cmp1")))
    assert rc == 0 and res["policy_source"] == "nova_db", res
    unknown = copy.deepcopy(cmp1)
    for g in unknown["guests"]:
        g["uuid"] = "6c1a9e10-0000-4000-8000-0000000000f3" if g["name"] == "vm-taken" else g["uuid"]
    rc, res = run(run_module, "pin_fit_check", "existing guest Nova's DB does not know",
                  dict(db, host_facts=cmp2, guest="vm-taken", source_facts=unknown))
    assert rc == 0 and res["policy_source"] == "assumed" and res["policy_note"], res
    rc, res = run(run_module, "pin_fit_check", "drain, policies from Nova's DB",
                  dict(db, drain={"sources": [unknown], "candidates": [cmp2]}))
    assert rc == 0 and res["policy_notes"], res


# ------------------------------------------------------------------------------------ repin_migrate

def test_repin_migrate_check_mode_refusals_and_repin(lab, run_module):
    conf = lab.hosts["cmp2"]["nova_conf_allcpus"]
    where = lab.guest_host("vm-taken")
    assert where, "the seeded guest vm-taken is on no host: tests/lab/lab.sh seed"
    other = "cmp2" if where == "cmp1" else "cmp1"
    rc, res = run(run_module, "repin_migrate", "migrate, check mode",
                  {"guest": "vm-taken", "source_uri": lab.uri(where), "dest_uri": lab.uri(other),
                   "dest_nova_conf": lab.hosts[other]["nova_conf_allcpus"]}, check_mode=True, diff=True)
    assert "placement" in res or "reasons" in res, res
    # vm-toobig (2 vCPUs) fits in no cell of cmp2: refused before anything moves (no claim in check mode).
    if lab.guest_host("vm-toobig") == "cmp1":
        rc, res = run(run_module, "repin_migrate", "refused for want of room, check mode",
                      {"guest": "vm-toobig", "source_uri": lab.uri("cmp1"), "dest_uri": lab.uri("cmp2"),
                       "dest_nova_conf": conf}, check_mode=True)
        assert rc != 0 and res["reasons"] and res["guest_on_source"] is True, res
    # mode repin of a guest that overlaps another on its host (the seeded vm-taken/vm-toobig on cmp1):
    # a plan, or a refusal saying why its placement is invalid.
    rc, res = run(run_module, "repin_migrate", "mode repin, check mode",
                  {"guest": "vm-taken", "mode": "repin", "source_uri": lab.uri(where),
                   "dest_nova_conf": lab.hosts[where]["nova_conf_allcpus"]}, check_mode=True, diff=True)
    assert "invalid_because" in res or "placement" in res, res


def test_repin_migrate_failed_and_real_migration_and_rerun(lab, fresh_guest, run_module):
    """A fresh guest of this test: a migration that fails (the destination's QEMU cannot listen on
    another host's address) and leaves it on the source; then moved for real (what only a real run
    returns: claim, migration, verify); then the rerun that finds it already there."""
    conf = lab.hosts["cmp2"]["nova_conf_allcpus"]
    cmp2 = facts(lab, run_module, "cmp2", conf)
    free = sorted(c for cells in cmp2["usage"]["free_cpus"].values() for c in cells)
    assert free, "cmp2 has no free pCPU for the test guest: tests/lab/lab.sh seed"
    g = fresh_guest("cmp1", [0])
    args = {"guest": g.name, "source_uri": lab.uri("cmp1"), "dest_uri": lab.uri("cmp2"), "dest_nova_conf": conf,
            "source_host": "cmp1", "dest_host": "cmp2", "verify_affinity": True,
            "migrate_uri": "tcp://" + lab.hosts["cmp2"]["migrate_address"]}
    rc, res = run(run_module, "repin_migrate", "failed migration",
                  dict(args, migrate_uri="tcp://" + lab.nodes["ctl27"]["address"]))
    assert rc != 0 and res["guest_on_source"] is True and "source_state" in res, res
    rc, res = run(run_module, "repin_migrate", "migrate", args)
    assert rc == 0 and res["changed"] and res["claim"]["released"] is True, res
    rc, res = run(run_module, "repin_migrate", "rerun, already on the destination", args)
    assert rc == 0 and not res["changed"] and "stale_source_copy" in res, res


# ------------------------------------------------------------------------------ nova_instance_fixup

def creds(lab):
    return {"nova_conf": lab.data["db"]["nova_conductor_conf"], "passwords_file": lab.data["db"]["passwords_file"]}


def test_nova_instance_fixup_check_mode_and_audit(lab, run_module, fresh_instance_rows):
    u = fresh_instance_rows("cmp1", [1])
    placement = {"cells": [{"guest_cell": 0, "host_cell": 0, "vcpus": [0], "vcpu_pins": {"0": 0}, "memory_mb": 64,
                            "pagesize_kb": None, "cpuset_reserved": []}], "emulator_pins": [0], "dedicated": True}
    fp = lab.db_fingerprint()
    rc, res = run(run_module, "nova_instance_fixup", "single instance, check mode",
                  dict(creds(lab), instance_uuid=u, dest_host="cmp2", placement=placement,
                       neutron_database="neutron"), check_mode=True, diff=True)
    assert rc == 0 and res["changed"] and res["before"], res
    hosts = [facts(lab, run_module, h) for h in ("cmp1", "cmp2")]
    rc, res = run(run_module, "nova_instance_fixup", "audit", dict(creds(lab), audit=True, hosts=hosts))
    assert rc == 0 and "drift" in res, res
    # fix in check mode, with a row Nova cannot load (c2-resident's Victoria+ row) and one it will
    # not repair (a compute node row)
    rows = [{"table": "instance_extra", "key": C2_RESIDENT,
             "error": "IncompatibleObjectVersion: Version 1.5 of InstanceNUMACell is not supported, "
                      "supported version is 1.4"},
            {"table": "compute_nodes", "key": "cmp2", "error": "IncompatibleObjectVersion"}]
    rc, res = run(run_module, "nova_instance_fixup", "audit with fix, check mode",
                  dict(creds(lab), audit=True, fix=True, hosts=hosts, repair_rows=rows), check_mode=True)
    assert rc == 0 and res["rows_not_repaired"], res
    assert lab.fingerprint_diff(fp, lab.db_fingerprint()) == {}, "check mode wrote nothing"


# ----------------------------------------------------------------------------- neutron_port_binding

def test_neutron_port_binding_check_mode_states_and_audit(lab, run_module):
    port = lab.port_of(TAKEN)
    bound = port["binding:host_id"]
    other = "cmp2" if bound == "cmp1" else "cmp1"
    base = {"instance_uuid": TAKEN, "kolla_config_dir": lab.data["neutron"]["kolla_config_dir"], "wait_active_s": 30}
    before = lab.port_bindings(port["id"])
    for state in ("prepared", "active", "rolled_back"):
        rc, res = run(run_module, "neutron_port_binding", state + ", check mode",
                      dict(base, state=state, host=other), check_mode=True, diff=True)
        assert rc == 0 and res["ports"] is not None, res
    audit = {"state": "audited", "guests": {TAKEN: other}, "fix": True,
             "kolla_config_dir": lab.data["neutron"]["kolla_config_dir"]}
    rc, res = run(run_module, "neutron_port_binding", "audited with fix, check mode", audit, check_mode=True)
    assert rc == 0 and res["mismatches"], res
    assert lab.port_bindings(port["id"]) == before, "check mode changed nothing"


# ------------------------------------------------------------------------------ deploy_patched_nova

def test_deploy_patched_nova_containers_check_mode(lab, run_module, tmp_path):
    containers = {"nova_conductor": ["conductor/", "db/", "numa_repin_patch.py"],
                  "nova_compute": ["compute/", "virt/", "numa_repin_patch.py"]}
    assert set(containers) <= set(lab.data["containers"]["names"]), lab.data["containers"]
    rc, res = run(run_module, "deploy_patched_nova", "containers, check mode",
                  {"containers": containers, "backup_dir": str(tmp_path / "backup")}, check_mode=True, diff=True)
    assert rc == 0 and res["containers"], res


def nova_tree(site):
    """The hooked files of PyPI's 19.3.2 wheel (the whole package is not needed, and is large), its
    package __init__ files and dist-info, under site; returns site/nova."""
    import zipfile
    want = set(nova_hooks.hooks())
    with zipfile.ZipFile(nova_hooks.wheel(RELEASE)) as z:
        names = [n for n in z.namelist() if ".dist-info/" in n
                 or (n.startswith("nova/") and (n[len("nova/"):] in want or n.endswith("/__init__.py")))]
        z.extractall(site, names)
    return Path(site) / "nova"


def test_deploy_patched_nova_path_apply_refusal_and_rollback(tmp_path):
    """A Nova tree of this test (the hooked files of PyPI's 19.3.2 wheel under tmp_path): check
    mode, apply, absent; a build whose anchor code changed (refused); a health gate that fails
    (rolled back)."""
    nova = nova_tree(tmp_path / "site")
    a = {"path": str(nova), "backup_dir": str(tmp_path / "backup"), "python": sys.executable,
         "health_import": False}
    rc, res = run(run_here, "deploy_patched_nova", "path, check mode", a, check_mode=True, diff=True)
    assert rc == 0 and res["changed"], res
    rc, res = run(run_here, "deploy_patched_nova", "path, apply", a)
    assert rc == 0 and res["changed"] and res["status"] == "patched", res
    rc, res = run(run_here, "deploy_patched_nova", "path, absent", dict(a, state="absent"))
    assert rc == 0 and res["status"] == "unpatched", res
    # Real Nova cannot import without its dependencies: the health gate fails and rolls back.
    rc, res = run(run_here, "deploy_patched_nova", "path, health gate fails", dict(a, health_import=True))
    assert rc != 0 and res["rolled_back"] is True and res["failed_step"], res
    # Changed code under an anchor: refused by hook name.
    mgr = nova / "compute" / "manager.py"
    old = "                instance.progress = 0\n                instance.save(expected_task_state=task_states.MIGRATING)\n"
    text = mgr.read_text()
    assert text.count(old) == 1
    mgr.write_text(text.replace(old, old.replace("instance.progress = 0", "instance.progress = 0  # vendor")))
    rc, res = run(run_here, "deploy_patched_nova", "path, refused", a)
    assert rc != 0 and res["refused"], res
