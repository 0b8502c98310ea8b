#!/usr/bin/env python3
"""Profile incremental (bitmap) mirrors, one or more builds interleaved in one run.

For each rep and each build (services started once, outside timing): copies the
image to a source and an up-to-date replica (cp --sparse=always), adds both as
nodes, a 64 KiB bitmap on the source, dirties --dirty-fraction of it in distinct
64 KiB pieces through the service's NBD export (qemu-io), drops caches, then
times POST /api/v1/jobs/mirror (bitmap=inc0) -> BLOCK_JOB_READY (SSE) and reports
the service's CPU time (utime + stime, all threads) over that window, which is
far less sensitive to other load on the machine than the wall time.

  python3 bench/profile_incremental.py --dll OLD.dll --dll NEW.dll [--reps 5]
      [--image PATH | --size 1G] [--strace none|count|trace] [--full]

--strace trace writes `strace -f -tt -T` of the timed window per run and prints
a timeline (first/last copy, mean copies in flight, the flush, READY) from it.
--full adds a full mirror of the image (sync=full to a fresh sparse target).
Writes nothing under bench/. Run as root (drop_caches).
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bm_service  # noqa: E402

pb, _ = bm_service.import_peers()
KiB, MiB, GiB = pb.KiB, pb.MiB, pb.GiB

TRACE = "trace=copy_file_range,pread64,pwrite64,lseek,fdatasync,fsync,sync_file_range,write,sendto,sendmsg"


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drop():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


LINE = re.compile(r"^(\d+)\s+(\d+):(\d+):(\d+\.\d+) (.*)$")
CALL = re.compile(r"^(\w+)\(.*<(\d+\.\d+)>$")
UNFINISHED = re.compile(r"^(\w+)\(.*<unfinished \.\.\.>$")
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>.*<(\d+\.\d+)>$")


def timeline(path, t_post_wall):
    """Syscall counts and a timeline relative to the POST from an strace -f -tt -T file
    (a call that another thread's line interrupted is split into 'unfinished' and 'resumed')."""
    calls = []
    pending = {}
    with open(path) as f:
        for line in f:
            m = LINE.match(line.strip())
            if not m:
                continue
            tid, rest = m.group(1), m.group(5)
            start = int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))
            c = CALL.match(rest)
            if c:
                calls.append((c.group(1), start, float(c.group(2))))
                continue
            u = UNFINISHED.match(rest)
            if u:
                pending[tid] = (u.group(1), start)
                continue
            r = RESUMED.match(rest)
            if r and tid in pending:
                name, s0 = pending.pop(tid)
                calls.append((name, s0, float(r.group(2))))
    lt = time.localtime(t_post_wall)
    post = lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + (t_post_wall % 1)
    out = {}
    counts = {}
    for name, start, dur in calls:
        counts[name] = counts.get(name, 0) + 1
    out["counts"] = counts
    copies = [(s, d) for n, s, d in calls if n == "copy_file_range"]
    if copies:
        first, last = min(s for s, _ in copies), max(s + d for s, d in copies)
        out["copy"] = (first - post, last - post, sum(d for _, d in copies) / max(last - first, 1e-9))
    syncs = [(s, d) for n, s, d in calls if n in ("fdatasync", "fsync")]
    if syncs:
        out["flush"] = [(round(s - post, 4), round(d, 4)) for s, d in syncs]
    return out


class Build:
    def __init__(self, name, dll, work, env=None):
        self.name = name
        self.state = os.path.join(work, "state-" + name)
        shutil.rmtree(self.state, ignore_errors=True)  # a fresh database: no nodes of an earlier run
        self.sock = os.path.join(work, "nbd-%s.sock" % name)
        self.svc = bm_service.Service(work, self.state, dll=dll, nbd_listen="unix:" + self.sock, env=env)
        self.samples = {"inc": [], "full": []}


def incremental(b, work, image, offs, n, args):
    svc = b.svc
    src_rel, tgt_rel = "inc-%s-src.raw" % b.name, "inc-%s-tgt.raw" % b.name
    src, tgt = os.path.join(work, src_rel), os.path.join(work, tgt_rel)
    subprocess.run(["cp", "--sparse=always", image, src], check=True)
    subprocess.run(["cp", "--sparse=always", image, tgt], check=True)
    svc.add_node("isrc", src_rel)
    svc.add_node("itgt", tgt_rel)
    svc.post("/api/v1/nodes/isrc/bitmaps", {"name": "inc0", "granularity": 64 * KiB})
    svc.post("/api/v1/exports", {"name": "isrc", "node": "isrc", "writable": True})
    argv = ["qemu-io", "-f", "raw", "nbd+unix:///isrc?socket=%s" % b.sock]
    for i, o in enumerate(offs):
        argv += ["-c", "write -q -P 0x%02x %d %d" % (1 + i % 255, o, 64 * KiB)]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    svc.request("DELETE", "/api/v1/exports/isrc")
    dirty = svc.bitmap("isrc", "inc0")["count"]
    job = "inc-%s-%d" % (b.name, n)
    body = {"id": job, "device": "isrc", "target": "itgt", "sync": "full", "bitmap": "inc0", "speed": 0}
    return run_job(b, body, n, "inc", args, [src, tgt], dirty)


def full(b, work, image, n, args):
    svc = b.svc
    tgt_rel = "full-%s-tgt.raw" % b.name
    tgt = os.path.join(work, tgt_rel)
    svc.add_node("fsrc", os.path.relpath(image, work), read_only=True)
    svc.add_node("ftgt", tgt_rel, size=os.path.getsize(image))
    job = "full-%s-%d" % (b.name, n)
    body = {"id": job, "device": "fsrc", "target": "ftgt", "sync": "full", "speed": 0}
    return run_job(b, body, n, "full", args, [tgt], None)


def run_job(b, body, n, kind, args, files, dirty):
    svc = b.svc
    drop()
    st = out = None
    if args.strace != "none":
        out = os.path.join(tempfile.gettempdir(), "profile_incremental.%s.%s.%d" % (kind, b.name, n))
        argv = ["strace", "-f", "-p", str(svc.proc.pid), "-o", out]
        argv += ["-c", "-w"] if args.strace == "count" else ["-tt", "-T", "-e", TRACE]
        if args.strace == "perf":
            # perf report -i FILE --no-children: where the service's CPU goes (JIT names via the perf map)
            argv = ["perf", "record", "-F", "1999", "-g", "-p", str(svc.proc.pid), "-o", out]
        st = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    la = os.getloadavg()[0]
    c0 = proc_cpu(svc.proc.pid)
    wall0 = time.time()
    t0 = time.monotonic()
    svc.post("/api/v1/jobs/mirror", body)
    t_post = time.monotonic() - t0
    ev = svc.sse.wait("BLOCK_JOB_READY", body["id"], after=t0)
    t_ready = ev["recv_monotonic"] - t0
    cpu = proc_cpu(svc.proc.pid) - c0
    if st is not None:
        st.send_signal(2)
        st.wait()
    svc.post("/api/v1/jobs/%s/cancel" % body["id"], {"force": False})
    svc.sse.wait(("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), body["id"], after=t0)
    j = svc.job(body["id"])
    for node in ("isrc", "itgt", "fsrc", "ftgt"):
        svc.remove_node(node)
    ok = dirty is None or j.get("bytesCopied") == dirty
    b.samples[kind].append((t_ready, cpu))
    print("%-5s %-8s rep %d: READY %.4fs (POST returned %.4fs)  cpu %.3fs  bytesCopied %s%s  load %.1f" % (
        kind, b.name, n, t_ready, t_post, cpu, j.get("bytesCopied"), "" if ok else " != dirty %s" % dirty, la),
        flush=True)
    if args.strace == "trace" and out:
        tl = timeline(out, wall0)
        print("      strace: %s" % " ".join("%s=%d" % kv for kv in sorted(tl["counts"].items())))
        if "copy" in tl:
            print("      copies +%.4f -> +%.4f s, %.2f in flight on average" % tl["copy"])
        if "flush" in tl:
            print("      flush (start, duration): %s" % tl["flush"])
    elif out:
        print("      %s -> %s" % (args.strace, out))
    for f in files:
        pb.rm(f)
    return t_ready, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dll", action="append", required=True, help="NAME=PATH or PATH; repeat to interleave builds")
    ap.add_argument("--image", help="raw image to use (default: make a random one of --size)")
    ap.add_argument("--size", type=pb.parse_size, default=GiB)
    ap.add_argument("--dirty-fraction", type=float, default=0.01)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--strace", choices=["none", "count", "trace", "perf"], default="none")
    ap.add_argument("--full", action="store_true", help="also a full mirror of the image per rep")
    ap.add_argument("--no-inc", dest="inc", action="store_false", help="no incremental mirror (with --full: full only)")
    ap.add_argument("--work", default=None, help="work directory (default: a new one under /var/tmp)")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="profile_incremental.", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    image = args.image
    if image is None:
        image = os.path.join(work, "img.raw")
        if not os.path.exists(image) or os.path.getsize(image) != args.size:
            pb.make_image_a(image, args.size, args.seed + 1)
    image = os.path.abspath(image)
    size = os.path.getsize(image)
    offs = pb.write_offsets(size, args.dirty_fraction, 64 * KiB, args.seed + 3)
    builds = []
    for i, spec in enumerate(args.dll):
        name, _, path = spec.rpartition("=")
        env = {"DOTNET_PerfMapEnabled": "1", "DOTNET_EnableWriteXorExecute": "0"} if args.strace == "perf" else None
        builds.append(Build(name or "b%d" % i, path, work, env))
    try:
        for b in builds:
            b.svc.start()
            b.svc.start_sse()
        print("image %s (%s), %d pieces of 64 KiB, builds %s, load %.1f" % (
            image, pb.human(size), len(offs), ", ".join(b.name for b in builds), os.getloadavg()[0]), flush=True)
        for n in range(args.warmup + args.reps):
            # Alternate the order so that neither build always runs first.
            order = builds if n % 2 == 0 else list(reversed(builds))
            for b in order:
                if args.inc:
                    incremental(b, work, image, offs, n, args)
                if args.full:
                    full(b, work, image, n, args)
        print("\nmedians of %d reps (warm-up excluded): READY s / service CPU s" % args.reps)
        for kind in ("inc", "full"):
            for b in builds:
                s = b.samples[kind][args.warmup:]
                if s:
                    print("  %-5s %-8s READY %.4f  cpu %.3f" % (
                        kind, b.name, statistics.median(x for x, _ in s), statistics.median(c for _, c in s)))
            # Paired: each build against the first one in the same rep (they ran back to back).
            base = builds[0].samples[kind][args.warmup:]
            for b in builds[1:]:
                s = b.samples[kind][args.warmup:]
                if s and base:
                    r = sorted(x / y for (x, _), (y, _) in zip(s, base))
                    print("  %-5s %-8s / %-8s paired READY ratio median %.3f (min %.3f, max %.3f)" % (
                        kind, b.name, builds[0].name, statistics.median(r), r[0], r[-1]))
    finally:
        for b in builds:
            b.svc.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
