#!/usr/bin/env python3
"""Prints the medians of the last criterion run as a Markdown table.

criterion's console line (`time: [low estimate high]`) is the mean (a slope); the
performance targets are about the median, which criterion keeps in
<target>/criterion/<bench>/new/estimates.json. For each benchmark this prints the median
per iteration with its 95 % confidence interval and the median absolute deviation (the
spread between samples: high on a busy machine), and for benchmarks with a throughput the
median rate in elements (lines) per second.

Usage: bench/criterion-medians.py [FILTER] (substring of the benchmark id; default all)
The criterion directory is $CARGO_TARGET_DIR/criterion, else target/criterion at the
repository root.
"""

import json
import os
import sys
from pathlib import Path


def duration(ns):
    if ns >= 1e9:
        return "%.3f s" % (ns / 1e9)
    if ns >= 1e6:
        return "%.2f ms" % (ns / 1e6)
    if ns >= 1e3:
        return "%.2f µs" % (ns / 1e3)
    return "%.1f ns" % ns


def main():
    wanted = sys.argv[1] if len(sys.argv) > 1 else ""
    target = Path(os.environ.get("CARGO_TARGET_DIR") or Path(__file__).resolve().parent.parent / "target")
    root = target / "criterion"
    rows = []
    for estimates in sorted(root.glob("**/new/estimates.json")):
        meta_file = estimates.parent / "benchmark.json"
        if not meta_file.exists():
            continue
        meta = json.loads(meta_file.read_text())
        name = meta["full_id"]
        if wanted not in name:
            continue
        est = json.loads(estimates.read_text())
        median = est["median"]
        ci = median["confidence_interval"]
        mad = est["median_abs_dev"]["point_estimate"]
        rate = ""
        throughput = meta.get("throughput") or {}
        elements = throughput.get("Elements") or throughput.get("Bytes")
        if elements:
            rate = "{:,.0f}/s".format(elements / (median["point_estimate"] / 1e9))
        rows.append(
            (
                name,
                duration(median["point_estimate"]),
                "%s – %s" % (duration(ci["lower_bound"]), duration(ci["upper_bound"])),
                duration(mad),
                rate,
            )
        )
    if not rows:
        sys.exit("no criterion results under %s (run cargo bench first)" % root)
    print("| benchmark | median | 95 % CI of median | MAD | throughput (median) |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print("| %s | %s | %s | %s | %s |" % row)


if __name__ == "__main__":
    main()
