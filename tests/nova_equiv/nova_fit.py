#!/usr/bin/env python3
"""Run Nova 19.3.2's (Stein) own NUMA fit over generated cases.

Run with the Nova venv's python:
    $(tests/lab/venv.sh nova)/bin/python tests/nova_equiv/nova_fit.py cases.jsonl > nova.jsonl

For each case (see gen_cases.py) build Nova's objects, call
hardware.numa_get_constraints(flavor, image_meta) and then
hardware.numa_fit_instance_to_host(host, instance_topology) (no limits, no PCI, no network
metadata, exactly as the NUMATopologyFilter would without allocation ratios), and print one
JSON line:

  {"id", "numa": bool, "fits": bool, "fits_fresh": bool, "error": str|null,
   "emulator_threads_policy": str|null,
   "cells": [{"guest_cell": i, "host_cell": id, "vcpus": [..], "pins": {"0": 2, ..}|null,
              "cpuset_reserved": [..]|null, "pagesize": int|null, "memory": MiB,
              "cpu_policy": str|null, "cpu_thread_policy": str|null,
              "cpu_topology": [sockets, cores, threads]|null}],
   "ns": mean ns per decision (only with --timing)}

numa is false when numa_get_constraints returned None (no NUMA topology requested): such a
request fits any host as far as NUMA goes, so fits is true and cells is [].
error is "<ExceptionClassName>: <message>" when building the request (flavor, image meta,
constraints) raised; then numa and fits are false.
crash is set (and fits false) if numa_fit_instance_to_host itself raised.
fits_fresh (NUMA requests only): whether Nova's own cell fit finds a placement when each host
cell permutation starts from a fresh copy of the request (see fit_fresh): differs from fits only
where Nova's search is path-dependent.

--timing N repeats constraints+fit N times per case (fresh constraints each time, since the
fit mutates the instance cells) and reports the mean; the host/flavor/image objects are built
once, outside the timed region.
"""
from __future__ import print_function

import argparse
import json
import logging
import sys
import time
import warnings

warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)

from nova import objects  # noqa: E402

objects.register_all()
from nova.virt import hardware  # noqa: E402


def load_hardware(path):
    """Load another release's nova/virt/hardware.py (Queens 17.x, Rocky 18.x: `pip download
    --no-deps nova==17.0.13`, unzip) in place of Stein's, on Stein's objects. Queens's
    hardware.py calls NUMACell.can_fit_hugepages (renamed can_fit_pagesize in Rocky, which added
    use_free): it is provided with Queens's semantics (free pages)."""
    import importlib.util
    if not hasattr(objects.NUMACell, "can_fit_hugepages"):
        objects.NUMACell.can_fit_hugepages = (
            lambda self, pagesize, memory: self.can_fit_pagesize(pagesize, memory, use_free=True))
    spec = importlib.util.spec_from_file_location("nova.virt.hardware_alt", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_host(h):
    cells = []
    for c in h["cells"]:
        cells.append(objects.NUMACell(
            id=c["id"],
            cpuset=set(c["cpuset"]),
            memory=c["memory"],
            cpu_usage=c.get("cpu_usage", 0),
            memory_usage=c.get("memory_usage", 0),
            pinned_cpus=set(c.get("pinned_cpus", [])),
            siblings=[set(s) for s in c.get("siblings", [])],
            mempages=[objects.NUMAPagesTopology(
                size_kb=p["size_kb"], total=p["total"], used=p.get("used", 0),
                reserved=p.get("reserved", 0)) for p in c.get("mempages", [])],
            network_metadata=objects.NetworkMetadata(physnets=set(), tunneled=False)))
    return objects.NUMATopology(cells=cells)


def build_request(r):
    flavor = objects.Flavor(vcpus=r["vcpus"], memory_mb=r["memory_mb"],
                            extra_specs=dict(r.get("extra_specs", {})))
    image_meta = objects.ImageMeta.from_dict({"properties": dict(r.get("image_properties", {}))})
    return flavor, image_meta


def err(e):
    return "%s: %s" % (type(e).__name__, e)


def cell_out(i, cell):
    pins = None
    if cell.obj_attr_is_set("cpu_pinning_raw") and cell.cpu_pinning_raw is not None:
        pins = {str(k): int(v) for k, v in sorted(cell.cpu_pinning.items())}
    reserved = None
    if cell.obj_attr_is_set("cpuset_reserved") and cell.cpuset_reserved is not None:
        reserved = sorted(cell.cpuset_reserved)
    topo = None
    if cell.obj_attr_is_set("cpu_topology") and cell.cpu_topology is not None:
        t = cell.cpu_topology
        topo = [t.sockets, t.cores, t.threads]

    def opt(name):
        return getattr(cell, name) if cell.obj_attr_is_set(name) else None

    return {"guest_cell": i, "host_cell": cell.id, "vcpus": sorted(cell.cpuset),
            "pins": pins, "cpuset_reserved": reserved, "pagesize": opt("pagesize"),
            "memory": cell.memory, "cpu_policy": opt("cpu_policy"),
            "cpu_thread_policy": opt("cpu_thread_policy"), "cpu_topology": topo}


def fit_fresh(host, topo):
    """numa_fit_instance_to_host without its path dependence: every permutation starts from a
    fresh copy of the instance topology. Nova's loop reuses the instance cells, and
    _numa_fit_instance_cell overwrites a cell's requested pagesize (small/large/any) with the
    size chosen on the host cell it just tried, so a later permutation asks for that concrete
    size instead of the original request. This is only used to tell apart "Nova misses a fit
    because of that mutation" from a real difference; fits_fresh reports it."""
    import itertools
    from nova import exception
    for perm in itertools.permutations(host.cells, len(topo.cells)):
        inst = topo.obj_clone()
        ok = True
        for i, (hc, ic) in enumerate(zip(perm, inst.cells)):
            reserved = 1 if (inst.emulator_threads_isolated and i == 0) else 0
            try:
                got = hardware._numa_fit_instance_cell(hc, ic, None, reserved)
            except exception.MemoryPageSizeNotSupported:
                got = None
            if got is None:
                ok = False
                break
        if ok:
            return True
    return False


def decide(host, flavor, image_meta):
    """One decision: constraints + fit. Returns (numa, fitted_or_None) or raises."""
    topo = hardware.numa_get_constraints(flavor, image_meta)
    if topo is None:
        return False, None
    return True, hardware.numa_fit_instance_to_host(host, topo)


def run_case(case, repeats):
    out = {"id": case["id"], "numa": False, "fits": False, "error": None,
           "emulator_threads_policy": None, "cells": []}
    host = build_host(case["host"])
    try:
        flavor, image_meta = build_request(case["request"])
    except Exception as e:  # noqa: BLE001 - e.g. an invalid enum in the image properties
        out["error"] = err(e)
        if repeats:
            out["ns"] = time_it(lambda: _quiet(build_request, case["request"]), repeats)
        return out
    try:
        topo = hardware.numa_get_constraints(flavor, image_meta)
    except Exception as e:  # noqa: BLE001 - we report Nova's refusals by class name
        out["error"] = err(e)
        if repeats:
            out["ns"] = time_it(lambda: _quiet(decide, host, flavor, image_meta), repeats)
        return out
    if topo is None:
        out["fits"] = True
    else:
        out["numa"] = True
        try:
            fitted = hardware.numa_fit_instance_to_host(host, topo)
        except Exception as e:  # noqa: BLE001
            out["crash"] = err(e)
            fitted = None
        try:
            out["fits_fresh"] = fit_fresh(host, hardware.numa_get_constraints(flavor, image_meta))
        except Exception as e:  # noqa: BLE001
            out["fits_fresh"] = None
        if fitted is not None:
            out["fits"] = True
            out["emulator_threads_policy"] = (fitted.emulator_threads_policy
                                              if fitted.obj_attr_is_set("emulator_threads_policy")
                                              else None)
            out["cells"] = [cell_out(i, c) for i, c in enumerate(fitted.cells)]
        elif topo.obj_attr_is_set("emulator_threads_policy"):
            out["emulator_threads_policy"] = topo.emulator_threads_policy
    if repeats:
        out["ns"] = time_it(lambda: _quiet(decide, host, flavor, image_meta), repeats)
    return out


def _quiet(fn, *args):
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001
        return None


def time_it(fn, repeats):
    fn()  # warm
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return int((time.perf_counter() - t0) / repeats * 1e9)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Nova 19.3.2 NUMA fit over cases (JSON lines)")
    ap.add_argument("cases", nargs="?", default="-")
    ap.add_argument("-o", "--output", default="-")
    ap.add_argument("--timing", type=int, default=0, metavar="N",
                    help="repeat each decision N times and emit its mean as ns")
    ap.add_argument("--hardware", metavar="FILE",
                    help="use this nova/virt/hardware.py (e.g. Queens 17.0.13's) instead of Stein's")
    args = ap.parse_args(argv)
    if args.hardware:
        global hardware
        hardware = load_hardware(args.hardware)
    inp = sys.stdin if args.cases == "-" else open(args.cases)
    out = sys.stdout if args.output == "-" else open(args.output, "w")
    n = fits = nofit = errors = nonuma = crashes = 0
    total_ns = 0
    for line in inp:
        line = line.strip()
        if not line:
            continue
        case = json.loads(line)
        res = run_case(case, args.timing)
        out.write(json.dumps(res, sort_keys=False, separators=(",", ":")) + "\n")
        n += 1
        if res["error"]:
            errors += 1
        elif res.get("crash"):
            crashes += 1
        elif not res["numa"]:
            nonuma += 1
        elif res["fits"]:
            fits += 1
        else:
            nofit += 1
        total_ns += res.get("ns", 0)
    if out is not sys.stdout:
        out.close()
    summary = {"cases": n, "fit": fits, "no_fit": nofit, "request_error": errors,
               "no_numa": nonuma, "crash": crashes}
    if args.timing and n:
        summary["mean_ns_per_decision"] = total_ns // n
    print("nova_fit: " + json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
