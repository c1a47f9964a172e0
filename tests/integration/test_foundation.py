"""numa_facts and pin_fit_check as Ansible runs them: binaries in library/, JSON args file in,
one JSON object out. No lab needed: saved virsh output (the live path is tested against the lab in
test_lab.py; libvirt's test driver is gone with libvirt's C library, and `test://` URIs are refused clearly)."""
import json
import os
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


def module(name, args, raw=None):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(raw if raw is not None else json.dumps(args))
    try:
        p = subprocess.run([str(LIB / name), f.name], capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(f.name)
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
