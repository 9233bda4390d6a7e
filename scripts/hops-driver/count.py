#!/usr/bin/env python3
"""Counts the calls between source files of runtime/src that one job makes,
from two callgrind profiles of the same program run with N and 2N jobs.

A call edge is (caller function, callee function), both defined under
runtime/src, in different files. Its count per job is
(count in the 2N run - count in the N run) / N, which leaves out
everything done once (start, shutdown) and keeps what every job does.
Edges made at least half a time per job are the job's path.

Printed: the number of such edges (the hops), the calls per job over
them, the files on the path, and the files entered most often (the
"re-entries" of issue 10). `-v` lists every edge.
"""
import collections
import re
import sys


def edges(path):
    """Call counts per (caller file, caller fn, callee file, callee fn)."""
    e = collections.Counter()
    fl = fi = fn = cfl = cfn = None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("fl="):
                fl = fi = line[3:]
            elif line.startswith(("fi=", "fe=")):
                fi = line[3:]
            elif line.startswith("fn="):
                fn, fi = line[3:], fl
            elif line.startswith(("cfl=", "cfi=")):
                cfl = line[4:]
            elif line.startswith("cfn="):
                cfn = line[4:]
            elif line.startswith("calls="):
                n = int(line[6:].split()[0])
                e[(fl, fn, cfl if cfl is not None else fi, cfn)] += n
                cfl = cfn = None
    return e


def rel(path):
    m = re.search(r"/runtime/src/(.*)", path or "")
    return m.group(1) if m else None


def short(name):
    """A function's path without generic arguments or its signature."""
    for _ in range(4):
        name = re.sub(r"<[^<>]*>", "", name)
    return name.split("(")[0].replace("portpool_runtime::", "")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    once, twice, n = args[0], args[1], int(args[2])
    e1, e2 = edges(once), edges(twice)
    path = collections.defaultdict(float)
    for k in set(e1) | set(e2):
        caller, callee = rel(k[0]), rel(k[2])
        if caller is None or callee is None or caller == callee:
            continue
        per_job = (e2.get(k, 0) - e1.get(k, 0)) / n
        if per_job >= 0.5:
            path[(caller, short(k[1]), callee, short(k[3]))] += per_job
    if "-v" in sys.argv:
        for k, v in sorted(path.items(), key=lambda kv: (kv[0][0], -kv[1])):
            print(f"{v:6.2f}  {k[0]} {k[1]}  ->  {k[2]} {k[3]}")
    files = {f for k in path for f in (k[0], k[2])}
    into, into_calls = collections.Counter(), collections.Counter()
    for k, v in path.items():
        into[k[2]] += 1
        into_calls[k[2]] += v
    print(f"hops (cross-file call edges): {len(path)}")
    print(f"cross-file calls per job:     {sum(path.values()):.1f}")
    print(f"files on the path:            {len(files)}")
    print("most entered (edges/calls):   " + ", ".join(
        f"{f} {into[f]}/{into_calls[f]:.0f}" for f, _ in into.most_common(4)))


if __name__ == "__main__":
    main()
