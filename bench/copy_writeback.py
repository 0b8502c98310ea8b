#!/usr/bin/env python3
"""The kernel side of a mirror's copy, without the service: is starting writeback early worth it?

Copies SRC to a fresh sparse file next to it with copy_file_range in 1 MiB chunks from
--threads threads (the service keeps up to 16 chunks in flight), after drop_caches, then
fdatasync()s the copy, and prints the copy and flush times. Modes, run interleaved per rep:

  plain     copy_file_range only (what the service does)
  willneed  posix_fadvise(WILLNEED) of each chunk before its copy (bigger source reads?)
  sfr32     a separate thread calls sync_file_range(WRITE) on the whole copy every 32 MiB copied
  sfrchunk  each copier calls sync_file_range(WRITE) on the chunk copied 8 MiB before its own

  python3 bench/copy_writeback.py SRC [--threads 8] [--reps 8] [--modes plain,sfr32,sfrchunk]

Run as root (drop_caches). Writes nothing under bench/; removes its copy.
"""

import argparse
import ctypes
import os
import statistics
import threading
import time

MiB = 1 << 20
SYNC_FILE_RANGE_WRITE = 2
libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]


def drop():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run(src, mode, threads, chunk=MiB):
    dst = src + ".copy_writeback"
    size = os.path.getsize(src)
    fd_out = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd_out, size)
    fd_in = os.open(src, os.O_RDONLY)
    drop()
    nxt = [0]
    lock = threading.Lock()
    stop = [False]

    def copier():
        while True:
            with lock:
                off = nxt[0]
                nxt[0] += chunk
            if off >= size:
                return
            n = min(chunk, size - off)
            if mode == "willneed":
                os.posix_fadvise(fd_in, off, n, os.POSIX_FADV_WILLNEED)
            if mode == "sfrchunk" and off >= 8 * MiB:
                libc.sync_file_range(fd_out, off - 8 * MiB, chunk, SYNC_FILE_RANGE_WRITE)
            done = 0
            while done < n:
                c = os.copy_file_range(fd_in, fd_out, n - done, off + done, off + done)
                if c <= 0:
                    break
                done += c

    def hinter():
        last = 0
        while not stop[0]:
            if nxt[0] - last >= 32 * MiB:
                last = nxt[0]
                libc.sync_file_range(fd_out, 0, 0, SYNC_FILE_RANGE_WRITE)
            else:
                time.sleep(0.002)

    h = threading.Thread(target=hinter) if mode == "sfr32" else None
    if h:
        h.start()
    t0 = time.monotonic()
    ts = [threading.Thread(target=copier) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    t1 = time.monotonic()
    stop[0] = True
    if h:
        h.join()
    os.fdatasync(fd_out)
    t2 = time.monotonic()
    os.close(fd_in)
    os.close(fd_out)
    os.unlink(dst)
    return t1 - t0, t2 - t1, t2 - t0, os.getloadavg()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--modes", default="plain,sfr32,sfrchunk")
    a = ap.parse_args()
    modes = a.modes.split(",")
    res = {m: [] for m in modes}
    for rep in range(a.reps):
        for m in modes:
            r = run(a.src, m, a.threads)
            res[m].append(r)
            print("rep %d %-9s copy %.3f s  flush %.3f s  total %.3f s  load %.1f" % ((rep, m) + r), flush=True)
    print("\nmedians of %d reps, %d threads:" % (a.reps, a.threads))
    for m, v in res.items():
        print("  %-9s copy %.3f  flush %.3f  total %.3f (min %.3f, max %.3f)  load %.1f-%.1f" % (
            m, statistics.median(x[0] for x in v), statistics.median(x[1] for x in v),
            statistics.median(x[2] for x in v), min(x[2] for x in v), max(x[2] for x in v),
            min(x[3] for x in v), max(x[3] for x in v)))


if __name__ == "__main__":
    main()
