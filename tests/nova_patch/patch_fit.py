#!/usr/bin/env python3
"""Run the in-band Nova patch's fit (roles/nova_patch/src/numa_repin_patch.fit) over generated
cases (tests/nova_equiv/gen_cases.py).

Run with the Nova venv's python (Nova 19.3.2, Python 3.7):
    $(tests/lab/venv.sh nova)/bin/python tests/nova_patch/patch_fit.py cases.jsonl -o patch.jsonl

Hosts and requests are built with tests/nova_equiv/nova_fit.py's builders (build_host,
build_request; the request goes through hardware.numa_get_constraints as the scheduler's does).
The host is handed to the patch as JSON, the form compute_nodes.numa_topology holds (what
check_destination and claim_on_destination pass); --host-object passes the NUMATopology
object instead. One JSON line per case:

  {"id", "numa": bool, "fits": bool, "message": str|null, "error": str|null,
   "crash": str (only if the patch raised anything but NoNumaAvailable),
   "fits_fresh": bool|null (NUMA requests: nova_fit.fit_fresh, Nova's search without its
                            path dependence),
   "emulator_threads_policy": str|null, "cells": [nova_fit.cell_out(...), ...],
   "placement": patch.placement_from_topology(fitted) (pinned fits only: what the patch's XML
                rewrite and log use; pins keys as strings) | "placement_error": str}

numa is false (fits true, nothing asked of the patch) when numa_get_constraints returned None;
error is set (numa and fits false) when building the request raised. message is str() of the
NoNumaAvailable the patch raised ("No numa available with N vcpu and M memory (...)"). cells
is in nova_fit.py's output shape, so tests/nova_equiv/check_placement.py validates it; except
that pins {} is reported as null: the patch clears the request's host pinning with Nova's
InstanceNUMACell.clear_host_pinning, which sets cpu_pinning = {} on every cell, so an unpinned
(shared) cell comes back with an empty mapping where numa_get_constraints leaves None. (The
in-band hooks only call fit() for pinned instances.)
"""
from __future__ import print_function

import argparse
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PATCH = os.path.join(REPO, "roles", "nova_patch", "src", "numa_repin_patch.py")

sys.path.insert(0, os.path.join(REPO, "tests", "nova_equiv"))
import nova_fit  # noqa: E402  (imports Nova and registers its objects)
from nova_fit import hardware, objects  # noqa: E402,F401


def load_patch(path=PATCH):
    spec = importlib.util.spec_from_file_location("numa_repin_patch", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


patch = load_patch()


def host_json(host):
    from oslo_serialization import jsonutils
    return jsonutils.dumps(host.obj_to_primitive())


def run_case(case, host_object=False):
    out = {"id": case["id"], "numa": False, "fits": False, "message": None, "error": None,
           "fits_fresh": None, "emulator_threads_policy": None, "cells": []}
    host = nova_fit.build_host(case["host"])
    try:
        flavor, image_meta = nova_fit.build_request(case["request"])
        topo = hardware.numa_get_constraints(flavor, image_meta)
    except Exception as e:  # noqa: BLE001 - Nova refuses the request itself
        out["error"] = nova_fit.err(e)
        return out
    if topo is None:
        out["fits"] = True
        return out
    out["numa"] = True
    try:
        fitted = patch.fit(host if host_object else host_json(host), topo)
    except patch.NoNumaAvailable as e:
        out["message"] = str(e)
        fitted = None
    except Exception as e:  # noqa: BLE001
        out["crash"] = nova_fit.err(e)
        fitted = None
    try:
        out["fits_fresh"] = nova_fit.fit_fresh(
            host, hardware.numa_get_constraints(flavor, image_meta))
    except Exception:  # noqa: BLE001
        out["fits_fresh"] = None
    if fitted is not None:
        out["fits"] = True
        if fitted.obj_attr_is_set("emulator_threads_policy"):
            out["emulator_threads_policy"] = fitted.emulator_threads_policy
        out["cells"] = [nova_fit.cell_out(i, c) for i, c in enumerate(fitted.cells)]
        for c in out["cells"]:
            if c["pins"] == {}:
                c["pins"] = None  # clear_host_pinning's {} on an unpinned cell, see above
        if any(c["pins"] for c in out["cells"]):
            try:
                out["placement"] = [dict(p, pins={str(k): v for k, v in sorted(p["pins"].items())})
                                    for p in patch.placement_from_topology(fitted)]
            except Exception as e:  # noqa: BLE001
                out["placement_error"] = nova_fit.err(e)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="numa_repin_patch.fit over cases (JSON lines)")
    ap.add_argument("cases", nargs="?", default="-")
    ap.add_argument("-o", "--output", default="-")
    ap.add_argument("--host-object", action="store_true",
                    help="pass the host as a NUMATopology object, not as its JSON")
    args = ap.parse_args(argv)
    inp = sys.stdin if args.cases == "-" else open(args.cases)
    out = sys.stdout if args.output == "-" else open(args.output, "w")
    counts = {"cases": 0, "fit": 0, "no_fit": 0, "request_error": 0, "no_numa": 0, "crash": 0}
    for line in inp:
        line = line.strip()
        if not line:
            continue
        res = run_case(json.loads(line), args.host_object)
        out.write(json.dumps(res, separators=(",", ":")) + "\n")
        counts["cases"] += 1
        key = ("request_error" if res["error"] else "crash" if res.get("crash") else
               "no_numa" if not res["numa"] else "fit" if res["fits"] else "no_fit")
        counts[key] += 1
    if out is not sys.stdout:
        out.close()
    print("patch_fit: " + json.dumps(counts), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
