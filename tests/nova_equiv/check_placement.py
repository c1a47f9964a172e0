#!/usr/bin/env python3
"""Validate placements (Nova's or ours) against their cases. Plain Python 3, no deps.

    check_placement.py cases.jsonl results.jsonl [--quiet] [--max-print N]

results.jsonl is nova_fit.py's output format (examples/fit_bench.rs prints the same):
  {"id", "numa", "fits", "error", "emulator_threads_policy", "cells": [{"guest_cell",
   "host_cell", "vcpus", "pins" | null, "cpuset_reserved" | null, "pagesize" | null, "memory",
   "cpu_thread_policy", ...}]}

Only fitted NUMA placements are checked. The rules (a placement is valid when it would not
oversubscribe anything Nova accounts for, and honours the request's policies):
  cells      each guest cell on a distinct, existing host cell; guest cells cover vCPUs
             0..vcpus-1 exactly once and their memory sums to memory_mb
  cpus       pins (when pinned) map every vCPU of the cell; pCPUs distinct, in the host
             cell's cpuset, not in pinned_cpus; cpuset_reserved likewise and disjoint from pins;
             vCPUs + reserved <= len(cpuset)
  policy     dedicated -> pinned; shared -> not pinned
  emulator   emulator_threads_policy=isolate (dedicated) -> exactly one reserved pCPU, on the
             host cell of guest cell 0; otherwise none
  memory     pinned: memory <= memory - memory_usage; chosen pagesize: the pool exists,
             memory*1024 is a multiple of the size and <= free pages*size (free =
             total-used-reserved); no pagesize: memory*1024 <= smallest pool total*size (Nova
             lets small pages overcommit), or memory <= cell memory without page pools
  pagesize   honours the request: small -> the smallest pool; large -> not the smallest;
             an explicit size -> that size; none requested -> none chosen
  isolate    each used core (sibling set) is a whole core (threads_per_core threads), all of
             them free, one vCPU per core; the reserved pCPU is on another core
  require    SMT only (threads_per_core > 1); the vCPUs sit in sibling groups: at most one
             used core holds a single vCPU of the cell (with 2 threads per core: only when the
             cell's vCPU count is odd)
Exit status 1 when any placement is invalid.
"""
import argparse
import collections
import re
import sys

from compare import load  # noqa: E402  (one reader of the JSON-lines files, by case id)


def page_request(req):
    """The page size request after Nova's flavor/image rules (None, 'small', 'large', 'any' or
    KiB), assuming the request was accepted (no error)."""
    f = req.get("extra_specs", {}).get("hw:mem_page_size")
    i = req.get("image_properties", {}).get("hw_mem_page_size")

    def parse(v):
        v = str(v)
        if v in ("small", "large", "any"):
            return v
        if re.fullmatch(r"\d+", v):
            return int(v)
        m = re.fullmatch(r"(\d+)\s*([KMGT])i?B?", v, re.I)
        if m:
            n = int(m.group(1))
            mult = {"K": 1, "M": 1024, "G": 1024 * 1024, "T": 1024 ** 3}[m.group(2).upper()]
            return n * mult
        return None

    if not f:
        return None
    p = parse(f)
    if i and p in ("any", "large"):
        return parse(i)
    return p


def policies(req):
    spec = req.get("extra_specs", {})
    img = req.get("image_properties", {})
    fp, ip = spec.get("hw:cpu_policy"), img.get("hw_cpu_policy")
    # (a flavor value other than dedicated/shared is refused from Stein on; Rocky and Queens fall
    # through to the image's policy, as here)
    dedicated = fp == "dedicated" or (fp != "shared" and ip == "dedicated")
    ft, it = spec.get("hw:cpu_thread_policy"), img.get("hw_cpu_thread_policy")
    thread = (ft or it) if ft in (None, "prefer") else ft
    emu = spec.get("hw:emulator_threads_policy")
    return dedicated, thread, emu


def check(case, res):
    """Return a list of (rule, message) violations."""
    errs = []
    if not res.get("fits") or not res.get("numa"):
        return errs
    host = {c["id"]: c for c in case["host"]["cells"]}
    req = case["request"]
    dedicated, thread, emu = policies(req)
    preq = page_request(req)
    cells = res.get("cells") or []

    def bad(rule, msg):
        errs.append((rule, msg))

    # cells
    seen_host = set()
    all_vcpus = []
    total_mem = 0
    for c in cells:
        if c["host_cell"] not in host:
            bad("cells", "host cell %s does not exist" % c["host_cell"])
            return errs
        if c["host_cell"] in seen_host:
            bad("cells", "two guest cells on host cell %s" % c["host_cell"])
        seen_host.add(c["host_cell"])
        all_vcpus.extend(c["vcpus"])
        total_mem += c["memory"]
    if sorted(all_vcpus) != list(range(req["vcpus"])):
        bad("cells", "guest cells cover vCPUs %s, not 0..%d" % (sorted(all_vcpus), req["vcpus"] - 1))
    if total_mem != req["memory_mb"]:
        bad("cells", "guest cell memory sums to %d, not %d" % (total_mem, req["memory_mb"]))

    reserved_total = []
    for c in cells:
        h = host[c["host_cell"]]
        cpuset = set(h["cpuset"])
        pinned = set(h["pinned_cpus"])
        free = cpuset - pinned
        siblings = [set(s) for s in h["siblings"]]
        tpc = max([len(s) for s in siblings] or [1]) or 1
        pins = c.get("pins")
        reserved = c.get("cpuset_reserved") or []
        reserved_total.extend((c["guest_cell"], r) for r in reserved)
        tag = "guest cell %d on host cell %d" % (c["guest_cell"], c["host_cell"])

        # policy
        if dedicated and pins is None:
            bad("policy", "%s: dedicated but not pinned" % tag)
        if not dedicated and pins:
            bad("policy", "%s: shared but pinned" % tag)
        pcpus = []
        if pins is not None:
            if sorted(int(k) for k in pins) != sorted(c["vcpus"]):
                bad("cpus", "%s: pins %s do not map vCPUs %s" % (tag, pins, c["vcpus"]))
            pcpus = list(pins.values())
            if len(set(pcpus)) != len(pcpus):
                bad("cpus", "%s: a pCPU is pinned twice: %s" % (tag, pins))
            for p in pcpus:
                if p not in cpuset:
                    bad("cpus", "%s: pCPU %d not in cpuset" % (tag, p))
                elif p in pinned:
                    bad("cpus", "%s: pCPU %d already pinned" % (tag, p))
        for r in reserved:
            if r not in cpuset:
                bad("cpus", "%s: reserved pCPU %d not in cpuset" % (tag, r))
            elif r in pinned:
                bad("cpus", "%s: reserved pCPU %d already pinned" % (tag, r))
            if r in pcpus:
                bad("cpus", "%s: reserved pCPU %d is also a vCPU pin" % (tag, r))
        if len(c["vcpus"]) + len(reserved) > len(cpuset):
            bad("cpus", "%s: %d vCPUs + %d reserved > %d pCPUs" % (tag, len(c["vcpus"]), len(reserved), len(cpuset)))

        # memory
        mem = c["memory"]
        pools = {p["size_kb"]: p for p in h.get("mempages", [])}
        if pins is not None and mem > h["memory"] - h["memory_usage"]:
            bad("memory", "%s: pinned %d MiB > %d MiB available" % (tag, mem, h["memory"] - h["memory_usage"]))
        ps = c.get("pagesize")
        if ps:
            p = pools.get(ps)
            if p is None:
                bad("memory", "%s: no %d KiB page pool" % (tag, ps))
            else:
                freep = p["total"] - p["used"] - p.get("reserved", 0)
                if (mem * 1024) % ps:
                    bad("memory", "%s: %d MiB is not a multiple of %d KiB pages" % (tag, mem, ps))
                if mem * 1024 > freep * ps:
                    bad("memory", "%s: %d MiB > %d free %d KiB pages" % (tag, mem, freep, ps))
        else:
            if pools:
                small = pools[min(pools)]
                if mem * 1024 > small["total"] * small["size_kb"]:
                    bad("memory", "%s: %d MiB > small page total" % (tag, mem))
            elif mem > h["memory"]:
                bad("memory", "%s: %d MiB > cell memory %d" % (tag, mem, h["memory"]))

        # pagesize honours the request
        sizes = sorted(pools)
        if preq is None:
            if ps:
                bad("pagesize", "%s: pagesize %s chosen, none requested" % (tag, ps))
        elif preq == "small":
            if not sizes or ps != sizes[0]:
                bad("pagesize", "%s: small requested, got %s" % (tag, ps))
        elif preq == "large":
            if not ps or not sizes or ps == sizes[0]:
                bad("pagesize", "%s: large requested, got %s" % (tag, ps))
        elif preq == "any":
            if not ps:
                bad("pagesize", "%s: any requested, got none" % tag)
        elif ps != preq:
            bad("pagesize", "%s: %s KiB requested, got %s" % (tag, preq, ps))

        # thread policies
        if pins is not None and thread == "isolate":
            used_cores = collections.Counter()
            for p in pcpus:
                core = next((s for s in siblings if p in s), None)
                if core is None:
                    bad("isolate", "%s: pCPU %d has no sibling set" % (tag, p))
                    continue
                used_cores[frozenset(core)] += 1
                if len(core) != tpc:
                    bad("isolate", "%s: pCPU %d is on a partial core %s" % (tag, p, sorted(core)))
                if core & pinned:
                    bad("isolate", "%s: core %s of pCPU %d is partly pinned" % (tag, sorted(core), p))
            for core, n in used_cores.items():
                if n > 1:
                    bad("isolate", "%s: %d vCPUs share core %s" % (tag, n, sorted(core)))
            for r in reserved:
                if any(r in core for core in used_cores):
                    bad("isolate", "%s: reserved pCPU %d shares a core with a vCPU" % (tag, r))
        if pins is not None and thread == "require":
            if tpc <= 1:
                bad("require", "%s: require on a host without SMT" % tag)
            else:
                per_core = collections.Counter()
                for p in pcpus:
                    core = next((frozenset(s) for s in siblings if p in s), frozenset([p]))
                    per_core[core] += 1
                singles = sum(1 for n in per_core.values() if n == 1)
                if singles > 1 or (singles and len(pcpus) > 1 and tpc == 2 and len(pcpus) % 2 == 0):
                    bad("require", "%s: %d cores hold a single vCPU (%s)" % (tag, singles, pins))

    # emulator threads
    if dedicated and emu == "isolate":
        if len(reserved_total) != 1:
            bad("emulator", "isolate: %d reserved pCPUs, expected 1" % len(reserved_total))
        elif reserved_total[0][0] != 0:
            bad("emulator", "isolate: reserved pCPU on the cell of guest cell %d" % reserved_total[0][0])
    elif reserved_total:
        bad("emulator", "reserved pCPUs %s without emulator isolate" % reserved_total)
    return errs


def main(argv=None):
    ap = argparse.ArgumentParser(description="validate placements against their cases")
    ap.add_argument("cases")
    ap.add_argument("results")
    ap.add_argument("--label", default="placements")
    ap.add_argument("--max-print", type=int, default=10)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    cases = load(args.cases)
    results = load(args.results)
    checked = 0
    invalid = {}
    rules = collections.Counter()
    for cid, res in sorted(results.items()):
        if cid not in cases:
            continue
        if res.get("fits") and res.get("numa"):
            checked += 1
        v = check(cases[cid], res)
        if v:
            invalid[cid] = v
            for rule in set(r for r, _ in v):
                rules[rule] += 1
    print("check_placement %s: %d fitted placements checked, %d invalid %s"
          % (args.label, checked, len(invalid), dict(rules)))
    if not args.quiet:
        for cid in sorted(invalid)[:args.max_print]:
            print("  case %d: %s" % (cid, "; ".join(m for _, m in invalid[cid])))
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
