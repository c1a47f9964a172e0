#!/usr/bin/env python3
"""Compare Nova's decisions with ours, case by case. Plain Python 3, no deps.

    compare.py cases.jsonl nova.jsonl ours.jsonl [--show N] [--json out.json]

Both result files are in nova_fit.py's format. A case's outcome is one of:
  error:<ExceptionClass>   the request was refused (numa_get_constraints raised)
  no_numa                  no NUMA topology requested (fits anywhere)
  fit / no_fit
Disagreements are grouped by (nova outcome -> ours outcome); within a group the smallest cases
(fewest host pCPUs, then vCPUs) are shown first. A "nova no_fit -> ours fit" disagreement where
Nova's path-independent search (fits_fresh) fits is labelled nova_path_dependent: Nova misses
that fit only because numa_fit_instance_to_host reuses the instance cells across permutations.
Also reports how often the placements are identical (same host cells and pins), which is not
required (our packing policy differs from Nova's on purpose).
A case where Nova itself crashed (numa_fit_instance_to_host raised) is labelled nova_crash.
Exit status 1 on any disagreement other than nova_path_dependent and nova_crash.
"""
import argparse
import collections
import json
import sys


def load(path):
    """{case id: record} of a JSON-lines file (cases, or nova_fit.py's / fit_bench's answers); blank lines skipped."""
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                d = json.loads(line)
                out[d["id"]] = d
    return out


def outcome(r):
    if r.get("error"):
        return "error:" + r["error"].split(":", 1)[0]
    if r.get("crash"):
        return "crash"
    if not r.get("numa"):
        return "no_numa"
    return "fit" if r.get("fits") else "no_fit"


def size(case):
    return (sum(len(c["cpuset"]) for c in case["host"]["cells"]), len(case["host"]["cells"]),
            case["request"]["vcpus"], len(case["request"]["extra_specs"]) +
            len(case["request"]["image_properties"]))


def same_placement(a, b):
    ka = [(c["host_cell"], c.get("pins"), c.get("pagesize")) for c in a.get("cells", [])]
    kb = [(c["host_cell"], c.get("pins"), c.get("pagesize")) for c in b.get("cells", [])]
    return ka == kb


def main(argv=None):
    ap = argparse.ArgumentParser(description="compare Nova's and our fit decisions")
    ap.add_argument("cases")
    ap.add_argument("nova")
    ap.add_argument("ours")
    ap.add_argument("--show", type=int, default=3, help="cases shown per disagreement group")
    ap.add_argument("--json", help="write the disagreements (ids per group) here")
    args = ap.parse_args(argv)
    cases, nova, ours = load(args.cases), load(args.nova), load(args.ours)
    ids = sorted(set(nova) & set(ours) & set(cases))
    groups = collections.defaultdict(list)
    counts = collections.Counter()
    same = both_fit = 0
    for i in ids:
        n, o = nova[i], ours[i]
        on, oo = outcome(n), outcome(o)
        counts[on.split(":")[0]] += 1
        if on == oo:
            if on == "fit":
                both_fit += 1
                same += same_placement(n, o)
            continue
        key = "%s -> %s" % (on, oo)
        if on == "crash":
            key = "nova_crash (%s) -> %s" % (n["crash"].split(":")[0], oo)
        elif on == "no_fit" and oo == "fit" and n.get("fits_fresh"):
            key = "nova_path_dependent (nova no_fit, fresh fit) -> fit"
        elif on.startswith("error:") and oo.startswith("error:"):
            key = "error class %s -> %s" % (on[6:], oo[6:])
        groups[key].append(i)
    agree = len(ids) - sum(len(v) for v in groups.values())
    print("compare: %d cases; nova outcomes %s" % (len(ids), dict(counts)))
    print("compare: agreement %d/%d (%.2f%%); identical placements %d/%d both-fit"
          % (agree, len(ids), 100.0 * agree / max(1, len(ids)), same, both_fit))
    hard = 0
    for key in sorted(groups, key=lambda k: -len(groups[k])):
        members = sorted(groups[key], key=lambda i: size(cases[i]))
        if not key.startswith(("nova_path_dependent", "nova_crash")):
            hard += len(members)
        print("  %-60s %d  e.g. %s" % (key, len(members), members[:10]))
        for i in members[:args.show]:
            c = dict(cases[i])
            c.pop("tags", None)
            print("    case %s" % json.dumps(c, separators=(",", ":")))
            print("      nova %s" % json.dumps({k: nova[i].get(k) for k in ("error", "fits", "fits_fresh", "cells")},
                                              separators=(",", ":")))
            print("      ours %s" % json.dumps({k: ours[i].get(k) for k in ("error", "fits", "cells", "reasons")},
                                              separators=(",", ":")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: sorted(v) for k, v in groups.items()}, f, indent=1)
    return 1 if hard else 0


if __name__ == "__main__":
    sys.exit(main())
