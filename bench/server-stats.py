#!/usr/bin/env python3
"""Where a server's time went during a load run: its metrics and its threads' scheduling.

    server-stats.py snapshot PID METRICS_PORT > before.json
    ... load run ...
    server-stats.py snapshot PID METRICS_PORT > after.json
    server-stats.py diff before.json after.json      # one JSON object on stdout

A snapshot holds the server's Prometheus histograms (request durations of Approve, the
decision batches' sizes and durations, the verification batches' sizes) and, per thread,
its nice value and /proc/PID/task/TID/schedstat: nanoseconds on a CPU and nanoseconds
runnable but waiting for one. The diff gives, over the run: the mean batch sizes, the
percentiles of the server-side request and decision-batch durations (upper bucket bounds),
per nice value (0: the serving threads; 10: the verification threads) the CPU seconds
used and the seconds spent waiting for a CPU, and per thread name (tokio-rt-worker,
sqlx-sqlite-wor, ...) the context switches, voluntary (it slept) and involuntary (it was
preempted), also per Approve answered. Linux only; standard library only.
"""

import json
import os
import re
import sys
import time
import urllib.request

HISTOGRAMS = {
    "approve_seconds": ('kss_request_duration_seconds', 'rpc="Approve"'),
    "decision_batch_seconds": ("kss_decision_batch_duration_seconds", ""),
    "decision_batch_size": ("kss_decision_batch_size", ""),
    "verify_batch_size": ("kss_verify_batch_size", ""),
}


def histograms(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for name, (metric, label) in HISTOGRAMS.items():
        buckets, total, count = {}, 0.0, 0.0
        for line in text.splitlines():
            if not line.startswith(metric) or label not in line:
                continue
            value = float(line.rsplit(" ", 1)[1])
            if line.startswith(metric + "_bucket"):
                le = re.search(r'le="([^"]+)"', line).group(1)
                buckets[le] = buckets.get(le, 0.0) + value
            elif line.startswith(metric + "_sum"):
                total += value
            elif line.startswith(metric + "_count"):
                count += value
        out[name] = {"buckets": buckets, "sum": total, "count": count}
    return out


def threads(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                on_cpu, waiting, _ = (int(x) for x in f.read().split())
        except OSError:
            continue  # the thread ended
        nice = int(stat.rsplit(")", 1)[1].split()[16])
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        switches = {}
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                        switches[key.split("_")[0]] = int(value)
        except OSError:
            continue
        out[tid] = {"nice": nice, "name": name, "on_cpu_ns": on_cpu, "waiting_ns": waiting,
                    "switches": switches}
    return out


def percentile(buckets, q):
    """Upper bound of the bucket holding quantile q (cumulative buckets)."""
    items = sorted(((float("inf") if le == "+Inf" else float(le)), n) for le, n in buckets.items())
    total = items[-1][1] if items else 0
    for le, n in items:
        if total and n >= q * total:
            return le
    return None


def diff(before, after):
    report = {}
    for name in HISTOGRAMS:
        b, a = before["metrics"][name], after["metrics"][name]
        count = a["count"] - b["count"]
        buckets = {le: n - b["buckets"].get(le, 0.0) for le, n in a["buckets"].items()}
        entry = {"count": count, "mean": (a["sum"] - b["sum"]) / count if count else None}
        if name.endswith("seconds"):
            entry.update({f"p{p}_le": percentile(buckets, p / 100) for p in (50, 99)})
        report[name] = entry
    by_nice = {}
    for tid, t in after["threads"].items():
        old = before["threads"].get(tid, {"on_cpu_ns": 0, "waiting_ns": 0})
        n = by_nice.setdefault(str(t["nice"]), {"threads": 0, "cpu_s": 0.0, "waiting_s": 0.0})
        n["threads"] += 1
        n["cpu_s"] += (t["on_cpu_ns"] - old["on_cpu_ns"]) / 1e9
        n["waiting_s"] += (t["waiting_ns"] - old["waiting_ns"]) / 1e9
    for n in by_nice.values():
        n["cpu_s"], n["waiting_s"] = round(n["cpu_s"], 3), round(n["waiting_s"], 3)
    report["threads_by_nice"] = by_nice
    # Context switches (voluntary: the thread slept; involuntary: it was preempted) by
    # thread name, per Approve answered.
    by_name = {}
    for tid, t in after["threads"].items():
        old = before["threads"].get(tid, {}).get("switches", {})
        n = by_name.setdefault(t.get("name", "?"), {"threads": 0, "voluntary": 0, "nonvoluntary": 0})
        n["threads"] += 1
        for kind in ("voluntary", "nonvoluntary"):
            n[kind] += t.get("switches", {}).get(kind, 0) - old.get(kind, 0)
    approves = report["approve_seconds"]["count"]
    for n in by_name.values():
        for kind in ("voluntary", "nonvoluntary"):
            n[f"{kind}_per_approve"] = round(n[kind] / approves, 2) if approves else None
    report["switches_by_thread_name"] = by_name
    # The whole server: how much of the machine it got, and its CPU per Approve answered
    # (warm-up included on both sides).
    seconds = after["at"] - before["at"]
    cpu = sum(n["cpu_s"] for n in by_nice.values())
    approves = report["approve_seconds"]["count"]
    report["seconds"] = round(seconds, 3)
    report["cpu_s"] = round(cpu, 3)
    report["cores_used"] = round(cpu / seconds, 2) if seconds else None
    report["waiting_s"] = round(sum(n["waiting_s"] for n in by_nice.values()), 3)
    report["cpu_us_per_approve"] = round(cpu * 1e6 / approves, 1) if approves else None
    return report


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "snapshot":
        pid, port = sys.argv[2], sys.argv[3]
        print(json.dumps({"at": time.monotonic(), "metrics": histograms(port),
                          "threads": threads(pid)}))
    elif len(sys.argv) == 4 and sys.argv[1] == "diff":
        with open(sys.argv[2]) as b, open(sys.argv[3]) as a:
            print(json.dumps(diff(json.load(b), json.load(a))))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
