#!/usr/bin/python3
"""Two builds of a criterion bench, side by side in the same minutes.

Runs the two bench binaries alternately (old, new, old, new, ...) so that drift in the
machine's speed falls on both, and prints each benchmark's median throughput and the
change. Build each tree's binary with `cargo bench -p swarmgate-bench --bench dataplane
--no-run` and copy the `target/release/deps/dataplane-<hash>` it names.

    bench/ab.py OLD_BINARY NEW_BINARY [--runs 3] [--filter REGEX] [--seconds 2]
"""
import argparse
import re
import statistics
import subprocess
import sys


def run(binary, filt, seconds):
    try:
        p = subprocess.run(
            [binary, "--bench", filt, "--measurement-time", str(seconds), "--warm-up-time",
             "1", "--noplot", "--discard-baseline"],
            capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"ab.py: cannot run {binary}: {e.strerror}")
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"ab.py: {binary} failed ({p.returncode}): {last}")
    out = p.stdout
    got, name = {}, None
    for line in out.splitlines():
        m = re.match(r"^(\S+/\S+)(\s+time:|$)", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"thrpt:\s+\[\S+ \S+ (\S+) ([KMG]?)elem/s", line)
        if m and name and name not in got:
            scale = {"M": 1.0, "K": 1e-3, "G": 1e3, "": 1e-6}[m.group(2)]
            got[name] = float(m.group(1)) * scale
    return got


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--filter", default="/64B$")
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()
    if a.runs < 1:
        sys.exit("ab.py: --runs must be at least 1")
    res = {}
    for _ in range(a.runs):
        for which, binary in (("old", a.old), ("new", a.new)):
            for name, mpps in run(binary, a.filter, a.seconds).items():
                res.setdefault(name, {"old": [], "new": []})[which].append(mpps)
    print("| benchmark | old (Mpps) | new (Mpps) | change | runs old | runs new |")
    print("|---|---|---|---|---|---|")
    for name, d in res.items():
        if not d["old"] or not d["new"]:
            continue
        o, n = statistics.median(d["old"]), statistics.median(d["new"])
        print(f"| {name} | {o:.2f} | {n:.2f} | {100 * (n / o - 1):+.1f} % | "
              f"{' '.join(f'{x:.2f}' for x in d['old'])} | {' '.join(f'{x:.2f}' for x in d['new'])} |")


if __name__ == "__main__":
    main()
