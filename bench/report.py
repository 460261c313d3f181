#!/usr/bin/env python3
"""Summarises criterion results (target/criterion/*/*/new/) as a Markdown table:
per benchmark, the mean time per packet, packets per second, and Gb/s of inner frames
(or bytes per second for byte-throughput benches). Usage: bench/report.py [filter]"""
import json, os, sys, re

root = os.path.join(os.path.dirname(__file__), "..", "target", "criterion")
flt = sys.argv[1] if len(sys.argv) > 1 else ""
rows = []
for group in sorted(os.listdir(root)):
    gdir = os.path.join(root, group)
    if not os.path.isdir(gdir) or group == "report":
        continue
    for bench in sorted(os.listdir(gdir)):
        new = os.path.join(gdir, bench, "new")
        try:
            est = json.load(open(os.path.join(new, "estimates.json")))
            meta = json.load(open(os.path.join(new, "benchmark.json")))
        except (FileNotFoundError, NotADirectoryError):
            continue
        name = f"{group}/{bench}"
        if flt and not re.search(flt, name):
            continue
        ns = est["mean"]["point_estimate"]
        tp = meta.get("throughput") or {}
        if "Elements" in tp:
            per = ns / tp["Elements"]
            m = re.search(r"(\d+)B", bench)
            size = int(m.group(1)) if m else 0
            mpps = 1e3 / per
            gbps = mpps * size * 8 / 1e3 if size else 0
            rows.append((name, f"{per:.1f} ns", f"{mpps:.2f} Mpps", f"{gbps:.1f} Gb/s" if size else ""))
        elif "Bytes" in tp:
            rows.append((name, f"{ns:.1f} ns", "", f"{tp['Bytes'] / ns:.2f} GB/s"))
        else:
            rows.append((name, f"{ns:.1f} ns", "", ""))
print("| benchmark | time per packet | rate | inner throughput |")
print("|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
