#!/usr/bin/env python3
"""Profile one BlockMirror full mirror (a diagnosis aid for mirror_bench.py).

Starts the published service once on --root (the directory holding the image),
then for each variant (bufSize/granularity) and rep: adds a read-only source
node and a fresh sparse target, drops caches, times POST /jobs/mirror ->
BLOCK_JOB_READY (SSE), cancels (soft) and removes the nodes. Optionally
attaches `strace -c -f` (syscall summary) or `strace -f -tt -T -e trace=...`
to the service for the timed window only, and reports the service's CPU time
and thread count.

  python3 bench/profile_mirror.py --root DIR --image imgA.raw [--strace count|trace]
      [--variants 16M:0,64M:0,256M:0] [--reps 3]

Variant = bufSize:granularity (0 = default). Writes nothing under bench/.
"""

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bm_service  # noqa: E402

pb, _ = bm_service.import_peers()


def threads(pid):
    try:
        return len(os.listdir("/proc/%d/task" % pid))
    except OSError:
        return None


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    t = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / t, int(fields[12]) / t


def drop():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass
    time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--image", required=True, help="path relative to --root")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--variants", default="0:0", help="comma list of bufSize:granularity (0 = default)")
    ap.add_argument("--strace", choices=["none", "count", "trace", "perf"], default="none",
                    help="perf = perf record -g on the service (set --env DOTNET_PerfMapEnabled=1 for JIT names)")
    ap.add_argument("--strace-filter", default="trace=pread64,pwrite64,lseek,fstat,fallocate,fdatasync,futex")
    ap.add_argument("--no-drop", action="store_true", help="do not drop the page cache before each run")
    ap.add_argument("--dll", default=bm_service.DEFAULT_DLL)
    ap.add_argument("--state", default=None, help="service state dir (SQLite database); default ROOT/.profile-state")
    ap.add_argument("--pin", default="", help="e.g. 'taskset -c 1' for the service")
    ap.add_argument("--env", action="append", default=[], help="K=V for the service (e.g. DOTNET_ThreadPool_MinThreads... )")
    a = ap.parse_args()
    root = os.path.abspath(a.root)
    size = os.path.getsize(os.path.join(root, a.image))
    state = a.state or os.path.join(root, ".profile-state")
    import shutil
    shutil.rmtree(state, ignore_errors=True)
    env = dict(kv.split("=", 1) for kv in a.env)
    svc = bm_service.Service(root, state, dll=a.dll, env=env or None, pin=a.pin.split() if a.pin else ())
    svc.start()
    svc.start_sse()
    print("service pid %d, threads %s" % (svc.proc.pid, threads(svc.proc.pid)))
    n = 0
    try:
        for variant in a.variants.split(","):
            bs, gr = (pb.parse_size(x) for x in variant.split(":"))
            for rep in range(a.reps):
                n += 1
                tgt = "profile-target-%d.raw" % n
                pb.rm(os.path.join(root, tgt))
                svc.add_node("psrc", a.image, read_only=True)
                svc.add_node("ptgt", tgt, size=size)
                body = {"id": "p%d" % n, "device": "psrc", "target": "ptgt", "sync": "full", "speed": 0}
                if bs:
                    body["bufSize"] = bs
                if gr:
                    body["granularity"] = gr
                if not a.no_drop:
                    drop()
                st = None
                if a.strace != "none":
                    out = "/tmp/profile_mirror.strace.%d" % n
                    argv = ["strace", "-f", "-p", str(svc.proc.pid), "-o", out]
                    argv += ["-c", "-w"] if a.strace == "count" else ["--seccomp-bpf", "-tt", "-T", "-e", a.strace_filter]
                    if a.strace == "perf":
                        argv = ["perf", "record", "-F", "499", "-g", "-p", str(svc.proc.pid), "-o", out]
                    st = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
                    time.sleep(1.0)
                u0, s0 = proc_cpu(svc.proc.pid)
                t0 = time.monotonic()
                wall0 = time.time()
                svc.post("/api/v1/jobs/mirror", body)
                t_post = time.monotonic() - t0
                ev = svc.sse.wait("BLOCK_JOB_READY", body["id"], after=t0)
                dt = ev["recv_monotonic"] - t0
                u1, s1 = proc_cpu(svc.proc.pid)
                th = threads(svc.proc.pid)
                if st is not None:
                    st.send_signal(2)  # SIGINT: strace detaches / perf writes its file
                    st.wait()
                svc.post("/api/v1/jobs/%s/cancel" % body["id"], {"force": False})
                svc.sse.wait(("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), body["id"], after=t0)
                j = svc.job(body["id"])
                print("  POST sent at %s, returned after %.3fs" % (
                    time.strftime("%H:%M:%S", time.localtime(wall0)) + ("%.6f" % (wall0 % 1))[1:], t_post))
                print("variant %-10s rep %d: READY %.3fs  %.0f MB/s  cpu user %.2fs sys %.2fs  threads %s  "
                      "bytesCopied %s  chunkMax? bufSize %s gran %s  alloc %s  load %.1f%s" % (
                          variant, rep, dt, size / dt / 1e6, u1 - u0, s1 - s0, th, j.get("bytesCopied"),
                          j.get("bufSize"), j.get("granularity"),
                          pb.human(pb.alloc_bytes(os.path.join(root, tgt))), os.getloadavg()[0],
                          ("  strace -> %s" % out) if st is not None else ""), flush=True)
                svc.remove_node("psrc")
                svc.remove_node("ptgt")
                pb.rm(os.path.join(root, tgt))
    finally:
        svc.stop()


if __name__ == "__main__":
    main()
