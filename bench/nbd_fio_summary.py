#!/usr/bin/env python3
"""Summarizes runs of ../shared/peers/nbd_fio.py (its --out JSON files) side by side.

usage: python3 bench/nbd_fio_summary.py before=a1.json,a2.json after=b1.json,b2.json

Each file is one nbd_fio.py run: every server (nbdkit, qemu-storage-daemon, BlockMirror) in the
same minutes, ROUNDS rounds each. For every job and server it prints the median over all rounds
of all files of a label, with min-max, the median p99, and the ratio to nbdkit's file plugin
taken within each run (the median of the per-run ratios: peers are compared in one run, never
across runs, since this machine's load moves every figure). nbd_fio.py's own "median" of two
rounds is the higher one; this script reports true medians.
"""
import json
import statistics
import sys

SERVERS = ["nbdkit-file", "qsd-0bm", "qsd-4bm", "blockmirror-0bm", "blockmirror-4bm", "blockmirror-4pbm"]


def median(values):
    return statistics.median(values) if values else float("nan")


def main():
    labels = []
    for arg in sys.argv[1:]:
        label, _, files = arg.partition("=")
        runs = [json.load(open(f)) for f in files.split(",")]
        labels.append((label, runs))
    jobs = []
    for _, runs in labels:
        for run in runs:
            for job in run:
                if job not in jobs:
                    jobs.append(job)
    unit = lambda job: "MB/s" if job.startswith("write-1m") else "IOPS"
    print("| job | server | " + " | ".join("%s median (min-max) | p99 µs | ×nbdkit" % label for label, _ in labels) + " |")
    print("|---|---|" + "---:|---:|---:|" * len(labels))
    for job in jobs:
        for server in SERVERS:
            cells = []
            for label, runs in labels:
                values, p99s, ratios = [], [], []
                for run in runs:
                    rs = run.get(job, {}).get(server, [])
                    kit = run.get(job, {}).get("nbdkit-file", [])
                    key = "MBps" if unit(job) == "MB/s" else "iops"
                    values += [r[key] for r in rs]
                    p99s += [r["p99_us"] for r in rs]
                    if rs and kit:
                        ratios.append(median([r[key] for r in rs]) / median([r[key] for r in kit]))
                if not values:
                    cells.append("| | ")
                    continue
                fmt = (lambda v: "%.0f" % v) if unit(job) == "MB/s" else (lambda v: "%.1fk" % (v / 1000))
                cells.append("%s (%s-%s) | %.0f | %.2f" % (fmt(median(values)), fmt(min(values)), fmt(max(values)), median(p99s), median(ratios)))
            if any(c != "| " for c in cells):
                print("| %s (%s) | %s | %s |" % (job, unit(job), server, " | ".join(cells)))


if __name__ == "__main__":
    main()
