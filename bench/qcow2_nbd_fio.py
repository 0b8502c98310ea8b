#!/usr/bin/env python3
"""4 KiB random writes through an NBD export of a qcow2 node with 4 bitmaps (issue 14), side by side
with qemu-storage-daemon in one run: fio's nbd engine (libnbd), IOPS and completion-latency p99.

Servers (each case on a fresh copy of the same image, same socket kind: a Unix socket):
  qsd-4bm   qemu-storage-daemon: blockdev-add qcow2 over file, block-dirty-bitmap-add x4,
            nbd-server-start + block-export-add (writable)
  bm-4bm    BlockMirror: POST /nodes (driver qcow2), POST /nodes/d/bitmaps x4 (not persistent, as
            qsd's), POST /exports (writable), Nbd:Listen on a Unix socket
  bm-4pbm   the same with 4 persistent bitmaps (BlockMirror's journal keeps them exact across kill -9)

The image (--image): "falloc" (default), a 1 GiB qcow2 made by qemu-img create -f qcow2
-o preallocation=falloc, every cluster allocated, so writes go in place (a disk in use); or
"empty", a new 1 GiB qcow2 without preallocation, where every first write into a cluster allocates.
Jobs: randwrite 4 KiB at QD1 and at QD32, --seconds each after a 1 s ramp. Every round runs the
servers in a shuffled order (fixed seed). Each case also reports the server's CPU time
(utime+stime from /proc/PID/stat over the fio run) per 1000 writes, less sensitive to the shared
machine's load than IOPS.

usage: qcow2_nbd_fio.py --dll PATH/BlockMirror.Api.dll [--seconds 8] [--rounds 3] [--image falloc|empty]
Reuses ../shared/peers/qmp.py (relative to the repository root; --peers-dir) for QMP.
"""
import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bm_service  # noqa: E402

qmp = None  # ../shared/peers/qmp.py, imported in main()

GiB = 1 << 30
JOBS = {"randwrite-4k-qd1": ("randwrite", "4k", 1), "randwrite-4k-qd32": ("randwrite", "4k", 32)}
SERVERS = ["qsd-4bm", "bm-4bm", "bm-4pbm"]


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_sock(path, timeout=20):
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise RuntimeError("no socket " + path)
        time.sleep(0.05)


def fio(uri, job, seconds):
    rw, bs, qd = JOBS[job]
    out = subprocess.run(["fio", "--name=j", "--ioengine=nbd", "--uri=" + uri, "--rw=" + rw, "--bs=" + bs,
                          "--iodepth=%d" % qd, "--size=1g", "--time_based", "--runtime=%d" % seconds,
                          "--ramp_time=1", "--randrepeat=0", "--output-format=json"],
                         capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    j = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    side = j["write"]
    p99 = side["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000.0
    return {"iops": side["iops"], "p99_us": p99, "ios": side["total_ios"]}


def make_image(path, kind):
    opts = ["-o", "preallocation=falloc"] if kind == "falloc" else []
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2"] + opts + [path, str(GiB)], check=True)


class Qsd:
    def __init__(self, work, image):
        self.q_sock, self.sock = os.path.join(work, "qmp.sock"), os.path.join(work, "qsd.sock")
        self.p = subprocess.Popen(["qemu-storage-daemon", "--chardev",
                                   "socket,path=%s,server=on,wait=off,id=m" % self.q_sock, "--monitor", "chardev=m"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.p.pid
        self.q = qmp.QMPClient(self.q_sock, connect_timeout=15)
        self.q.execute("blockdev-add", {"driver": "qcow2", "node-name": "d",
                                        "file": {"driver": "file", "filename": image}})
        for i in range(4):
            self.q.execute("block-dirty-bitmap-add", {"node": "d", "name": "b%d" % i})
        self.q.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": self.sock}}})
        self.q.execute("block-export-add", {"type": "nbd", "id": "e", "node-name": "d", "name": "d", "writable": True})
        self.uri = "nbd+unix:///d?socket=" + self.sock

    def stop(self):
        # The image is thrown away: no clean quit (its flush of what fio wrote can take a minute on a busy disk).
        self.q.close()
        self.p.kill()
        self.p.wait()


class BlockMirror:
    def __init__(self, work, image, persistent, dll):
        root = os.path.join(work, "root")
        os.makedirs(root)
        os.rename(image, os.path.join(root, "d.qcow2"))
        self.sock = os.path.join(work, "bm.sock")
        self.svc = bm_service.Service(root, os.path.join(work, "state"), dll=dll, nbd_listen="unix:" + self.sock)
        self.svc.start()
        self.pid = self.svc.proc.pid
        self.svc.post("/api/v1/nodes", {"name": "d", "driver": "qcow2", "path": "d.qcow2"})
        for i in range(4):
            self.svc.post("/api/v1/nodes/d/bitmaps", {"name": "b%d" % i, "persistent": persistent})
        self.svc.post("/api/v1/exports", {"name": "d", "node": "d", "writable": True})
        wait_sock(self.sock)
        self.uri = "nbd+unix:///d?socket=" + self.sock

    def stop(self):
        # As qsd's: killed by its PID, the image is thrown away.
        self.svc.proc.kill()
        self.svc.proc.wait()
        self.svc.proc = None
        self.svc.stop()


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dll", default=bm_service.DEFAULT_DLL)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--image", choices=["falloc", "empty"], default="falloc")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--out", default=None)
    ap.add_argument("--peers-dir", default=bm_service.PEERS, help="where qmp.py is (default ../shared/peers)")
    args = ap.parse_args(argv)
    global qmp
    bm_service.PEERS = os.path.abspath(args.peers_dir)
    _, qmp = bm_service.import_peers()

    servers = args.servers.split(",")
    res = {}
    loads = []
    rng = random.Random(args.seed)
    for rnd in range(args.rounds):
        order = servers[:]
        rng.shuffle(order)
        for name in order:
            for job in args.jobs.split(","):
                # A fresh image per job: what one job allocated does not help the next.
                work = tempfile.mkdtemp(prefix="qcow2fio.", dir=os.environ.get("TMPDIR", "/var/tmp"))
                image = os.path.join(work, "d.qcow2")
                make_image(image, args.image)
                srv = None
                t_start = time.monotonic()
                try:
                    if name == "qsd-4bm":
                        srv = Qsd(work, image)
                    else:
                        srv = BlockMirror(work, image, name == "bm-4pbm", args.dll)
                    t_up = time.monotonic()
                    c0 = proc_cpu(srv.pid)
                    r = fio(srv.uri, job, args.seconds)
                    t_fio = time.monotonic()
                    r["cpu_ms_per_1k"] = (proc_cpu(srv.pid) - c0) * 1e6 / max(r["ios"], 1)
                finally:
                    if srv is not None:
                        srv.stop()
                    shutil.rmtree(work, ignore_errors=True)
                if os.environ.get("BENCH_PHASES"):
                    print("  phases: start %.1f s, fio %.1f s, stop %.1f s" % (t_up - t_start, t_fio - t_up, time.monotonic() - t_fio), flush=True)
                loads.append(os.getloadavg()[0])
                res.setdefault(job, {}).setdefault(name, []).append(r)
                print("round %d %-18s %-8s %8.0f IOPS  p99 %7.0f us  cpu %6.1f ms/1k writes  load %.1f" % (
                    rnd, job, name, r["iops"], r["p99_us"], r["cpu_ms_per_1k"], loads[-1]), flush=True)

    print("\n| job | server | IOPS (median of %d) | p99 us (median) | CPU ms / 1000 writes | IOPS / qsd | p99 / qsd |" % args.rounds)
    print("|---|---|---:|---:|---:|---:|---:|")
    for job, by in res.items():
        base = by.get("qsd-4bm")
        for name, rs in by.items():
            iops, p99, cpu = median([x["iops"] for x in rs]), median([x["p99_us"] for x in rs]), median([x["cpu_ms_per_1k"] for x in rs])
            ratio = "%.2fx" % (iops / median([x["iops"] for x in base])) if base else "-"
            pratio = "%.2fx" % (p99 / median([x["p99_us"] for x in base])) if base else "-"
            print("| %s | %s | %.0f | %.0f | %.1f | %s | %s |" % (job, name, iops, p99, cpu, ratio, pratio))
    machine = "%s, %d cores, image %s, load during the cases %.1f-%.1f (median %.1f)" % (
        platform.platform(), os.cpu_count() or 0, args.image, min(loads or [0]), max(loads or [0]), median(loads or [0]))
    print(machine)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"results": res, "machine": machine, "loads": loads}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
