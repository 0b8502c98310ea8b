#!/usr/bin/env python3
"""qcow2 mirror benchmark: BlockMirror side by side with qemu-storage-daemon, in one run.

Source: a 1 GiB qcow2 image fully written with random data (qemu-img convert -O qcow2 of a random
raw file; 64 KiB clusters). Each case mirrors it to READY, sync=full, copy-mode background:

  qsd-q2q  qemu-storage-daemon: blockdev-add src (qcow2 over file, read-only), tgt (qcow2 over file,
           made by qemu-img create -f qcow2 first), blockdev-mirror -> BLOCK_JOB_READY
  qsd-q2r  the same into a sparse raw file (raw over file)
  bm-q2q   BlockMirror: POST /nodes src (qcow2, readOnly), tgt (qcow2, create), POST /jobs/mirror
           -> BLOCK_JOB_READY (SSE)
  bm-q2r   the same into a raw node (create: sparse file)

Timed: from the mirror command to the READY event (the target holds a full copy), then the job is
cancelled (the target keeps it) and fsync(target) is timed on top ("durable"). Node/target creation
and removal are untimed. Caches are dropped before every timed run (root), every case runs once per
rep, the case order is shuffled per rep with a fixed seed. The service binary is a published
BlockMirror.Api.dll (--dll; dotnet publish src/BlockMirror.Api -c Release -o DIR). Targets are
verified equal to the source with qemu-img compare on the first rep.

Reuses ../shared/peers/qmp.py (relative to the repository root; --peers-dir) for QMP.
"""

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bm_service  # noqa: E402

qmp = None  # ../shared/peers/qmp.py, imported in main() (--peers-dir)

MiB, GiB = 1 << 20, 1 << 30
CASES = ["qsd-q2q", "qsd-q2r", "bm-q2q", "bm-q2r"]


def run(argv):
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rm(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def make_source(root, size, seed):
    """A fully written qcow2 image: random data in every cluster (qemu-img convert -O qcow2 of a random raw file)."""
    src = os.path.join(root, "src.qcow2")
    if os.path.exists(src):
        return src
    raw = os.path.join(root, "src-random.raw")
    rng = random.Random(seed)
    with open(raw, "wb") as f:
        for _ in range(size // (4 * MiB)):
            f.write(rng.randbytes(4 * MiB))
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, src])
    rm(raw)
    return src


def qsd_case(args, root, src, target_kind):
    dst = os.path.join(root, "qsd-target." + ("qcow2" if target_kind == "qcow2" else "raw"))
    rm(dst)
    if target_kind == "qcow2":
        run(["qemu-img", "create", "-q", "-f", "qcow2", dst, str(args.size)])
    else:
        with open(dst, "wb") as f:
            f.truncate(args.size)
    sock = os.path.join(args.dir, "qmp.sock")
    rm(sock)
    p = subprocess.Popen(["qemu-storage-daemon", "--chardev", "socket,path=%s,server=on,wait=off,id=qmp0" % sock,
                          "--monitor", "chardev=qmp0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    q = None
    try:
        q = qmp.QMPClient(sock, connect_timeout=15)
        q.execute("blockdev-add", {"driver": "qcow2", "node-name": "src", "read-only": True,
                                   "file": {"driver": "file", "filename": src, "read-only": True}})
        q.execute("blockdev-add", {"driver": target_kind, "node-name": "tgt",
                                   "file": {"driver": "file", "filename": dst}})
        args_mirror = {"job-id": "m", "device": "src", "target": "tgt", "sync": "full", "copy-mode": "background"}
        drop_caches()
        t0 = time.monotonic()
        q.execute("blockdev-mirror", args_mirror)
        ev = q.job_wait("m", "BLOCK_JOB_READY", timeout=900)
        t_ready = ev["recv_monotonic"] - t0
        q.execute("job-cancel", {"id": "m"})
        # QEMU ends a ready mirror cancelled by the user with BLOCK_JOB_CANCELLED (the target keeps its copy).
        q.job_wait("m", "BLOCK_JOB_CANCELLED", timeout=900)
        fsync_path(dst)
        t_durable = time.monotonic() - t0
        q.execute("blockdev-del", {"node-name": "tgt"})
        q.execute("blockdev-del", {"node-name": "src"})
        q.execute("quit", timeout=10)
    finally:
        if q is not None:
            q.close()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return t_ready, t_durable, dst


def bm_case(args, svc, root, src, target_kind, seq):
    rel = "bm-target." + ("qcow2" if target_kind == "qcow2" else "raw")
    dst = os.path.join(root, rel)
    rm(dst)
    svc.post("/api/v1/nodes", {"name": "src", "driver": "qcow2", "path": os.path.basename(src), "readOnly": True})
    svc.post("/api/v1/nodes", {"name": "tgt", "driver": target_kind, "path": rel, "create": {"size": args.size}})
    job = "m%d" % seq
    try:
        drop_caches()
        t0 = time.monotonic()
        svc.post("/api/v1/jobs/mirror", {"id": job, "device": "src", "target": "tgt", "sync": "full"})
        ev = svc.sse.wait("BLOCK_JOB_READY", job, after=t0)
        t_ready = ev["recv_monotonic"] - t0
        svc.post("/api/v1/jobs/%s/cancel" % job)
        svc.sse.wait(("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), job, after=t0)
        fsync_path(dst)
        t_durable = time.monotonic() - t0
    finally:
        svc.sse.drop_job(job)
        svc.remove_node("tgt")
        svc.remove_node("src")
    return t_ready, t_durable, dst


def verify(src, dst, kind):
    r = subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", kind, src, dst])
    return r.returncode == 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/qcow2-bench", help="work folder (images under DIR/images)")
    ap.add_argument("--dll", default=bm_service.DEFAULT_DLL, help="published BlockMirror.Api.dll")
    ap.add_argument("--size", type=int, default=GiB)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--peers-dir", default=bm_service.PEERS, help="where qmp.py is (default ../shared/peers)")
    args = ap.parse_args(argv)
    global qmp
    bm_service.PEERS = os.path.abspath(args.peers_dir)
    _, qmp = bm_service.import_peers()

    root = os.path.join(args.dir, "images")
    os.makedirs(root, exist_ok=True)
    src = make_source(root, args.size, args.seed)
    svc = bm_service.Service(root, os.path.join(args.dir, "state"), dll=args.dll)
    svc.start()
    svc.start_sse()
    results = {c: {"ready": [], "durable": []} for c in CASES}
    verified = {}
    order_rng = random.Random(args.seed)
    seq = 0
    try:
        for rep in range(args.reps):
            order = CASES[:]
            order_rng.shuffle(order)
            for case in order:
                seq += 1
                kind = "qcow2" if case.endswith("q2q") else "raw"
                if case.startswith("qsd"):
                    t_ready, t_durable, dst = qsd_case(args, root, src, kind)
                else:
                    t_ready, t_durable, dst = bm_case(args, svc, root, src, kind, seq)
                if rep == 0:
                    verified[case] = verify(src, dst, kind)
                rm(dst)
                results[case]["ready"].append(t_ready)
                results[case]["durable"].append(t_durable)
                print("rep %d %-8s ready %.2f s, durable %.2f s" % (rep, case, t_ready, t_durable), flush=True)
    finally:
        svc.stop()

    lines = ["| case | to READY (median of %d) | MiB/s | durable (median) | runs (READY, s) | verified |" % args.reps,
             "|---|---:|---:|---:|---|---|"]
    for case in CASES:
        r, d = results[case]["ready"], results[case]["durable"]
        med = statistics.median(r)
        lines.append("| %s | %.2f s | %.0f | %.2f s | %s | %s |" % (
            case, med, args.size / MiB / med, statistics.median(d), ", ".join("%.2f" % x for x in r),
            "yes" if verified.get(case) else "NO"))
    table = "\n".join(lines)
    print(table)
    machine = "%s, %d cores, load %s" % (platform.platform(), os.cpu_count() or 0, " ".join("%.1f" % x for x in os.getloadavg()))
    print(machine)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"results": results, "verified": verified, "machine": machine, "size": args.size}, f, indent=1)
    return 0 if all(verified.get(c) for c in CASES) else 1


if __name__ == "__main__":
    sys.exit(main())
