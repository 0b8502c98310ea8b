#!/usr/bin/env python3
"""The persistent bitmaps' activity log under fio's nbd engine (issue 15 item 3), reusing the peers'
runner (nbd_fio.py: its servers, fresh 1 GiB fallocated file per case, fio job definitions).

  steady: one BlockMirror with 4 persistent bitmaps, randwrite 4k QD1 three times (2 s warm-up,
          6 s, 6 s), /metrics read around each: journal syncs and hot extents.
  ab:     before/after in one run: nbdkit, and BlockMirror with 0 and 4 persistent bitmaps from two
          builds, randwrite 4k QD1 and QD32, seeded shuffled order per round; medians.

usage: activity_log.py steady --dll NEW.dll
       activity_log.py ab --dll BEFORE.dll --dll AFTER.dll [--seconds 6] [--rounds 3]
The peers' directory is --peers-dir (default ../shared/peers, as bench/nbd_stall.py). The image
file is hard-linked into the service's root, so the services run with Storage__AllowHardLinks=true.
"""
import argparse, os, random, re, shutil, subprocess, sys, tempfile

ap = argparse.ArgumentParser()
ap.add_argument("mode", choices=["steady", "ab"])
ap.add_argument("--dll", action="append", required=True)
ap.add_argument("--seconds", type=int, default=6)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--peers-dir", default="../shared/peers")
a = ap.parse_args()
sys.path.insert(0, os.path.abspath(a.peers_dir))
os.environ["Storage__AllowHardLinks"] = "true"
import nbd_fio as n  # noqa: E402


def scrape(url, name):
    _, body = n.http("GET", url + "/metrics")
    m = re.search(r"^%s(?:\{[^}]*\})? (\S+)" % name, body.decode(), re.M)
    return float(m.group(1)) if m else 0.0


def fresh_file():
    work = tempfile.mkdtemp(prefix="bmal.", dir=os.environ.get("TMPDIR", "/var/tmp"))
    f = os.path.join(work, "d.img")
    subprocess.run(["fallocate", "-l", str(n.GiB), f], check=True)
    return work, f


def steady(dll):
    work, f = fresh_file()
    srv = n.BlockMirror(work, f, 4, True, dll)
    try:
        for label, secs in (("warm-up", 2), ("hot", a.seconds), ("hot again", a.seconds)):
            s0 = scrape(srv.url, "blockmirror_journal_syncs_total")
            r = n.fio(srv.uri, "randwrite-4k-qd1", secs)
            s1 = scrape(srv.url, "blockmirror_journal_syncs_total")
            hot = scrape(srv.url, "blockmirror_journal_hot_extents")
            print("%-9s %6.0f IOPS p99 %6.0f us  journal syncs %d  hot extents %d" % (label, r["iops"], r["p99_us"], s1 - s0, hot), flush=True)
    finally:
        srv.stop(); shutil.rmtree(work, ignore_errors=True)


def ab(before, after):
    jobs = ["randwrite-4k-qd1", "randwrite-4k-qd32"]
    servers = {"nbdkit-file": lambda w, f: n.Nbdkit(w, f),
               "before-0bm": lambda w, f: n.BlockMirror(w, f, 0, False, before),
               "before-4pbm": lambda w, f: n.BlockMirror(w, f, 4, True, before),
               "after-0bm": lambda w, f: n.BlockMirror(w, f, 0, False, after),
               "after-4pbm": lambda w, f: n.BlockMirror(w, f, 4, True, after)}
    res = {}
    rnd = random.Random(15)
    for r in range(a.rounds):
        order = list(servers); rnd.shuffle(order)
        for s in order:
            work, f = fresh_file()
            srv = servers[s](work, f)
            try:
                for job in jobs:
                    x = n.fio(srv.uri, job, a.seconds)
                    res.setdefault(job, {}).setdefault(s, []).append(x)
                    print("%-18s %-12s round %d %9.0f IOPS  p99 %8.0f us" % (job, s, r, x["iops"], x["p99_us"]), flush=True)
            finally:
                srv.stop(); shutil.rmtree(work, ignore_errors=True)
    print("\nmedian (lower middle) per job; 4pbm / 0bm of the same build:")
    for job, by in res.items():
        med = {s: sorted(v, key=lambda x: x["iops"])[(len(v) - 1) // 2] for s, v in by.items()}
        for s in servers:
            print("%-18s %-12s %9.0f IOPS  p99 %8.0f us" % (job, s, med[s]["iops"], med[s]["p99_us"]))
        for b in ("before", "after"):
            print("%-18s %-12s 4pbm/0bm = %.2f" % (job, b, med[b + "-4pbm"]["iops"] / med[b + "-0bm"]["iops"]))


if a.mode == "steady":
    steady(a.dll[0])
else:
    if len(a.dll) != 2:
        sys.exit("ab needs --dll BEFORE --dll AFTER")
    ab(a.dll[0], a.dll[1])
