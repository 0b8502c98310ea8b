#!/usr/bin/env python3
"""copyMode auto against background under a writer (issue 16 item 3), on one machine.

One BlockMirror service (a published BlockMirror.Api.dll, see bm_service.py); a source node of
--size MiB full of random data and a sparse target; a writer thread that PUTs 64 KiB of random
data at random granule-aligned offsets at a fixed rate (--write-rate MiB/s) over REST; a mirror
sync=full limited to --speed MiB/s. Per case and rep: the time from the POST to
BLOCK_JOB_COPY_MODE_SWITCHED (auto) and to BLOCK_JOB_READY, or "never" within --timeout s (then
the job is force-cancelled). auto completes and the target is compared with the source image
file afterwards (the writer stopped first). Cases alternate per rep.

  python3 bench/auto_copy_mode.py --dll /path/to/BlockMirror.Api.dll [--reps 3]
"""

import argparse
import os
import random
import shutil
import statistics
import tempfile
import threading
import time

import bm_service

MiB = 1 << 20
BLOCK = 64 * 1024


class Writer(threading.Thread):
    """PUT /nodes/{node}/data of 64 KiB at a fixed rate on a connection of its own."""

    def __init__(self, port, node, size, rate, seed):
        super().__init__(daemon=True)
        self.svc = bm_service.Service.__new__(bm_service.Service)
        self.svc.port, self.svc.conn = port, None
        self.node, self.size, self.interval = node, size, BLOCK / (rate * MiB)
        self.random = random.Random(seed)
        self.stop_flag = threading.Event()
        self.written = 0

    def run(self):
        due = time.monotonic()
        while not self.stop_flag.is_set():
            off = self.random.randrange(self.size // BLOCK) * BLOCK
            self.svc.request("PUT", "/api/v1/nodes/%s/data?offset=%d" % (self.node, off), raw=os.urandom(BLOCK))
            self.written += BLOCK
            due += self.interval
            left = due - time.monotonic()
            if left > 0:
                time.sleep(left)

    def stop(self):
        self.stop_flag.set()
        self.join()


def run_case(svc, sse, mode, a, rep):
    src, dst = "src%d%s" % (rep, mode[0]), "dst%d%s" % (rep, mode[0])
    size = a.size * MiB
    path = os.path.join(svc.root, src + ".img")
    with open(path, "wb") as f:
        for _ in range(a.size):
            f.write(os.urandom(MiB))
    svc.request("POST", "/api/v1/nodes", {"name": src, "driver": "raw", "path": src + ".img"})
    svc.request("POST", "/api/v1/nodes", {"name": dst, "driver": "raw", "path": dst + ".img", "create": {"size": size}})
    writer = Writer(svc.port, src, size, a.write_rate, rep)
    writer.start()
    time.sleep(1)  # the writer at its rate before the job starts
    t0 = time.monotonic()
    job = "%s-%d" % (mode, rep)
    svc.request("POST", "/api/v1/jobs/mirror", {"id": job, "device": src, "target": dst, "sync": "full",
                                                "copyMode": mode, "speed": a.speed * MiB, "bufSize": MiB})
    result = {"mode": mode, "switch": None, "ready": None, "exact": None}
    try:
        if mode == "auto":
            ev = sse.wait("BLOCK_JOB_COPY_MODE_SWITCHED", job, timeout=a.timeout)
            result["switch"] = ev["recv_monotonic"] - t0
            result["why"] = {k: ev["data"][k] for k in ("copyRate", "dirtyRate", "remaining", "remainingAtWindowStart")}
        ev = sse.wait("BLOCK_JOB_READY", job, timeout=a.timeout - (time.monotonic() - t0))
        result["ready"] = ev["recv_monotonic"] - t0
    except TimeoutError:
        pass
    writer.stop()
    if result["ready"] is None:
        svc.request("POST", "/api/v1/jobs/%s/cancel" % job, {"force": True})
        sse.wait("BLOCK_JOB_CANCELLED", job)
    else:
        svc.request("POST", "/api/v1/jobs/%s/complete" % job, {})
        sse.wait("BLOCK_JOB_COMPLETED", job)
        # The device pivoted onto dst.img; src.img holds every write up to the complete too.
        with open(path, "rb") as x, open(os.path.join(svc.root, dst + ".img"), "rb") as y:
            result["exact"] = x.read() == y.read()
    sse.drop_job(job)
    for n in (src, dst):
        svc.request("DELETE", "/api/v1/nodes/%s?deleteImage=true" % n, check=False)
    result["written_mib"] = writer.written / MiB
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dll", default=bm_service.DEFAULT_DLL)
    p.add_argument("--size", type=int, default=64, help="MiB")
    p.add_argument("--speed", type=int, default=8, help="the mirror's speed, MiB/s")
    p.add_argument("--write-rate", type=float, default=16, help="the writer's rate, MiB/s")
    p.add_argument("--window", default="00:00:05", help="Jobs:AutoCopyModeWindow")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="bm-auto-")
    svc = bm_service.Service(os.path.join(work, "root"), os.path.join(work, "state"), dll=a.dll,
                             extra_args=["--Jobs:AutoCopyModeWindow", a.window])
    os.makedirs(svc.root, exist_ok=True)
    rows = []
    try:
        svc.start()
        sse = svc.start_sse()
        for rep in range(a.reps):
            for mode in (("background", "auto") if rep % 2 == 0 else ("auto", "background")):
                r = run_case(svc, sse, mode, a, rep)
                rows.append(r)
                print(r, flush=True)
    finally:
        svc.stop()
        shutil.rmtree(work, ignore_errors=True)

    def fmt(values):
        got = [v for v in values if v is not None]
        if not got:
            return "never (%d/%d within %gs)" % (0, len(values), a.timeout)
        s = "%.1f s" % statistics.median(got)
        return s if len(got) == len(values) else "%s (%d/%d)" % (s, len(got), len(values))

    print("\n%d MiB, speed %d MiB/s, writer %g MiB/s of 64 KiB random writes, window %s, %d reps (median)\n"
          % (a.size, a.speed, a.write_rate, a.window, a.reps))
    print("| copyMode | to switch | to READY | target exact after complete |")
    print("|---|---:|---:|---|")
    for mode in ("background", "auto"):
        rs = [r for r in rows if r["mode"] == mode]
        exact = [r["exact"] for r in rs if r["exact"] is not None]
        print("| %s | %s | %s | %s |" % (mode, fmt([r["switch"] for r in rs]) if mode == "auto" else "—",
                                          fmt([r["ready"] for r in rs]), ("yes" if all(exact) else "NO") if exact else "—"))


if __name__ == "__main__":
    main()
