"""numa_facts and pin_fit_check as Ansible runs them: binaries in library/, JSON args file in,
one JSON object out. No lab needed: saved virsh output (the live path is tested against the lab in
test_lab.py; libvirt's test driver is gone with libvirt's C library, and `test://` URIs are refused clearly)."""
import json
import os
import resource
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "library"
FIX = REPO / "tests" / "fixtures"
TD1 = FIX / "saved" / "td1"
TD1_ARGS = {"capabilities_file": str(TD1 / "caps.xml"),
            "domain_files": [str(TD1 / f"pinned-{x}.xml") for x in "abc"]}


MEM_LIMIT = 512 << 20  # address space of a module run on bad input (issue 15)


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))


def module(name, args, raw=None, limit_memory=False):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(raw if raw is not None else json.dumps(args))
    try:
        p = subprocess.run([str(LIB / name), f.name], capture_output=True, text=True, timeout=60,
                           preexec_fn=_limit_memory if limit_memory else None)
    finally:
        os.unlink(f.name)
    assert p.returncode >= 0, f"{name} killed by signal {-p.returncode}: {p.stderr[-2000:]}"
    # Exactly one JSON object on stdout, nothing that looks like a trace anywhere.
    out = json.loads(p.stdout)
    assert "panicked" not in p.stdout + p.stderr and "RUST_BACKTRACE" not in p.stderr, p.stderr
    return p.returncode, out


def test_playbook_end_to_end():
    env = dict(os.environ, ANSIBLE_LIBRARY=str(LIB), ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    p = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", str(REPO / "tests/playbooks/foundation.yml")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "failed=0" in p.stdout and "changed=0" in p.stdout


def test_check_mode_changes_nothing_and_says_so():
    rc, out = module("numa_facts", dict(TD1_ARGS, _ansible_check_mode=True))
    assert rc == 0 and out["changed"] is False and out["check_mode"] is True
    assert len(out["ansible_facts"]["numa"]["guests"]) == 3


@pytest.mark.parametrize("name", ["numa_facts", "pin_fit_check"])
def test_schema_lists_every_argument(name):
    p = subprocess.run([str(LIB / name), "--schema"], capture_output=True, text=True, check=True)
    schema = json.loads(p.stdout)
    assert schema["type"] == "object" and schema["properties"]
    rc, out = module(name, {"definitely_not_an_arg": 1})
    assert rc == 1 and out["failed"]
    for prop in schema["properties"]:
        assert prop in out["msg"]


@pytest.mark.parametrize("raw,expect", [
    ("{not json", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ('{"uri": 5}', "argument 'uri'"),
    ('{"domain_files": "x"}', "argument 'domain_files'"),
])
def test_malformed_and_mistyped_args(raw, expect):
    rc, out = module("numa_facts", None, raw=raw)
    assert rc == 1 and out["failed"] and expect in out["msg"], out


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("doc,expect", [
    ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]><capabilities>&b;</capabilities>', "DOCTYPE"),
    ('<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/shadow">]><capabilities><host>&e;</host></capabilities>', "DOCTYPE"),
    ("<capabilities><host><topology><cells num='1'><cell id='0'>", "capabilities XML"),
    ("<capabilities><host><topology><cells><cell id='zero'/></cells></topology></host></capabilities>", "not a valid number"),
    ("", "empty XML"),
])
def test_hostile_and_truncated_capabilities(tmp_path, doc, expect):
    rc, out = module("numa_facts", {"capabilities_file": write(tmp_path, "caps.xml", doc)})
    assert rc == 1 and out["failed"] and expect in out["msg"], out
    assert "/etc/shadow" not in json.dumps(out.get("ansible_facts", {}))


def test_hostile_guest_is_reported_not_expanded(tmp_path):
    bomb = '<!DOCTYPE d [<!ENTITY a "x">]><domain><name>&a;</name></domain>'
    rc, out = module("numa_facts", {"capabilities_file": str(FIX / "saved/caps-2s12c2t.xml"),
                                    "domain_files": [write(tmp_path, "evil.xml", bomb), str(FIX / "saved/web-1.xml")]})
    assert rc == 0, out
    assert [g["name"] for g in out["ansible_facts"]["numa"]["guests"]] == ["web-1"]
    assert "DOCTYPE" in out["warnings"][0]


def test_missing_files_and_hosts_fail_clearly(tmp_path):
    rc, out = module("numa_facts", {"capabilities_file": str(tmp_path / "nope.xml")})
    assert rc == 1 and "cannot read" in out["msg"] and "nope.xml" in out["msg"]
    rc, out = module("numa_facts", {"uri": "qemu+tcp://127.0.0.1:1/system"})
    assert rc == 1 and "cannot connect to libvirt at qemu+tcp://127.0.0.1:1/system" in out["msg"]
    rc, out = module("numa_facts", dict(TD1_ARGS, nova_conf=str(tmp_path / "none.conf")))
    assert rc == 1 and "none.conf" in out["msg"]
    rc, out = module("numa_facts", {"uri": "qemu+unix:///system?socket=" + str(tmp_path / "no-sock")})
    assert rc == 1 and "socket " + str(tmp_path / "no-sock") in out["msg"], out
    rc, out = module("numa_facts", {"uri": "test:///default"})
    assert rc == 1 and "test driver" in out["msg"] and "capabilities_file" in out["msg"], out


def test_pin_fit_check_bad_requests():
    rc, facts = module("numa_facts", {"capabilities_file": str(FIX / "saved/caps-2s12c2t.xml")})
    host = facts["ansible_facts"]["numa"]
    rc, out = module("pin_fit_check", {"host_facts": host, "request": {"vcpus": 2, "memory_mb": 64, "extra_specs": {"hw:cpu_policy": "shared", "hw:cpu_thread_policy": "isolate"}}})
    assert rc == 1 and "CPUThreadPolicyConfigurationInvalid" in out["msg"]
    rc, out = module("pin_fit_check", {"request": {"vcpus": 2, "memory_mb": 64}})
    assert rc == 1 and "target host is missing" in out["msg"]
    rc, out = module("pin_fit_check", {"host_facts": host, "guest": "ghost", "source_facts": host})
    assert rc == 1 and "no guest 'ghost'" in out["msg"]
    rc, out = module("pin_fit_check", {"host_facts": {"host": "x"}, "request": {"vcpus": 1, "memory_mb": 1}})
    assert rc == 1 and "argument 'host_facts" in out["msg"]
    rc, out = module("pin_fit_check", {"host_facts": host, "request": {"vcpus": 1, "memory_mb": 64}})
    assert rc == 0 and out["fits"] and out["numa"] is False


def test_drain_plan_leaves_unpinned_guests_to_nova(tmp_path):
    floating = tmp_path / "floating.xml"
    floating.write_text("<domain type='kvm'><name>float-1</name><uuid>6f1b6a7e-1d1a-4b8e-9e44-0e8b3f6c0a09</uuid>"
                        "<memory unit='MiB'>512</memory><vcpu placement='static' cpuset='2-23'>2</vcpu></domain>")
    rc, src = module("numa_facts", {"capabilities_file": str(FIX / "saved/caps-2s12c2t.xml"), "host": "src",
                                    "domain_files": [str(FIX / "saved/web-1.xml"), str(floating)]})
    rc, dst = module("numa_facts", {"capabilities_file": str(FIX / "saved/caps-2s12c2t.xml"), "host": "dst"})
    rc, out = module("pin_fit_check", {"drain": {"sources": [src["ansible_facts"]["numa"]], "candidates": [dst["ansible_facts"]["numa"]]}})
    assert rc == 0, out
    assert [m["guest"] for m in out["plan"]["moves"]] == ["web-1"]
    assert [s["guest"] for s in out["skipped"]] == ["float-1"] and "not pinned" in out["skipped"][0]["reason"]
    # A shut-off guest cannot be live-migrated, and a uuid defined on two hosts (a stale copy) must be
    # resolved first: both are skipped with the reason, not planned.
    s = json.loads(json.dumps(src["ansible_facts"]["numa"]))
    web = next(g for g in s["guests"] if g["name"] == "web-1")
    web["state"] = "shutoff"
    rc, out = module("pin_fit_check", {"drain": {"sources": [s], "candidates": [dst["ansible_facts"]["numa"]]}})
    assert rc == 0 and out["plan"]["moves"] == [], out
    assert any(k["guest"] == "web-1" and k["reason"].startswith("shutoff: live migration needs a running guest")
               for k in out["skipped"]), out
    d = json.loads(json.dumps(dst["ansible_facts"]["numa"]))
    d["guests"] = [dict(web, state="running")]
    web["state"] = "unknown"
    rc, out = module("pin_fit_check", {"drain": {"sources": [s], "candidates": [d]}})
    assert rc == 0 and out["plan"]["moves"] == [], out
    assert any(k["guest"] == "web-1" and "defined on src and dst" in k["reason"] for k in out["skipped"]), out


def refused(name, args, field):
    """The module refuses `args` cleanly under a 512 MiB address-space limit: a normal exit, one
    JSON object, failed, a message naming `field`, and no panic (a caught panic is a defect)."""
    rc, out = module(name, args, limit_memory=True)
    assert rc == 1 and out["failed"] is True, out
    assert field in out["msg"], out
    assert "panic" not in out["msg"].lower() and "internal error" not in out["msg"], out
    return out


@pytest.fixture(scope="module")
def host_facts():
    rc, out = module("numa_facts", {"capabilities_file": str(FIX / "saved/caps-2s12c2t.xml")})
    assert rc == 0, out
    return out["ansible_facts"]["numa"]


def test_pin_fit_check_bounds(host_facts):
    dedicated = {"hw:cpu_policy": "dedicated"}
    refused("pin_fit_check", {"host_facts": host_facts, "request": {"vcpus": 4294967295, "memory_mb": 64,
                                                                   "extra_specs": dedicated}}, "request.vcpus")
    refused("pin_fit_check", {"host_facts": host_facts, "request": {"vcpus": 4, "memory_mb": 4096,
                                                                   "extra_specs": {"hw:numa_nodes": "4294967295"}}},
            "hw:numa_nodes")
    refused("pin_fit_check", {"host_facts": host_facts, "request": {"vcpus": 2, "memory_mb": 4096,
                                                                   "image_properties": {"hw_numa_nodes": 4294967295}}},
            "hw_numa_nodes")
    refused("pin_fit_check", {"host_facts": host_facts, "request": {"vcpus": 2, "memory_mb": 2 ** 64 - 1}},
            "request.memory_mb")
    zero_page = json.loads(json.dumps(host_facts))
    zero_page["cells"][0]["pages"][0]["size_kb"] = 0
    refused("pin_fit_check", {"host_facts": zero_page, "request": {"vcpus": 2, "memory_mb": 64, "extra_specs": dedicated}},
            "host_facts.cells[0].pages[0].size_kb")
    huge_cpu = json.loads(json.dumps(host_facts))
    huge_cpu["cells"][0]["cpus"][0]["id"] = 4294967295
    refused("pin_fit_check", {"drain": {"sources": [], "candidates": [huge_cpu]}}, "drain.candidates[0].cells[0].cpus[0].id")
    refused("pin_fit_check", {"uri": "qemu:///sys\0tem", "request": {"vcpus": 1, "memory_mb": 64}}, "'uri'")
    refused("pin_fit_check", {"drain": {"sources": [], "candidates": [], "max_parallel": 0}}, "drain.max_parallel")
    refused("pin_fit_check", {"drain": {"sources": [], "candidates": [], "max_parallel_per_dest": 17}},
            "drain.max_parallel_per_dest")


@pytest.mark.parametrize("steps", [1099511627776, 2 ** 64 - 1])
def test_repin_migrate_downtime_steps_bound(steps):
    refused("repin_migrate", {"guest": "g", "source_uri": "qemu+tcp://127.0.0.1:1/system",
                              "dest_uri": "qemu+tcp://127.0.0.2:1/system", "downtime_steps": steps}, "downtime_steps")


@pytest.mark.parametrize("args,field", [
    ({"lock_timeout_s": 86401}, "lock_timeout_s"),
    ({"claim_lease_s": 2 ** 64 - 1}, "claim_lease_s"),
    ({"progress_timeout_s": 10 ** 9}, "progress_timeout_s"),
    ({"completion_timeout_s": 604801}, "completion_timeout_s"),
    ({"bandwidth_mibps": 2 ** 40}, "bandwidth_mibps"),
    ({"lock_dir": "run/lock"}, "lock_dir"),
    ({"lock_dir": "/run/../etc"}, "lock_dir"),
    ({"source_uri": "qemu+tcp://127.0.0.1\0:1/system"}, "source_uri"),
    ({"dest_uri": "qemu:///sys\0tem"}, "dest_uri"),
    ({"guest": "g\0"}, "guest"),
])
def test_repin_migrate_paths_and_nul(args, field):
    base = {"guest": "g", "source_uri": "qemu+tcp://127.0.0.1:1/system", "dest_uri": "qemu+tcp://127.0.0.2:1/system"}
    refused("repin_migrate", dict(base, **args), field)


@pytest.mark.parametrize("args,field", [
    ({"backup_dir": "backups"}, "backup_dir"),
    ({"backup_dir": "/var/lib/../../etc"}, "backup_dir"),
    ({"path": "/opt/nova\0"}, "path"),
])
def test_deploy_patched_nova_paths_and_nul(tmp_path, args, field):
    refused("deploy_patched_nova", dict({"patch_dir": str(tmp_path)}, **args), field)


def test_numa_facts_nul_in_uri():
    refused("numa_facts", {"uri": "qemu:///sys\0tem"}, "'uri'")
    refused("numa_facts", {"uri": "qemu+tcp://127.0.0.1:1/system", "nova_conf": "/etc/nova\0.conf"}, "nova_conf")


CAPS = (FIX / "saved/caps-2s12c2t.xml").read_text() if (FIX / "saved/caps-2s12c2t.xml").exists() else ""


@pytest.mark.parametrize("old,new,expect", [
    ("size='2048'", "size='0'", "<pages size='0'>: a page size of 0"),
    ("size='2048'", "size='1000'", "not a power of two"),
    ("<memory unit='KiB'>", "<memory unit='KB'>18446744073709551615", "memory value 18446744073709551615 KB"),
    ("<memory unit='KiB'>", "<memory unit='EB'>18446744073709551615", "overflows"),
])
def test_capabilities_sizes_are_checked(tmp_path, old, new, expect):
    assert old in CAPS
    doc = CAPS.replace(old, new, 1)
    if new.startswith("<memory"):  # the value follows the tag: drop the original number
        i = doc.index(new) + len(new)
        doc = doc[:i] + doc[doc.index("<", i):]
    refused("numa_facts", {"capabilities_file": write(tmp_path, "caps.xml", doc)}, expect)


@pytest.mark.parametrize("old,new,expect", [
    ("<page size='1048576'", "<page size='0'", "<page size='0'>: a page size of 0"),
    ("<currentMemory unit='KiB'>2097152", "<currentMemory unit='KB'>18446744073709551615", "memory value"),
    ("<currentMemory unit='KiB'>2097152", "<currentMemory unit='EB'>18446744073709551615", "overflows"),
    ("<currentMemory unit='KiB'>2097152", "<currentMemory unit='EiB'>1", "more than"),
])
def test_guest_sizes_are_checked(tmp_path, old, new, expect):
    """A guest XML with a bad size is reported unreadable (as any bad guest), never counted."""
    dom = (FIX / "saved/db-1.xml").read_text()
    assert old in dom
    rc, out = module("numa_facts", {"capabilities_file": str(FIX / "saved/caps-2s12c2t.xml"),
                                    "domain_files": [write(tmp_path, "vm.xml", dom.replace(old, new, 1))]},
                     limit_memory=True)
    assert rc == 0 and out["ansible_facts"]["numa"]["guests"] == [], out
    assert expect in out["ansible_facts"]["numa"]["unreadable_guests"][0], out
    assert "panic" not in json.dumps(out).lower()


@pytest.mark.parametrize("arg", ["capabilities_file", "domain_files", "nova_conf"])
def test_oversized_files_are_refused_unread(tmp_path, arg):
    """A 50 MB file is refused by its size, before it is read (the module stays under 512 MiB)."""
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(50 << 20)
    args = {"capabilities_file": str(FIX / "saved/caps-2s12c2t.xml")}
    args[arg] = [str(big)] if arg == "domain_files" else str(big)
    out = refused("numa_facts", args, arg if arg != "nova_conf" else "nova.conf")
    assert "more than the 4194304 accepted" in out["msg"], out
