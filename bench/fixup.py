#!/usr/bin/env python3
"""Benchmark: nova_instance_fixup audit + fix of N instances (default 1,000) in the lab's real
Nova DB. Rows are generated (Nova-format numa_topology saying cmp1, pCPU 1); the facts passed
to the audit say each guest runs on cmp2 pinned to pCPU 0 (synthetic guest entries on cmp2's
real facts: the lab cannot run 1,000 guests), so every instance has drifted and is fixed in
its own transaction. Prints the module's wall time; goal < 2 s. Rows are removed afterwards.

    python3 bench/fixup.py [N]
"""
import copy
import json
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/integration"))
import lablib  # noqa: E402


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    lab = lablib.Lab.load()
    conn = lab.connect_db(autocommit=False)
    uuids = [str(uuidlib.uuid4()) for _ in range(n)]
    t0 = time.time()
    for u in uuids:
        lab.insert_instance_rows(conn, "cmp1", [1], uuid=u, port=True)
    print(f"generated {n} instances in {time.time() - t0:.1f} s")
    try:
        rc, f = lab.run_module("numa_facts", {"uri": lab.uri("cmp2"), "nova_conf": lab.nova_conf("cmp2"), "host": "cmp2"})
        facts = f["ansible_facts"]["numa"]
        template = {"name": "", "uuid": "", "state": "running", "vcpus": 1, "memory_mb": 64, "vcpu_pins": {"0": [0]},
                    "emulator_pins": [0], "numa_cells": [{"id": 0, "vcpus": [0], "memory_mb": 64, "host_nodes": [0]}],
                    "memory_nodes": [0], "hugepage_kb": None, "nova": None}
        facts["guests"] = []
        for u in uuids:
            g = copy.deepcopy(template)
            g["name"], g["uuid"] = "b-" + u[:8], u
            facts["guests"].append(g)
        args = {"audit": True, "fix": True, "hosts": [facts], "nova_conf": lab.data["db"]["nova_conductor_conf"],
                "passwords_file": lab.data["db"]["passwords_file"]}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump(args, fh)
        t0 = time.perf_counter()
        p = subprocess.run([str(REPO / "library/nova_instance_fixup"), fh.name], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        res = json.loads(p.stdout)
        fixed = len(res.get("fixed", []))
        print(f"audit + fix of {n} instances: {wall:.2f} s wall ({fixed} fixed, {len(res.get('drift', []))} drifted), goal < 2 s: "
              f"{'met' if wall < 2 else 'NOT met'}")
        assert p.returncode == 0 and fixed == n, res.get("msg")
    finally:
        for u in uuids:
            lab.delete_instance_rows(conn, u)
        conn.close()


if __name__ == "__main__":
    main()
