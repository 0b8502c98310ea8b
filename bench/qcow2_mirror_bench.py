#!/usr/bin/env python3
"""qcow2 mirror benchmark: BlockMirror side by side with qemu-storage-daemon, in one run (issue 14).

Sources (64 KiB clusters, made once under DIR/images and reused):
  full    a 1 GiB qcow2 fully written with random data (qemu-img convert -O qcow2 of a random raw file)
  sparse  an 8 GiB qcow2 holding 1 GiB of random data, scattered: 4096 pieces of 256 KiB at random
          256 KiB-aligned places (qemu-img convert -O qcow2 of a sparse raw file; holes stay holes)

Each source is mirrored to READY, sync=full, copy-mode background, by each of:
  qsd-q2q  qemu-storage-daemon: blockdev-add src (qcow2 over file, read-only), tgt (qcow2 over file,
           made by qemu-img create -f qcow2 first), blockdev-mirror -> BLOCK_JOB_READY
  qsd-q2r  the same into a sparse raw file (raw over file)
  bm-q2q   BlockMirror: POST /nodes src (qcow2, readOnly), tgt (qcow2, create), POST /jobs/mirror
           -> BLOCK_JOB_READY (SSE)
  bm-q2r   the same into a raw node (create: sparse file)

Timed: from the mirror command to the READY event (the target holds a full copy), then the job is
cancelled (the target keeps it) and fsync(target) is timed on top ("durable"). CPU: the server
process's utime+stime over the same window (mirror command to the end of the cancel), from
/proc/PID/stat; less sensitive to a shared machine's load than the wall time. Node/target creation
and removal are untimed. Caches are dropped before every timed run (root), every case runs once per
rep, the case order is shuffled per rep with a fixed seed. The service binary is a published
BlockMirror.Api.dll (--dll; dotnet publish src/BlockMirror.Api -c Release -o DIR); two warm-up
BlockMirror mirrors (untimed, into qcow2 and raw) pay the JIT first. Targets are verified equal to the source with
qemu-img compare on the first rep.

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
SERVERS = ["qsd-q2q", "qsd-q2r", "bm-q2q", "bm-q2r"]
SOURCES = {"full": (GiB, None), "sparse": (8 * GiB, 4096)}  # name: (virtual size, pieces of 256 KiB or None = all)
PIECE = 256 << 10


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


def proc_cpu(pid):
    """utime + stime of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_source(root, name, seed):
    """The source image (see the module's doc), made once."""
    size, pieces = SOURCES[name]
    src = os.path.join(root, "src-%s.qcow2" % name)
    if os.path.exists(src):
        return src
    raw = os.path.join(root, "src-%s.raw" % name)
    rng = random.Random(seed)
    with open(raw, "wb") as f:
        if pieces is None:
            for _ in range(size // (4 * MiB)):
                f.write(rng.randbytes(4 * MiB))
        else:
            f.truncate(size)
            for slot in sorted(rng.sample(range(size // PIECE), pieces)):
                f.seek(slot * PIECE)
                f.write(rng.randbytes(PIECE))
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, src])
    rm(raw)
    return src


def qsd_case(args, root, src, size, target_kind):
    dst = os.path.join(root, "qsd-target." + ("qcow2" if target_kind == "qcow2" else "raw"))
    rm(dst)
    if target_kind == "qcow2":
        run(["qemu-img", "create", "-q", "-f", "qcow2", dst, str(size)])
    else:
        with open(dst, "wb") as f:
            f.truncate(size)
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
        c0 = proc_cpu(p.pid)
        t0 = time.monotonic()
        q.execute("blockdev-mirror", args_mirror)
        ev = q.job_wait("m", "BLOCK_JOB_READY", timeout=900)
        t_ready = ev["recv_monotonic"] - t0
        q.execute("job-cancel", {"id": "m"})
        # QEMU ends a ready mirror cancelled by the user with BLOCK_JOB_CANCELLED (the target keeps its copy).
        q.job_wait("m", "BLOCK_JOB_CANCELLED", timeout=900)
        cpu = proc_cpu(p.pid) - c0
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
    return t_ready, t_durable, cpu, dst


def bm_case(args, svc, root, src, size, target_kind, seq):
    rel = "bm-target." + ("qcow2" if target_kind == "qcow2" else "raw")
    dst = os.path.join(root, rel)
    rm(dst)
    svc.post("/api/v1/nodes", {"name": "src", "driver": "qcow2", "path": os.path.basename(src), "readOnly": True})
    svc.post("/api/v1/nodes", {"name": "tgt", "driver": target_kind, "path": rel, "create": {"size": size}})
    job = "m%d" % seq
    try:
        drop_caches()
        c0 = proc_cpu(svc.proc.pid)
        t0 = time.monotonic()
        svc.post("/api/v1/jobs/mirror", {"id": job, "device": "src", "target": "tgt", "sync": "full"})
        ev = svc.sse.wait("BLOCK_JOB_READY", job, after=t0)
        t_ready = ev["recv_monotonic"] - t0
        svc.post("/api/v1/jobs/%s/cancel" % job)
        svc.sse.wait(("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), job, after=t0)
        cpu = proc_cpu(svc.proc.pid) - c0
        fsync_path(dst)
        t_durable = time.monotonic() - t0
    finally:
        svc.sse.drop_job(job)
        svc.remove_node("tgt")
        svc.remove_node("src")
    return t_ready, t_durable, cpu, dst


def verify(src, dst, kind):
    r = subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", kind, src, dst])
    return r.returncode == 0


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/qcow2-bench", help="work folder (images under DIR/images)")
    ap.add_argument("--dll", default=bm_service.DEFAULT_DLL, help="published BlockMirror.Api.dll")
    ap.add_argument("--sources", default="full,sparse", help="comma list of: " + ", ".join(SOURCES))
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma list of: " + ", ".join(SERVERS))
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
    sources = {name: make_source(root, name, args.seed) for name in args.sources.split(",")}
    cases = [(source, server) for source in sources for server in args.servers.split(",")]
    svc = bm_service.Service(root, os.path.join(args.dir, "state"), dll=args.dll)
    svc.start()
    svc.start_sse()
    results = {"%s/%s" % c: {"ready": [], "durable": [], "cpu": []} for c in cases}
    verified = {}
    loads = []
    order_rng = random.Random(args.seed)
    seq = 0
    try:
        if any(server.startswith("bm") for _, server in cases):
            # The first mirror of a process pays the JIT: once per target format, untimed.
            first = next(iter(sources))
            for kind in ("qcow2", "raw"):
                seq += 1
                rm(bm_case(args, svc, root, sources[first], SOURCES[first][0], kind, seq)[3])
        for rep in range(args.reps):
            order = cases[:]
            order_rng.shuffle(order)
            for source, server in order:
                seq += 1
                key = "%s/%s" % (source, server)
                kind = "qcow2" if server.endswith("q2q") else "raw"
                size = SOURCES[source][0]
                if server.startswith("qsd"):
                    t_ready, t_durable, cpu, dst = qsd_case(args, root, sources[source], size, kind)
                else:
                    t_ready, t_durable, cpu, dst = bm_case(args, svc, root, sources[source], size, kind, seq)
                if rep == 0:
                    verified[key] = verify(sources[source], dst, kind)
                rm(dst)
                loads.append(os.getloadavg()[0])
                results[key]["ready"].append(t_ready)
                results[key]["durable"].append(t_durable)
                results[key]["cpu"].append(cpu)
                print("rep %d %-15s ready %6.2f s, durable %6.2f s, cpu %5.2f s, load %.1f" % (
                    rep, key, t_ready, t_durable, cpu, loads[-1]), flush=True)
    finally:
        svc.stop()

    lines = ["| source | case | to READY (median of %d) | MiB/s (data) | durable | CPU s (median) | runs (READY, s) | verified |" % args.reps,
             "|---|---|---:|---:|---:|---:|---|---|"]
    for source, server in cases:
        r = results["%s/%s" % (source, server)]
        size, pieces = SOURCES[source]
        data = size if pieces is None else pieces * PIECE
        lines.append("| %s | %s | %.2f s | %.0f | %.2f s | %.2f | %s | %s |" % (
            source, server, median(r["ready"]), data / MiB / median(r["ready"]), median(r["durable"]), median(r["cpu"]),
            ", ".join("%.2f" % x for x in r["ready"]), "yes" if verified.get("%s/%s" % (source, server)) else "NO"))
    lines.append("")
    lines.append("| source | ratio BlockMirror / qsd | q2q time | q2q CPU | q2r time | q2r CPU |")
    lines.append("|---|---|---:|---:|---:|---:|")
    for source in sources:
        row = []
        for kind in ("q2q", "q2r"):
            bm, qs = results.get("%s/bm-%s" % (source, kind)), results.get("%s/qsd-%s" % (source, kind))
            if bm and qs and bm["ready"] and qs["ready"]:
                row += ["%.2fx" % (median(bm["ready"]) / median(qs["ready"])), "%.2fx" % (median(bm["cpu"]) / max(median(qs["cpu"]), 0.01))]
            else:
                row += ["-", "-"]
        lines.append("| %s | (lower is better) | %s |" % (source, " | ".join(row)))
    table = "\n".join(lines)
    print(table)
    machine = "%s, %d cores, load during the cases %.1f-%.1f (median %.1f)" % (
        platform.platform(), os.cpu_count() or 0, min(loads or [0]), max(loads or [0]), median(loads or [0]))
    print(machine)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"results": results, "verified": verified, "machine": machine, "loads": loads}, f, indent=1)
    return 0 if all(verified.get("%s/%s" % c) for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
