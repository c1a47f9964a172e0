#!/usr/bin/env python3
"""Generate random NUMA fit cases (host usage x request) as JSON lines.

Plain Python 3, no dependencies, deterministic for a given --seed/--count.

A case:
  {"id": 17,
   "host": {"cells": [{"id": 0, "cpuset": [..], "siblings": [[..], ..], "pinned_cpus": [..],
                       "cpu_usage": n, "memory": MiB, "memory_usage": MiB,
                       "mempages": [{"size_kb": 4, "total": n, "used": n, "reserved": n}, ..]}]},
   "request": {"vcpus": n, "memory_mb": n, "extra_specs": {"hw:...": "..."},
               "image_properties": {"hw_...": "..."}},
   "tags": ["why this case is interesting", ...]}

Field names are Nova's NUMACell / NUMAPagesTopology fields (memory in MiB, pages in
counts). Image properties are given as Glance stores them (strings; NUMA mappings as
"hw_numa_cpus.N" / "hw_numa_mem.N" keys), which is what nova.objects.ImageMetaProps.from_dict
reads. "tags" is informational only.

The generator is biased toward boundaries (exactly enough free pCPUs, one short, memory
exactly at the limit or one MiB over, hugepage pools exactly full or one page short,
1 GiB pages with a non-multiple memory size) so both fit and no-fit are well represented.

Usage: gen_cases.py --seed 1 --count 3000 [-o cases.jsonl]
"""
import argparse
import json
import random
import sys

SMALL_KB = 4
HUGE_2M = 2048
HUGE_1G = 1048576


def weighted(rng, pairs):
    total = sum(w for _, w in pairs)
    x = rng.random() * total
    for value, w in pairs:
        x -= w
        if x < 0:
            return value
    return pairs[-1][0]


# --------------------------------------------------------------------------------------------
# hosts


def gen_host(rng, tags):
    ncells = weighted(rng, [(1, 35), (2, 40), (3, 10), (4, 15)])
    smt = rng.random() < 0.6
    cores = weighted(rng, [(1, 5), (2, 20), (3, 10), (4, 25), (6, 15), (8, 15), (12, 5), (16, 5)])
    threads = (4 if rng.random() < 0.08 else 2) if smt else 1
    total_cores = ncells * cores
    # Linux numbers SMT threads either "split" (sibling of cpu c is c + total_cores: Intel
    # servers) or "adjacent" (0,1 / 2,3: many AMD and VM topologies; POWER SMT4).
    numbering = rng.choice(["split", "adjacent"]) if smt else "linear"
    tags.append(("smt%d" % threads) if smt else "nosmt")
    tags.append("cells=%d" % ncells)

    cell_cores = []  # per cell: list of tuples (threads of one core)
    for c in range(ncells):
        cl = []
        for k in range(cores):
            g = c * cores + k
            if not smt:
                cl.append((g,))
            elif numbering == "split":
                cl.append(tuple(g + i * total_cores for i in range(threads)))
            else:
                cl.append(tuple(threads * g + i for i in range(threads)))
        cell_cores.append(cl)

    # vcpu_pin_set-like exclusion
    excluded = set()
    mode = weighted(rng, [(None, 65), ("first_core", 15), ("random_cpus", 15), ("whole_cell", 2),
                          ("first_thread", 3)])
    if mode:
        tags.append("pinset:" + mode)
    if mode == "first_core":
        for cl in cell_cores:
            excluded.update(cl[0])
    elif mode == "random_cpus":
        allc = [cpu for cl in cell_cores for core in cl for cpu in core]
        k = rng.randint(1, max(1, len(allc) // 3))
        excluded.update(rng.sample(allc, k))
    elif mode == "whole_cell" and ncells > 1:
        for core in cell_cores[rng.randrange(ncells)]:
            excluded.update(core)
    elif mode == "first_thread":
        # drop one thread of some cores (leaves trimmed singleton sibling sets on SMT)
        for cl in cell_cores:
            for core in cl:
                if rng.random() < 0.4:
                    excluded.add(core[-1])

    cells = []
    for c, cl in enumerate(cell_cores):
        siblings = []
        for core in cl:
            s = sorted(set(core) - excluded)
            if s:
                siblings.append(s)
        cpuset = sorted(cpu for s in siblings for cpu in s)
        # libvirt/Nova order: sorted sibling sets
        siblings.sort()
        cells.append(gen_cell_usage(rng, c, cpuset, siblings, threads, tags))
    return {"cells": cells}


def gen_cell_usage(rng, cid, cpuset, siblings, threads, tags):
    # existing pins
    pinned = set()
    style = weighted(rng, [("none", 25), ("random", 35), ("cores", 20), ("mix", 20)])
    if cpuset and style != "none":
        free_frac = rng.choice([0.0, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0])
        if style in ("cores", "mix"):
            # isolate-style guests pin whole cores
            for s in siblings:
                if rng.random() < free_frac * 0.8:
                    pinned.update(s)
        if style in ("random", "mix"):
            for cpu in cpuset:
                if rng.random() < free_frac * 0.5:
                    pinned.add(cpu)
        if style == "random" and rng.random() < 0.1:
            pinned = set(cpuset)  # full cell
    pinned_cpus = sorted(pinned)

    memory = weighted(rng, [(1024, 5), (2048, 10), (4096, 20), (8192, 20), (16384, 20),
                            (32768, 10), (65536, 10), (rng.randrange(4, 200) * 256, 5)])
    memory_usage = weighted(rng, [(0, 25), (rng.randrange(0, memory + 1, 64), 35),
                                  (memory // 2, 15), (memory - rng.choice([0, 1, 512, 1024]), 10),
                                  (rng.randrange(0, memory + 1), 15)])
    memory_usage = max(0, min(memory_usage, memory))
    if rng.random() < 0.03:
        memory_usage = memory + rng.choice([1, 1024])  # overcommitted cell (shared guests)

    mempages = []
    if rng.random() < 0.05:
        tags.append("no-mempages")
    else:
        huge_mb = 0
        pools = []
        if rng.random() < 0.5:
            total = weighted(rng, [(0, 10), (rng.randrange(1, 64), 30),
                                   (memory // 2 // 4, 30), (memory // 2 // 2, 30)])
            huge_mb += total * 2
            pools.append(hpool(rng, HUGE_2M, total))
        if rng.random() < 0.35 and memory >= 2048:
            total = weighted(rng, [(0, 10), (1, 20), (2, 20), (memory // 1024 // 2, 50)])
            total = max(0, min(total, (memory - huge_mb) // 1024))
            huge_mb += total * 1024
            pools.append(hpool(rng, HUGE_1G, total))
        small_mb = max(0, memory - huge_mb)
        small_total = small_mb * 1024 // SMALL_KB
        if rng.random() < 0.6:
            small_used = min(small_total, memory_usage * 1024 // SMALL_KB)
        else:
            small_used = rng.randrange(0, small_total + 1) if small_total else 0
        mempages.append({"size_kb": SMALL_KB, "total": small_total, "used": small_used, "reserved": 0})
        mempages.extend(pools)
        if pools and rng.random() < 0.5 and memory_usage <= memory:
            # consistent accounting: the resource tracker's memory_usage sums every guest's
            # memory, hugepage-backed ones included
            used_huge = sum(p["used"] * p["size_kb"] // 1024 for p in pools)
            memory_usage = min(memory, used_huge + rng.choice([0, 0, 256, 1024, 2048]))
            mempages[0]["used"] = max(0, min(small_total, (memory_usage - used_huge) * 1024 // SMALL_KB))
    return {"id": cid, "cpuset": cpuset, "siblings": siblings, "pinned_cpus": pinned_cpus,
            "cpu_usage": len(pinned_cpus), "memory": memory, "memory_usage": memory_usage,
            "mempages": mempages}


def hpool(rng, size_kb, total):
    used = weighted(rng, [(0, 40), (rng.randrange(0, total + 1), 40), (total, 10),
                          (max(0, total - 1), 10)])
    used = min(used, total)
    reserved = 0
    if rng.random() < 0.25 and total - used > 0:
        reserved = rng.randrange(0, total - used + 1)
    return {"size_kb": size_kb, "total": total, "used": used, "reserved": reserved}


# --------------------------------------------------------------------------------------------
# requests


def cell_stats(cell):
    pinned = set(cell["pinned_cpus"])
    free = [c for c in cell["cpuset"] if c not in pinned]
    tpc = max([len(s) for s in cell["siblings"]] or [1])
    full_cores = [s for s in cell["siblings"] if len(s) == tpc and not (set(s) & pinned)]
    free_pairs = sum(len([c for c in s if c not in pinned]) // 2 for s in cell["siblings"])
    pools = {p["size_kb"]: p for p in cell["mempages"]}
    return {
        "free": len(free),
        "full_cores": len(full_cores),
        "free_pairs": free_pairs,
        "avail_mem": cell["memory"] - cell["memory_usage"],
        "pools": pools,
    }


PAGE_SPECS = [("small", 12), ("large", 12), ("any", 10), ("2048", 10), ("1048576", 8),
              ("2MB", 4), ("1GB", 3), ("4", 2), ("foo", 1),
              # spellings oslo's string_to_bytes (IEC) reads differently or rejects
              ("2M", 1), ("1G", 1), ("2Mb", 0.5), ("2MiB", 0.5), ("1GiB", 0.5), ("2048k", 0.5)]


def gen_request(rng, host, tags):
    cells = host["cells"]
    t = rng.randrange(len(cells))
    st = cell_stats(cells[t])
    tag_target = None

    spec = {}
    image = {}

    # --- policies
    cpu_policy = weighted(rng, [("dedicated", 60), ("shared", 8), (None, 32)])
    if cpu_policy:
        spec["hw:cpu_policy"] = cpu_policy
    if rng.random() < 0.06:
        image["hw_cpu_policy"] = rng.choice(["dedicated", "dedicated", "shared"])
    dedicated = cpu_policy == "dedicated" or (cpu_policy is None and
                                              image.get("hw_cpu_policy") == "dedicated")
    if dedicated:
        thread_policy = weighted(rng, [(None, 40), ("prefer", 18), ("isolate", 22),
                                       ("require", 19), ("bogus", 1)])
        emu = weighted(rng, [(None, 70), ("isolate", 22), ("share", 7), ("bogus", 1)])
    else:
        thread_policy = weighted(rng, [(None, 94), ("prefer", 2), ("isolate", 2), ("require", 2)])
        emu = weighted(rng, [(None, 92), ("isolate", 3), ("share", 5)])
    if thread_policy:
        spec["hw:cpu_thread_policy"] = thread_policy
    if rng.random() < (0.04 if dedicated else 0.01):
        spec["hw:cpu_realtime"] = rng.choice(["yes", "true", "1", "no", "False"])
        where = rng.random()
        if where < 0.6:
            spec["hw:cpu_realtime_mask"] = rng.choice(["^0", "^0-1", "0-1"])
        elif where < 0.8:
            image["hw_cpu_realtime_mask"] = "^0"
    if emu:
        spec["hw:emulator_threads_policy"] = emu
    if rng.random() < 0.005:
        spec["hw:cpu_policy"] = "bogus"

    page = weighted(rng, [(None, 60)] + PAGE_SPECS)
    if page:
        spec["hw:mem_page_size"] = page

    nc = len(cells)
    nodes = weighted(rng, [(None, 45), (1, 20), (min(2, nc), 14), (min(3, nc), 4), (nc, 8),
                           (nc + 1, 3), ("bad", 1)])
    if nodes == "bad":
        spec["hw:numa_nodes"] = rng.choice(["0", "x", "-1", "02", "+1", " 1", "1.0"])
        nodes = None
        tags.append("bad-nodes")
    n = nodes or 1

    # --- image properties (sometimes conflicting with the flavor)
    if rng.random() < (0.12 if dedicated else 0.02):
        image["hw_cpu_thread_policy"] = rng.choice(["prefer", "isolate", "require"])
    if rng.random() < (0.5 if page in ("any", "large") else 0.03):
        image["hw_mem_page_size"] = rng.choice(["small", "large", "any", "2048", "1048576", "2MB"])
    image_nodes = False
    if rng.random() < 0.08:
        image_nodes = True
        n_img = rng.choice([1, 2, 2, 4])
        image["hw_numa_nodes"] = str(n_img)
        if nodes is None:
            n = n_img
            nodes = n_img
    if nodes is not None and "hw:numa_nodes" not in spec and not image_nodes:
        spec["hw:numa_nodes"] = str(nodes)
    elif nodes is not None and image_nodes and rng.random() < 0.15:
        spec["hw:numa_nodes"] = str(nodes)  # flavor + image both: forbidden
        tags.append("nodes-flavor+image")

    if n > 1 and rng.random() < 0.6:
        # several guest cells: size them after the tightest host cell so the boundary matters
        allst = [cell_stats(c) for c in cells]
        st = dict(st)
        for key in ("free", "full_cores", "free_pairs", "avail_mem"):
            st[key] = sorted(x[key] for x in allst)[min(n, len(allst)) - 1 if rng.random() < 0.5 else 0]

    # --- vCPU count, biased around the target cell's free pCPUs
    emu_extra = 1 if emu == "isolate" else 0
    tp = thread_policy or image.get("hw_cpu_thread_policy")
    if tp == "isolate":
        base = st["full_cores"]
    elif tp == "require":
        base = st["free_pairs"] * 2
    else:
        base = st["free"]
    vmode = weighted(rng, [("exact", 33), ("short", 12), ("under", 17), ("random", 25), ("free", 13)])
    if vmode == "exact":
        per = base - emu_extra
    elif vmode == "short":
        per = base - emu_extra + 1
    elif vmode == "under":
        per = base - emu_extra - 1
    elif vmode == "free":
        per = st["free"] - emu_extra + rng.choice([0, 1])
    else:
        per = rng.choice([1, 1, 2, 2, 3, 4, 4, 6, 8, 16])
        if rng.random() < 0.5 and base > 0:
            per = rng.randint(1, base)
    per = max(1, per)
    tags.append("vcpu:" + vmode)

    # --- memory per guest cell, biased around the limits
    pools = st["pools"]

    def pool_mb(size, free=True):
        p = pools.get(size)
        if not p:
            return None
        count = (p["total"] - p["used"] - p["reserved"]) if free else p["total"]
        return count * size // 1024

    page_now = spec.get("hw:mem_page_size")
    huge_sizes = [s for s in (HUGE_2M, HUGE_1G) if pool_mb(s)]
    if page_now in ("2048", "2MB"):
        huge_sizes = [HUGE_2M] if pool_mb(HUGE_2M) else []
    elif page_now in ("1048576", "1GB"):
        huge_sizes = [HUGE_1G] if pool_mb(HUGE_1G) else []
    if page_now in ("2048", "2MB", "1048576", "1GB", "large", "any") and huge_sizes:
        mmode = weighted(rng, [("huge_exact", 25), ("huge_over", 15), ("huge_frac", 40),
                               ("1g_nonmultiple", 5), ("random", 15)])
    else:
        mmode = weighted(rng, [("avail", 14), ("avail+1", 9), ("huge_exact", 6), ("huge_over", 4),
                               ("1g_nonmultiple", 4), ("small_total", 5), ("small_total+1", 3),
                               ("cell_memory+1", 3), ("frac", 46), ("random", 6)])

    mem = None
    if mmode == "avail":
        mem = st["avail_mem"]
    elif mmode == "avail+1":
        mem = st["avail_mem"] + 1
    elif mmode in ("huge_exact", "huge_over", "huge_frac"):
        size = rng.choice(huge_sizes or [HUGE_2M, HUGE_1G])
        mb = pool_mb(size)
        if mb:
            if mmode == "huge_frac":
                unit = size // 1024
                mem = max(unit, int(mb * rng.uniform(0.1, 1.0)) // unit * unit)
            else:
                mem = mb + (size // 1024 if mmode == "huge_over" else 0)
            if "hw:mem_page_size" not in spec and rng.random() < 0.7:
                spec["hw:mem_page_size"] = rng.choice([str(size), "large", "any"])
    elif mmode == "1g_nonmultiple":
        mem = rng.choice([512, 1536, 2560, 1000, 3072 + 512])
        if rng.random() < 0.6 and "hw:mem_page_size" not in spec:
            spec["hw:mem_page_size"] = rng.choice(["1048576", "1GB", "large"])
    elif mmode == "small_total":
        mem = pool_mb(SMALL_KB, free=False)
    elif mmode == "small_total+1":
        mb = pool_mb(SMALL_KB, free=False)
        mem = mb + 1 if mb is not None else None
    elif mmode == "cell_memory+1":
        mem = cells[t]["memory"] + 1
    elif mmode == "frac" and st["avail_mem"] >= 256:
        mem = max(256, int(st["avail_mem"] * rng.uniform(0.05, 0.95)) // 256 * 256)
    if mem is None or mem <= 0:
        mem = rng.choice([256, 512, 1024, 1024, 2048, 2048, 4096, 8192])
        mmode = "random"
    tags.append("mem:" + mmode)

    vcpus = per * n
    memory_mb = mem * n
    if n > 1 and rng.random() < 0.1:
        if rng.random() < 0.5:
            vcpus += 1
        else:
            memory_mb += 1
        tags.append("asymmetric")

    # --- explicit guest NUMA mappings (flavor or image), consistent or not
    if n >= 1 and nodes is not None and rng.random() < 0.3:
        cpu_map, mem_map = split_mapping(rng, vcpus, memory_mb, n)
        kind = weighted(rng, [("ok", 65), ("missing_cpu", 5), ("dup_cpu", 5), ("out_of_range", 5),
                              ("mem_sum", 6), ("no_mem", 4), ("fewer", 5), ("empty_cell", 5)])
        tags.append("mapping:" + kind)
        if kind == "missing_cpu" and vcpus > 1:
            for cm in cpu_map:
                if len(cm) > 1:
                    cm.pop()
                    break
        elif kind == "dup_cpu":
            cpu_map[-1] = cpu_map[-1] + [cpu_map[0][0]]
        elif kind == "out_of_range":
            cpu_map[-1] = cpu_map[-1] + [vcpus]
        elif kind == "mem_sum":
            mem_map[-1] += rng.choice([-1, 1, 1024])
        elif kind == "fewer" and n > 1:
            cpu_map = cpu_map[:-1]
            mem_map = mem_map[:-1]
        elif kind == "empty_cell" and n > 1:
            # move all CPUs of the last cell to the first
            cpu_map[0] = cpu_map[0] + cpu_map[-1]
            cpu_map[-1] = []
        use_image = image_nodes or rng.random() < 0.15
        cpu_key, mem_key = ("hw_numa_cpus.%d", "hw_numa_mem.%d") if use_image else \
            ("hw:numa_cpus.%d", "hw:numa_mem.%d")
        target = image if use_image else spec
        for i, cm in enumerate(cpu_map):
            if cm or kind == "empty_cell":
                target[cpu_key % i] = fmt_cpus(cm)
        if kind != "no_mem":
            for i, mm in enumerate(mem_map):
                target[mem_key % i] = str(mm)
        if use_image and rng.random() < 0.1:
            # flavor and image both give a mapping: forbidden
            spec["hw:numa_cpus.0"] = fmt_cpus(cpu_map[0])
            spec["hw:numa_mem.0"] = str(mem_map[0])
            tags.append("mapping-flavor+image")

    return {"vcpus": vcpus, "memory_mb": memory_mb, "extra_specs": spec, "image_properties": image}


def split_mapping(rng, vcpus, memory_mb, n):
    cpus = list(range(vcpus))
    if rng.random() < 0.3:
        rng.shuffle(cpus)
    # uneven split, each cell at least one vCPU when possible
    cuts = sorted(rng.sample(range(1, vcpus), min(n - 1, vcpus - 1))) if vcpus > 1 else []
    while len(cuts) < n - 1:
        cuts.append(vcpus)
    parts = []
    prev = 0
    for cut in cuts + [vcpus]:
        parts.append(sorted(cpus[prev:cut]))
        prev = cut
    mem_map = []
    left = memory_mb
    for i in range(n):
        if i == n - 1:
            mem_map.append(left)
        else:
            share = max(1, memory_mb // n + rng.choice([0, 0, -256, 256]))
            share = min(share, left - (n - 1 - i)) if left > (n - 1 - i) else share
            mem_map.append(share)
            left -= share
    return parts, mem_map


def fmt_cpus(cpus):
    """Nova cpu spec: ranges and singletons, e.g. '0-2,5'."""
    cpus = sorted(cpus)
    out = []
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else "%d-%d" % (cpus[i], cpus[j]))
        i = j + 1
    return ",".join(out)


def gen_case(rng, cid):
    tags = []
    host = gen_host(rng, tags)
    req = gen_request(rng, host, tags)
    return {"id": cid, "host": host, "request": req, "tags": tags}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--start-id", type=int, default=0)
    ap.add_argument("-o", "--output", default="-")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    out = sys.stdout if args.output == "-" else open(args.output, "w")
    try:
        for i in range(args.count):
            case = gen_case(rng, args.start_id + i)
            out.write(json.dumps(case, sort_keys=False, separators=(",", ":")) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
