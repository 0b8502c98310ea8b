#!/usr/bin/env python3
"""cache.direct (O_DIRECT) through NBD, side by side in one run with its peers: fio's nbd engine.

Servers, each on a fresh 1 GiB fallocated file per round, in a shuffled order per round:
  blockmirror           the node as it is by default (page cache)
  blockmirror-direct    the node with cache: {direct: true}
  qsd / qsd-direct      qemu-storage-daemon, file node with cache.direct off / on (aio=threads)
  nbdkit / nbdkit-none  nbdkit's file plugin, default and cache=none (nbdkit has no O_DIRECT:
                        cache=none evicts written pages with fadvise/sync_file_range instead)
Jobs: 1 MiB sequential writes at QD16, 4 KiB random writes at QD1 and QD32, 4 KiB random reads at
QD32 (after the writes, so the file is allocated), SECONDS each with a 1 s ramp.

usage (repository root; publish first: dotnet publish src/BlockMirror.Api -c Release -o DIR):
  python3 bench/nbd_direct.py --dll DIR/BlockMirror.Api.dll [--seconds 6] [--rounds 2] [--servers a,b]
Prints every run and the medians with the ratio to blockmirror-direct; JSON in --out.
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
JOBS = {"write-1m-qd16": ("write", "1m", 16), "randwrite-4k-qd1": ("randwrite", "4k", 1),
        "randwrite-4k-qd32": ("randwrite", "4k", 32), "randread-4k-qd32": ("randread", "4k", 32)}


def wait_path(path, timeout=20):
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise RuntimeError("no socket " + path)
        time.sleep(0.05)


class BlockMirror:
    def __init__(self, work, image, dll, direct):
        root = os.path.join(work, "root")
        os.makedirs(root)
        os.link(image, os.path.join(root, "d.img"))
        self.sock = os.path.join(work, "bm.sock")
        self.svc = bm_service.Service(root, os.path.join(work, "state"), dll=dll, nbd_listen="unix:" + self.sock,
                                      extra_args=["--Storage:AllowHardLinks", "true"]).start()
        self.svc.post("/api/v1/nodes", {"name": "d", "driver": "raw", "path": "d.img", "cache": {"direct": direct}})
        self.svc.post("/api/v1/exports", {"name": "d", "node": "d", "writable": True})
        self.uri = "nbd+unix:///d?socket=" + self.sock

    def stop(self):
        self.svc.stop()


class Nbdkit:
    def __init__(self, work, image, cache):
        self.sock = os.path.join(work, "kit.sock")
        args = ["nbdkit", "-f", "--unix", self.sock, "file", "file=" + image] + (["cache=" + cache] if cache else [])
        self.p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_path(self.sock)
        self.uri = "nbd+unix:///?socket=" + self.sock

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(15)


class Qsd:
    def __init__(self, work, image, direct):
        _, qmp = bm_service.import_peers()
        qmp_sock, self.sock = os.path.join(work, "qmp.sock"), os.path.join(work, "qsd.sock")
        self.p = subprocess.Popen(["qemu-storage-daemon", "--chardev", "socket,path=%s,server=on,wait=off,id=m" % qmp_sock,
                                   "--monitor", "chardev=m"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.q = qmp.QMPClient(qmp_sock, connect_timeout=15)
        self.q.execute("blockdev-add", {"driver": "raw", "node-name": "d", "cache": {"direct": direct},
                                        "file": {"driver": "file", "filename": image, "cache": {"direct": direct}}})
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


def fio(uri, job, seconds):
    rw, bs, qd = JOBS[job]
    out = subprocess.run(["fio", "--name=j", "--ioengine=nbd", "--uri=" + uri, "--rw=" + rw, "--bs=" + bs,
                          "--iodepth=%d" % qd, "--size=1g", "--time_based", "--runtime=%d" % seconds,
                          "--ramp_time=1", "--randrepeat=0", "--output-format=json"],
                         capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    j = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    side = j["write"] if "write" in rw else j["read"]
    p99 = side["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000.0
    return {"iops": side["iops"], "MBps": side["bw_bytes"] / 1e6, "p99_us": p99}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dll", default=bm_service.DEFAULT_DLL)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--servers", default="", help="comma list (default: all)")
    ap.add_argument("--out", default="nbd_direct.json")
    a = ap.parse_args()
    servers = {"blockmirror": lambda w, f: BlockMirror(w, f, a.dll, False),
               "blockmirror-direct": lambda w, f: BlockMirror(w, f, a.dll, True),
               "qsd": lambda w, f: Qsd(w, f, False), "qsd-direct": lambda w, f: Qsd(w, f, True),
               "nbdkit": lambda w, f: Nbdkit(w, f, None), "nbdkit-none": lambda w, f: Nbdkit(w, f, "none")}
    if a.servers:
        servers = {k: v for k, v in servers.items() if k in a.servers.split(",")}
    res = {}
    order_random = random.Random(7)
    print("load average at start: %.2f %.2f %.2f" % os.getloadavg(), flush=True)
    for round_i in range(a.rounds):
        order = list(servers)
        order_random.shuffle(order)
        for name in order:
            work = tempfile.mkdtemp(prefix="nbddirect.", dir=os.environ.get("TMPDIR", "/var/tmp"))
            image = os.path.join(work, "d.img")
            subprocess.run(["fallocate", "-l", str(GiB), image], check=True)
            server = servers[name](work, image)
            try:
                for job in a.jobs.split(","):
                    r = fio(server.uri, job, a.seconds)
                    r["load1"] = os.getloadavg()[0]
                    res.setdefault(job, {}).setdefault(name, []).append(r)
                    print("%-18s %-19s round %d %9.0f IOPS %8.1f MB/s  p99 %8.0f us  load %.2f" %
                          (job, name, round_i, r["iops"], r["MBps"], r["p99_us"], r["load1"]), flush=True)
            finally:
                server.stop()
                shutil.rmtree(work, ignore_errors=True)
    print("load average at end: %.2f %.2f %.2f" % os.getloadavg())
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print("\nmedian over rounds (ratio = this server's IOPS / blockmirror-direct's):")
    for job, by in res.items():
        def median(rs):
            return sorted(rs, key=lambda x: x["iops"])[len(rs) // 2]
        base = median(by["blockmirror-direct"])["iops"] if "blockmirror-direct" in by else 1
        for name, rs in by.items():
            m = median(rs)
            print("%-18s %-19s %9.0f IOPS %8.1f MB/s  p99 %8.0f us  %.2fx" % (job, name, m["iops"], m["MBps"], m["p99_us"], m["iops"] / base))


if __name__ == "__main__":
    main()
