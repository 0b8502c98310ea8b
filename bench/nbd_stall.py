#!/usr/bin/env python3
"""Regression check: 4 KiB random reads through an NBD export right after 4 KiB random writes.

The sequence of the data-path issue's table (../shared/peers/nbd_fio.py), run repeatedly: per
round and server, a fresh fallocated image and a fresh server, then with fio's nbd engine
(libnbd) randwrite 4k QD1, randwrite 4k QD32 and randread 4k QD32, SECONDS each. It checks the
read job, where BlockMirror once stalled for a second at a time (bench/README.md, "NBD reads
stalled after random writes"): per run IOPS, p99, p99.9 and the worst second (the lowest IOPS
of any one-second window and the longest completion in it, from fio's per-second logs). The
read job has no ramp time, so the first second after the writes counts.

usage (repository root; publish first: dotnet publish src/BlockMirror.Api -c Release -o DIR):
  python3 bench/nbd_stall.py --dll DIR/BlockMirror.Api.dll [--rounds 5] [--seconds 6]
  python3 bench/nbd_stall.py --dll old=/tmp/a/BlockMirror.Api.dll --dll new=/tmp/b/BlockMirror.Api.dll \\
      --peers nbdkit,qsd          # several builds and the peers interleaved in one run

Exit status 1 when a BlockMirror run's read p99.9 exceeds --max-p999-ms or its worst second
falls below --min-worst-iops (defaults flag a stall, not the noise of a shared machine); 0
otherwise. Results: printed, and as JSON in --out.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bm_service  # noqa: E402

GiB = 1 << 30
SEQUENCE = [("randwrite", 1, True), ("randwrite", 32, True), ("randread", 32, False)]  # (rw, QD, ramp)


def wait_path(path, timeout=20):
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise RuntimeError("no socket " + path)
        time.sleep(0.05)


class BlockMirror:
    def __init__(self, work, image, dll):
        root = os.path.join(work, "root")
        os.makedirs(root)
        os.link(image, os.path.join(root, "d.img"))
        self.sock = os.path.join(work, "bm.sock")
        self.svc = bm_service.Service(root, os.path.join(work, "state"), dll=dll, nbd_listen="unix:" + self.sock).start()
        self.svc.add_node("d", "d.img")
        self.svc.post("/api/v1/exports", {"name": "d", "node": "d", "writable": True})
        self.uri = "nbd+unix:///d?socket=" + self.sock

    def stop(self):
        self.svc.stop()


class Nbdkit:
    def __init__(self, work, image):
        self.sock = os.path.join(work, "kit.sock")
        self.p = subprocess.Popen(["nbdkit", "-f", "--unix", self.sock, "file", "file=" + image],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_path(self.sock)
        self.uri = "nbd+unix:///?socket=" + self.sock

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(15)


class Qsd:
    def __init__(self, work, image):
        _, qmp = bm_service.import_peers()
        qmp_sock, self.sock = os.path.join(work, "qmp.sock"), os.path.join(work, "qsd.sock")
        self.p = subprocess.Popen(["qemu-storage-daemon", "--chardev", "socket,path=%s,server=on,wait=off,id=m" % qmp_sock,
                                   "--monitor", "chardev=m"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.q = qmp.QMPClient(qmp_sock, connect_timeout=15)
        self.q.execute("blockdev-add", {"driver": "raw", "node-name": "d", "file": {"driver": "file", "filename": image}})
        self.q.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": self.sock}}})
        self.q.execute("block-export-add", {"type": "nbd", "id": "e", "node-name": "d", "name": "d", "writable": True})
        self.uri = "nbd+unix:///d?socket=" + self.sock

    def stop(self):
        try:
            self.q.execute("quit", timeout=10)
        except Exception:  # noqa: BLE001 - it may quit before answering
            pass
        self.q.close()
        self.p.wait(15)


def read_log(path):
    """fio per-window log: [(end_ms, value)]."""
    rows = []
    with open(path) as f:
        for line in f:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 2:
                rows.append((int(parts[0]), int(parts[1])))
    return rows


def fio(uri, rw, qd, seconds, ramp, logdir, bs="4k"):
    prefix = os.path.join(logdir, "%s%d" % (rw, qd))
    args = ["fio", "--name=j", "--ioengine=nbd", "--uri=" + uri, "--rw=" + rw, "--bs=" + bs, "--iodepth=%d" % qd,
            "--size=1g", "--time_based", "--runtime=%d" % seconds, "--randrepeat=0", "--output-format=json",
            "--percentile_list=50:99:99.9", "--log_avg_msec=1000", "--log_max_value=1",
            "--write_iops_log=" + prefix, "--write_lat_log=" + prefix]
    if ramp:
        args.append("--ramp_time=1")
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError("fio failed: " + out.stderr[-2000:])
    job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    side = job["write"] if "write" in rw else job["read"]
    pct = side["clat_ns"].get("percentile", {})
    r = {"iops": side["iops"], "p99_ms": pct.get("99.000000", 0) / 1e6, "p999_ms": pct.get("99.900000", 0) / 1e6,
         "max_ms": side["clat_ns"]["max"] / 1e6}
    # log_max_value=1: the clat log holds each second's longest completion (ns); the iops log the
    # second's IOPS. Whole windows only (fio's last window may be partial).
    iops = read_log(prefix + "_iops.1.log")
    clat = read_log(prefix + "_clat.1.log")
    whole = iops[:seconds] if len(iops) > seconds else iops
    if whole:
        worst = min(whole, key=lambda row: row[1])
        # The two logs close their windows at slightly different times: take the nearest.
        longest = min(clat, key=lambda row: abs(row[0] - worst[0]))[1] if clat else 0
        r["worst_second"] = {"at_s": round(worst[0] / 1000.0), "iops": worst[1], "max_ms": longest / 1e6}
        r["per_second_iops"] = [v for _, v in whole]
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dll", action="append", required=True, help="PATH or LABEL=PATH of a published BlockMirror.Api.dll (repeatable)")
    ap.add_argument("--peers", default="", help="comma list of nbdkit,qsd to run beside it")
    ap.add_argument("--peers-dir", default=bm_service.PEERS, help="where qmp.py is (qsd only; default ../shared/peers)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--read-bs", default="4k", help="block size of the read job (the writes stay 4k)")
    ap.add_argument("--max-p999-ms", type=float, default=100.0)
    ap.add_argument("--min-worst-iops", type=float, default=1000.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "nbd_stall.json"))
    a = ap.parse_args()
    bm_service.PEERS = os.path.abspath(a.peers_dir)

    servers = {}
    for d in a.dll:
        label, _, path = d.rpartition("=")
        label = "blockmirror" + ("-" + label if label else "")
        if not os.path.isfile(path):
            sys.exit("error: %s not found; publish first: dotnet publish src/BlockMirror.Api -c Release -o DIR" % path)
        servers[label] = (lambda p: lambda w, f: BlockMirror(w, f, p))(path)
    for p in filter(None, a.peers.split(",")):
        servers[{"nbdkit": "nbdkit-file", "qsd": "qsd"}[p]] = {"nbdkit": Nbdkit, "qsd": Qsd}[p]

    rnd = random.Random(a.seed)
    results = {s: [] for s in servers}
    for round_no in range(a.rounds):
        order = list(servers)
        rnd.shuffle(order)
        for name in order:
            work = tempfile.mkdtemp(prefix="nbdstall.", dir=os.environ.get("TMPDIR", "/var/tmp"))
            try:
                image = os.path.join(work, "d.img")
                subprocess.run(["fallocate", "-l", str(GiB), image], check=True)
                srv = servers[name](work, image)
                try:
                    run = {"round": round_no, "load": os.getloadavg()[0]}
                    for rw, qd, ramp in SEQUENCE:
                        bs = a.read_bs if rw == "randread" else "4k"
                        run["%s%d" % (rw, qd)] = fio(srv.uri, rw, qd, a.seconds, ramp, work, bs)
                finally:
                    srv.stop()
            finally:
                shutil.rmtree(work, ignore_errors=True)
            results[name].append(run)
            r, w = run["randread32"], run["randread32"].get("worst_second", {})
            print("round %d %-20s writes %6.0f / %6.0f IOPS | read %7.0f IOPS p99 %7.1f ms p99.9 %7.1f ms max %7.1f ms"
                  " | worst second %6d IOPS (max %.1f ms, s%s) | load %.1f" %
                  (round_no, name, run["randwrite1"]["iops"], run["randwrite32"]["iops"], r["iops"], r["p99_ms"],
                   r["p999_ms"], r["max_ms"], w.get("iops", -1), w.get("max_ms", 0), w.get("at_s", "?"), run["load"]),
                  flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)

    print("\nrandread %s QD32 after the writes, over %d rounds (median / worst):" % (a.read_bs, a.rounds))
    failed = []
    for name, runs in results.items():
        reads = [run["randread32"] for run in runs]
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        p999 = [r["p999_ms"] for r in reads]
        worst = [r.get("worst_second", {}).get("iops", 0) for r in reads]
        print("  %-20s IOPS %7.0f / %7.0f  p99 %6.1f / %6.1f ms  p99.9 %6.1f / %6.1f ms  worst second %6d / %6d IOPS" %
              (name, med([r["iops"] for r in reads]), min(r["iops"] for r in reads), med([r["p99_ms"] for r in reads]),
               max(r["p99_ms"] for r in reads), med(p999), max(p999), med(worst), min(worst)))
        if name.startswith("blockmirror"):
            for run, r, ws in zip(runs, reads, worst):
                if r["p999_ms"] > a.max_p999_ms or ws < a.min_worst_iops:
                    failed.append("%s round %d: p99.9 %.1f ms, worst second %d IOPS" % (name, run["round"], r["p999_ms"], ws))
    if failed:
        print("\nFAIL (p99.9 > %.0f ms or a second under %.0f IOPS):\n  %s" % (a.max_p999_ms, a.min_worst_iops, "\n  ".join(failed)))
        return 1
    print("\nOK: every BlockMirror read run had p99.9 <= %.0f ms and no second under %.0f IOPS" % (a.max_p999_ms, a.min_worst_iops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
