#!/usr/bin/env python3
"""Mirror benchmark: BlockMirror side by side with qemu-img and qemu-storage-daemon.

One run, the same images, the same cache drops, every case in the same rep
loop with a seeded shuffle of the case order per rep:

  anchor   qemu-img convert -n -f raw -O raw SRC DST, then fsync(DST)
  nbdcopy  nbdcopy SRC DST (file -> file), then fsync(DST)
  qsd      qemu-storage-daemon blockdev-mirror sync=full copy-mode=background
           (target discard=unmap) -> BLOCK_JOB_READY -> job-complete ->
           BLOCK_JOB_COMPLETED -> fsync(DST)
  bm       BlockMirror (started once, outside timing; SSE reader thread
           started before the POST): POST /api/v1/jobs/mirror sync=full ->
           BLOCK_JOB_READY (SSE) -> POST complete -> BLOCK_JOB_COMPLETED ->
           fsync(DST). Nodes for the source (read-only) and a fresh sparse
           target are added before and removed after each run (untimed).
  inc-qsd  incremental: bitmap on a copy of the image, 1% written as distinct
           64 KiB pieces through qsd's NBD export (qemu-io), then
           blockdev-backup sync=bitmap into an up-to-date replica
  floor    the device's own speed for the same bytes (no copy tool): a cold
           read of the source's data extents (SEEK_DATA/SEEK_HOLE, 1 MiB
           preads, 8 in flight) and a write of as many bytes into a fresh
           file + fdatasync, both at once from a cold cache ("to READY":
           about the least a copy that reads cold and ends durable takes on
           this device) and one after the other ("durable")
  inc-bm   the same through BlockMirror's NBD export, then a bitmap mirror
           (bitmap=inc0) into the up-to-date replica, soft cancel at READY;
           checks bytesCopied == the bitmap's dirty bytes

Images are peer_bench.make_image_a / make_image_b (A = 1 GiB random raw,
B = 8 GiB sparse with 1 GiB data). Reuses ../shared/peers/peer_bench.py and
qmp.py (relative to the repository root).

Results: bench/results/<tag>.json and .md; the markdown summary is also
printed on stdout. Run as root so that drop_caches works.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bm_service  # noqa: E402

pb, qmp = bm_service.import_peers()
KiB, MiB, GiB = pb.KiB, pb.MiB, pb.GiB

M_ANCHOR = "qemu-img convert -n + fsync (anchor)"
M_NBDCOPY = "nbdcopy file->file + fsync"
M_QSD = "qsd blockdev-mirror sync=full (tgt discard=unmap)"
M_BM = "BlockMirror mirror sync=full"
M_IQSD = "qsd blockdev-backup sync=bitmap"
M_IBM = "BlockMirror mirror bitmap=inc0, soft cancel at READY"
M_FLOOR = "device floor: cold read of the data and write + fdatasync of as much, at once (durable: one after the other)"
CASES = {"floor": M_FLOOR, "anchor": M_ANCHOR, "nbdcopy": M_NBDCOPY, "qsd": M_QSD, "bm": M_BM, "inc-qsd": M_IQSD, "inc-bm": M_IBM}

# Metric names shared by all methods, so that ratios line up.
READY = "to READY (anchor: tool exit)"
DURABLE = "durable (COMPLETED + fsync; anchor: tool + fsync)"
WPHASE = "write phase: qemu-io 64 KiB writes via NBD"


def proc_cpu(pid):
    """utime + stime of a process (all threads), seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def proc_majflt(pid):
    """Major page faults of a process so far (pages read back from disk, e.g. code after drop_caches)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[9])
    except (OSError, IndexError, ValueError):
        return None


def children_cpu():
    r = os.times()
    return r.children_user + r.children_system


def read_data_extents(path, workers=8):
    """Reads every data extent of a file (SEEK_DATA/SEEK_HOLE) in 1 MiB preads, `workers` in flight
    (as the copy tools keep several requests in flight: one at a time is slower than they are on a
    virtual disk); returns the bytes read."""
    import concurrent.futures
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        pieces = []
        pos = 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # ENXIO: no data past pos
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            pieces.extend((o, min(MiB, stop - o)) for o in range(start, stop, MiB))
            pos = stop
        with concurrent.futures.ThreadPoolExecutor(workers) as ex:
            return sum(ex.map(lambda p: len(os.pread(fd, p[1], p[0])), pieces))
    finally:
        os.close(fd)


def write_and_sync(path, nbytes):
    """Writes nbytes of random data into a fresh file in 1 MiB pwrites, then fdatasync."""
    block = os.urandom(MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < nbytes:
            n = min(MiB, nbytes - done)
            os.pwrite(fd, block[:n], done)
            done += n
        os.fdatasync(fd)
    finally:
        os.close(fd)


def loadavg():
    return round(os.getloadavg()[0], 2)


class Bench:
    def __init__(self, ctx, svc):
        self.ctx = ctx
        self.svc = svc
        self.seq = 0

    def job_id(self, kind, img):
        self.seq += 1
        return "%s-%s-%d" % (kind, img, self.seq)

    # ---------------------------------------------------------------- anchor
    def anchor(self, img, rep):
        dst = self.ctx.p("anchor-target.raw")
        src = self.ctx.images[img]["path"]
        self.ctx.record_cmd("anchor", "qemu-img convert -n -f raw -O raw \"$SRC\" \"$DST\"; fsync($DST)")
        self._tool_copy(img, rep, M_ANCHOR, ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, dst], dst)

    def nbdcopy(self, img, rep):
        """nbdcopy between two local files (its file backend; the target pre-created sparse, like the anchor's)."""
        dst = self.ctx.p("nbdcopy-target.raw")
        src = self.ctx.images[img]["path"]
        self.ctx.record_cmd("nbdcopy", "nbdcopy \"$SRC\" \"$DST\"; fsync($DST)")
        self._tool_copy(img, rep, M_NBDCOPY, ["nbdcopy", src, dst], dst)

    def _tool_copy(self, img, rep, method, argv, dst):
        ctx = self.ctx
        src, size, dbytes = ctx.images[img]["path"], ctx.images[img]["size"], ctx.images[img]["data_bytes"]
        try:
            pb.create_sparse(dst, size)
            ctx.reset_cache([src])
            la = loadavg()
            c0 = children_cpu()
            t0 = time.monotonic()
            ctx.run(argv)
            t1 = time.monotonic()
            pb.fsync_path(dst)
            t2 = time.monotonic()
            info = {"alloc_bytes": pb.alloc_bytes(dst), "alloc": pb.human(pb.alloc_bytes(dst)),
                    "src_alloc_bytes": pb.alloc_bytes(src), "cpu_s": round(children_cpu() - c0, 3), "load1": la}
            if pb.want_verify(ctx, rep):
                info["verified"] = pb.verify_equal(ctx, src, dst)
            ctx.add("mirror", method, img, rep, {READY: (t1 - t0, size, dbytes), DURABLE: (t2 - t0, size, dbytes)},
                    **info)
        except Exception as e:  # noqa: BLE001
            ctx.fail("mirror", method, img, rep, e)
        finally:
            pb.rm(dst)

    # ---------------------------------------------------------------- device floor
    def floor(self, img, rep):
        """What the device allows for this image's data, no copy tool: a cold read of it, a write of as
        many bytes + fdatasync, each alone, and both at once (what a copy asks of the device)."""
        ctx = self.ctx
        src, size, dbytes = ctx.images[img]["path"], ctx.images[img]["size"], ctx.images[img]["data_bytes"]
        dst = ctx.p("floor-target.raw")
        ctx.record_cmd("floor", "read SRC's data extents cold (1 MiB preads, 8 in flight); write as many bytes to a fresh "
                                "file + fdatasync; each alone, then both at once from a cold cache")
        try:
            ctx.reset_cache([src])
            la = loadavg()
            t0 = time.monotonic()
            nbytes = read_data_extents(src)
            r = time.monotonic() - t0
            t0 = time.monotonic()
            write_and_sync(dst, nbytes)
            w = time.monotonic() - t0
            pb.rm(dst)
            ctx.reset_cache([src])
            import concurrent.futures
            t0 = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(1) as ex:
                reading = ex.submit(read_data_extents, src)
                write_and_sync(dst, nbytes)
                reading.result()
            c = time.monotonic() - t0
            ctx.add("mirror", M_FLOOR, img, rep, {READY: (c, size, dbytes), DURABLE: (r + w, size, dbytes)},
                    read_s=round(r, 3), write_s=round(w, 3), both_s=round(c, 3), bytes=nbytes, load1=la)
        except Exception as e:  # noqa: BLE001
            ctx.fail("mirror", M_FLOOR, img, rep, e)
        finally:
            pb.rm(dst)

    # ---------------------------------------------------------------- qsd mirror
    def qsd_mirror(self, img, rep):
        ctx = self.ctx
        src, size, dbytes = ctx.images[img]["path"], ctx.images[img]["size"], ctx.images[img]["data_bytes"]
        dst = ctx.p("qsd-target.raw")
        p = q = None
        try:
            pb.create_sparse(dst, size)
            p, q = pb.qsd_start(ctx, "mirror")
            q.execute("blockdev-add", pb.raw_node("src", src))
            q.execute("blockdev-add", pb.raw_node("tgt", dst, "unmap"))
            args = {"job-id": "mirror0", "device": "src", "target": "tgt", "sync": "full",
                    "copy-mode": "background"}
            ctx.record_cmd("qsd mirror (QMP)", "blockdev-add %s; blockdev-add %s; blockdev-mirror %s; <BLOCK_JOB_READY>; "
                           "job-complete {\"id\": \"mirror0\"}; <BLOCK_JOB_COMPLETED>; fsync($DST)" % (
                               json.dumps(pb.raw_node("src", "$SRC")), json.dumps(pb.raw_node("tgt", "$DST", "unmap")),
                               json.dumps(args)))
            ctx.reset_cache([src])
            la = loadavg()
            c0 = proc_cpu(p.pid)
            f0 = proc_majflt(p.pid)
            t0 = time.monotonic()
            q.execute("blockdev-mirror", args)
            ev_r = q.job_wait("mirror0", "BLOCK_JOB_READY", timeout=900)
            t_ready = ev_r["recv_monotonic"] - t0
            q.execute("job-complete", {"id": "mirror0"})
            ev_c = q.job_wait("mirror0", "BLOCK_JOB_COMPLETED", timeout=900)
            pb.fsync_path(dst)
            t_sync = time.monotonic() - t0
            c1 = proc_cpu(p.pid)
            f1 = proc_majflt(p.pid)
            if ev_c["data"].get("error"):
                raise RuntimeError("qsd mirror failed: %s" % ev_c["data"]["error"])
            q.execute("blockdev-del", {"node-name": "tgt"})
            q.execute("blockdev-del", {"node-name": "src"})
            pb.qsd_stop(ctx, p, q)
            p = None
            info = {"alloc_bytes": pb.alloc_bytes(dst), "alloc": pb.human(pb.alloc_bytes(dst)),
                    "src_alloc_bytes": pb.alloc_bytes(src), "job_len": ev_c["data"].get("len"),
                    "cpu_s": round(c1 - c0, 3) if c0 is not None and c1 is not None else None,
                    "majflt": (f1 - f0) if f0 is not None and f1 is not None else None, "load1": la}
            if pb.want_verify(ctx, rep):
                info["verified"] = pb.verify_equal(ctx, src, dst)
            ctx.add("mirror", M_QSD, img, rep, {READY: (t_ready, size, dbytes), DURABLE: (t_sync, size, dbytes)}, **info)
        except Exception as e:  # noqa: BLE001
            ctx.fail("mirror", M_QSD, img, rep, e)
        finally:
            if p is not None:
                pb.qsd_stop(ctx, p, q)
            pb.rm(dst)

    # ---------------------------------------------------------------- BlockMirror mirror
    def _bm_cleanup(self, job_id, nodes):
        svc = self.svc
        if job_id:
            try:
                j = svc.job(job_id)
                if j and j.get("status") not in ("concluded", "null"):
                    svc.post("/api/v1/jobs/%s/cancel" % job_id, {"force": True}, check=False)
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        j = svc.job(job_id)
                        if not j or j.get("status") in ("concluded", "null"):
                            break
                        time.sleep(0.1)
                    svc.request("POST", "/api/v1/jobs/%s/dismiss" % job_id, {}, check=False)
            except Exception:  # noqa: BLE001
                pass
            svc.sse.drop_job(job_id)
        for n in nodes:
            try:
                svc.request("DELETE", "/api/v1/exports/" + n, check=False)
                svc.remove_node(n)
            except Exception:  # noqa: BLE001
                pass

    def bm_mirror(self, img, rep):
        ctx, svc = self.ctx, self.svc
        src, size, dbytes = ctx.images[img]["path"], ctx.images[img]["size"], ctx.images[img]["data_bytes"]
        dst_rel = "bm-target.raw"
        dst = ctx.p(dst_rel)
        job_id = None
        try:
            pb.rm(dst)
            svc.add_node("bsrc", os.path.basename(src), read_only=True)
            svc.add_node("btgt", dst_rel, size=size)  # created sparse by the service
            job_id = self.job_id("mirror", img)
            body = {"id": job_id, "device": "bsrc", "target": "btgt", "sync": "full", "speed": 0}
            ctx.record_cmd("BlockMirror mirror (REST)",
                           "POST /api/v1/nodes {\"name\":\"bsrc\",\"driver\":\"raw\",\"path\":\"img%s.raw\",\"readOnly\":true}; "
                           "POST /api/v1/nodes {\"name\":\"btgt\",\"driver\":\"raw\",\"path\":\"bm-target.raw\","
                           "\"create\":{\"size\":SIZE}}; POST /api/v1/jobs/mirror %s; <SSE BLOCK_JOB_READY>; "
                           "POST /api/v1/jobs/ID/complete; <SSE BLOCK_JOB_COMPLETED>; fsync($DST)" % (
                               img, json.dumps(dict(body, id="ID"))))
            ctx.reset_cache([src])
            la = loadavg()
            c0 = proc_cpu(svc.proc.pid)
            f0 = proc_majflt(svc.proc.pid)
            t0 = time.monotonic()
            svc.post("/api/v1/jobs/mirror", body)
            t_post = time.monotonic() - t0
            ev_r = svc.sse.wait("BLOCK_JOB_READY", job_id, after=t0)
            t_ready = ev_r["recv_monotonic"] - t0
            c_ready = proc_cpu(svc.proc.pid)
            svc.post("/api/v1/jobs/%s/complete" % job_id)
            ev_c = svc.sse.wait(("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), job_id, after=t0)
            pb.fsync_path(dst)
            t_sync = time.monotonic() - t0
            c1 = proc_cpu(svc.proc.pid)
            f1 = proc_majflt(svc.proc.pid)
            if ev_c["event"] != "BLOCK_JOB_COMPLETED" or ev_c["data"].get("error"):
                raise RuntimeError("BlockMirror mirror ended with %s %s" % (ev_c["event"], ev_c["data"]))
            j = svc.job(job_id)
            info = {"alloc_bytes": pb.alloc_bytes(dst), "alloc": pb.human(pb.alloc_bytes(dst)),
                    "src_alloc_bytes": pb.alloc_bytes(src), "job_len": ev_c["data"].get("len"),
                    "bytes_copied": j.get("bytesCopied"), "post_s": round(t_post, 4),
                    "cpu_ready_s": round(c_ready - c0, 3) if c0 is not None else None,
                    "cpu_s": round(c1 - c0, 3) if c0 is not None else None,
                    "majflt": (f1 - f0) if f0 is not None and f1 is not None else None, "load1": la}
            # After the pivot bsrc reads and writes the target's image; btgt is consumed.
            self._bm_cleanup(None, ["bsrc", "btgt"])
            if pb.want_verify(ctx, rep):
                info["verified"] = pb.verify_equal(ctx, src, dst)
            ctx.add("mirror", M_BM, img, rep, {READY: (t_ready, size, dbytes), DURABLE: (t_sync, size, dbytes)}, **info)
        except Exception as e:  # noqa: BLE001
            ctx.fail("mirror", M_BM, img, rep, e)
        finally:
            self._bm_cleanup(job_id, ["bsrc", "btgt"])
            svc.sse.drop_job(job_id) if job_id else None
            pb.rm(dst)

    # ---------------------------------------------------------------- incremental
    def _offsets(self, img):
        a = self.ctx.args
        size = self.ctx.images[img]["size"]
        return pb.write_offsets(size, a.dirty_fraction, 64 * KiB, a.seed + 3 + (0 if img == "A" else 100))

    @staticmethod
    def _qio(uri, offs):
        argv = ["qemu-io", "-f", "raw", uri]
        for i, o in enumerate(offs):
            argv += ["-c", "write -q -P 0x%02x %d %d" % (1 + i % 255, o, 64 * KiB)]
        return argv

    def inc_qsd(self, img, rep):
        ctx = self.ctx
        base, size = ctx.images[img]["path"], ctx.images[img]["size"]
        work, dst = ctx.p("inc-qsd-src.raw"), ctx.p("inc-qsd-tgt.raw")
        offs = self._offsets(img)
        p = q = None
        try:
            ctx.run(["cp", "--sparse=always", base, work])
            ctx.run(["cp", "--sparse=always", base, dst])
            p, q = pb.qsd_start(ctx, "inc")
            q.execute("blockdev-add", pb.raw_node("src", work))
            q.execute("block-dirty-bitmap-add", {"node": "src", "name": "inc0", "granularity": 64 * KiB})
            uri = pb.nbd_export(q, "src", ctx.p("nbd-inc.sock"), "src")
            t0 = time.monotonic()
            ctx.run(self._qio(uri, offs))
            t_w = time.monotonic() - t0
            dirty = pb.bitmap_counts(q, "src")["inc0"]
            q.execute("blockdev-add", pb.raw_node("tgt", dst))
            args = {"job-id": "inc-backup", "device": "src", "target": "tgt", "sync": "bitmap",
                    "bitmap": "inc0", "bitmap-mode": "on-success"}
            ctx.record_cmd("qsd incremental (QMP)",
                           "cp --sparse=always $IMG src; cp --sparse=always $IMG tgt; blockdev-add src; "
                           "block-dirty-bitmap-add {\"node\":\"src\",\"name\":\"inc0\",\"granularity\":65536}; "
                           "nbd-server-start + block-export-add (writable); qemu-io -f raw nbd+unix:///src?socket=... "
                           "-c 'write -q -P 0xNN OFF 65536' x N (peer_bench.write_offsets); blockdev-add tgt; "
                           "blockdev-backup %s; <BLOCK_JOB_COMPLETED>; fsync(tgt)" % json.dumps(args))
            ctx.reset_cache([work, dst])
            la = loadavg()
            t0 = time.monotonic()
            q.execute("blockdev-backup", args)
            ev = q.job_wait("inc-backup", "BLOCK_JOB_COMPLETED", timeout=900)
            t_b = ev["recv_monotonic"] - t0
            pb.fsync_path(dst)
            t_bs = time.monotonic() - t0
            if ev["data"].get("error"):
                raise RuntimeError("qsd backup failed: %s" % ev["data"]["error"])
            after = pb.bitmap_counts(q, "src")["inc0"]
            pb.nbd_unexport(q, "src")
            q.execute("blockdev-del", {"node-name": "tgt"})
            q.execute("blockdev-del", {"node-name": "src"})
            pb.qsd_stop(ctx, p, q)
            p = None
            jl = ev["data"].get("len") or dirty
            info = {"pieces": len(offs), "dirty_bytes": dirty, "job_len": jl, "bitmap_after": after,
                    "copied_equals_dirty": jl == dirty == len(offs) * 64 * KiB, "load1": la}
            if pb.want_verify(ctx, rep):
                info["verified"] = pb.verify_equal(ctx, work, dst)
            ctx.add("incremental", M_IQSD, img, rep,
                    {READY: (t_b, jl, jl), DURABLE: (t_bs, jl, jl), WPHASE: (t_w, len(offs) * 64 * KiB, len(offs) * 64 * KiB)},
                    **info)
        except Exception as e:  # noqa: BLE001
            ctx.fail("incremental", M_IQSD, img, rep, e)
        finally:
            if p is not None:
                pb.qsd_stop(ctx, p, q)
            pb.rm(work, dst)

    def inc_bm(self, img, rep):
        ctx, svc = self.ctx, self.svc
        base, size = ctx.images[img]["path"], ctx.images[img]["size"]
        work_rel, dst_rel = "inc-bm-src.raw", "inc-bm-tgt.raw"
        work, dst = ctx.p(work_rel), ctx.p(dst_rel)
        offs = self._offsets(img)
        job_id = None
        try:
            ctx.run(["cp", "--sparse=always", base, work])
            ctx.run(["cp", "--sparse=always", base, dst])
            svc.add_node("isrc", work_rel)
            svc.add_node("itgt", dst_rel)
            svc.post("/api/v1/nodes/isrc/bitmaps", {"name": "inc0", "granularity": 64 * KiB})
            svc.post("/api/v1/exports", {"name": "isrc", "node": "isrc", "writable": True})
            uri = "nbd+unix:///isrc?socket=%s" % svc.nbd_sock
            t0 = time.monotonic()
            ctx.run(self._qio(uri, offs))
            t_w = time.monotonic() - t0
            svc.request("DELETE", "/api/v1/exports/isrc")
            dirty = svc.bitmap("isrc", "inc0")["count"]
            job_id = self.job_id("inc", img)
            body = {"id": job_id, "device": "isrc", "target": "itgt", "sync": "full", "bitmap": "inc0", "speed": 0}
            ctx.record_cmd("BlockMirror incremental (REST)",
                           "cp --sparse=always $IMG src; cp --sparse=always $IMG tgt; POST /api/v1/nodes isrc, itgt; "
                           "POST /api/v1/nodes/isrc/bitmaps {\"name\":\"inc0\",\"granularity\":65536}; "
                           "POST /api/v1/exports {\"name\":\"isrc\",\"node\":\"isrc\",\"writable\":true}; "
                           "qemu-io -f raw nbd+unix:///isrc?socket=... -c 'write -q -P 0xNN OFF 65536' x N "
                           "(same offsets/patterns); DELETE /api/v1/exports/isrc; POST /api/v1/jobs/mirror %s; "
                           "<SSE BLOCK_JOB_READY>; POST /api/v1/jobs/ID/cancel {\"force\":false}; "
                           "<SSE BLOCK_JOB_COMPLETED>; fsync(tgt)" % json.dumps(dict(body, id="ID")))
            ctx.reset_cache([work, dst])
            la = loadavg()
            f0 = proc_majflt(svc.proc.pid)
            t0 = time.monotonic()
            svc.post("/api/v1/jobs/mirror", body)
            t_post = time.monotonic() - t0
            ev_r = svc.sse.wait("BLOCK_JOB_READY", job_id, after=t0)
            t_ready = ev_r["recv_monotonic"] - t0
            svc.post("/api/v1/jobs/%s/cancel" % job_id, {"force": False})
            ev_c = svc.sse.wait(("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), job_id, after=t0)
            pb.fsync_path(dst)
            t_sync = time.monotonic() - t0
            if ev_c["data"].get("error"):
                raise RuntimeError("BlockMirror incremental ended with %s %s" % (ev_c["event"], ev_c["data"]))
            j = svc.job(job_id)
            after = svc.bitmap("isrc", "inc0")["count"]
            copied = j.get("bytesCopied")
            self._bm_cleanup(None, ["isrc", "itgt"])
            info = {"pieces": len(offs), "dirty_bytes": dirty, "bytes_copied": copied, "bitmap_after": after,
                    "end_event": ev_c["event"], "copied_equals_dirty": copied == dirty == len(offs) * 64 * KiB,
                    "post_s": round(t_post, 4), "majflt": (proc_majflt(svc.proc.pid) or 0) - (f0 or 0), "load1": la}
            if pb.want_verify(ctx, rep):
                info["verified"] = pb.verify_equal(ctx, work, dst)
            if copied != dirty:
                ctx.notes.append("inc-bm %s rep %d: bytesCopied %s != dirty bytes %s" % (img, rep, copied, dirty))
            ctx.add("incremental", M_IBM, img, rep,
                    {READY: (t_ready, dirty, dirty), DURABLE: (t_sync, dirty, dirty),
                     WPHASE: (t_w, len(offs) * 64 * KiB, len(offs) * 64 * KiB)}, **info)
        except Exception as e:  # noqa: BLE001
            ctx.fail("incremental", M_IBM, img, rep, e)
        finally:
            self._bm_cleanup(job_id, ["isrc", "itgt"])
            pb.rm(work, dst)


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------
def paired_ratios(ctx, section_num, method_num, section_den, method_den, img, metric_num, metric_den):
    """Per-rep ratios num/den (same rep), for the median of paired ratios."""
    by = {}
    for s in ctx.samples:
        by[(s["section"], s["method"], s["image"], s["rep"])] = s
    out = []
    for rep in range(1, ctx.args.reps + 1):
        a = by.get((section_num, method_num, img, rep))
        b = by.get((section_den, method_den, img, rep))
        if a and b and metric_num in a["metrics"] and metric_den in b["metrics"]:
            out.append(a["metrics"][metric_num]["s"] / b["metrics"][metric_den]["s"])
    return out


def ratio_rows(ctx, rows):
    med = {(r["section"], r["method"], r["image"], r["metric"]): r["median_s"] for r in rows}
    spec = [
        ("mirror", M_BM, READY, "mirror", M_ANCHOR, DURABLE, "BM READY / anchor (convert + fsync)", 1.0),
        ("mirror", M_BM, DURABLE, "mirror", M_ANCHOR, DURABLE, "BM durable / anchor (convert + fsync)", None),
        ("mirror", M_BM, READY, "mirror", M_NBDCOPY, DURABLE, "BM READY / nbdcopy file->file + fsync", 1.0),
        ("mirror", M_BM, READY, "mirror", M_NBDCOPY, READY, "BM READY / nbdcopy file->file (exit)", None),
        ("mirror", M_BM, READY, "mirror", M_QSD, READY, "BM READY / qsd READY", 0.75),
        ("mirror", M_BM, DURABLE, "mirror", M_QSD, DURABLE, "BM durable / qsd durable", None),
        ("mirror", M_FLOOR, READY, "mirror", M_QSD, READY, "device floor / qsd READY (below 0.75: the target is reachable at all)", None),
        ("mirror", M_BM, READY, "mirror", M_FLOOR, READY, "BM READY / device floor", None),
        ("mirror", M_QSD, READY, "mirror", M_FLOOR, READY, "qsd READY / device floor", None),
        ("incremental", M_IBM, READY, "incremental", M_IQSD, READY, "BM incr. READY / qsd backup COMPLETED", 1.0),
        ("incremental", M_IBM, DURABLE, "incremental", M_IQSD, DURABLE, "BM incr. durable / qsd incr. durable", None),
        ("incremental", M_IBM, WPHASE, "incremental", M_IQSD, WPHASE, "BM NBD write phase / qsd NBD write phase", None),
    ]
    out = []
    for img in ("A", "B"):
        for sn, mn, kn, sd, md, kd, label, target in spec:
            n, d = med.get((sn, mn, img, kn)), med.get((sd, md, img, kd))
            if n is None or d is None:
                continue
            pr = paired_ratios(ctx, sn, mn, sd, md, img, kn, kd)
            out.append({"image": img, "ratio": label, "num_median_s": n, "den_median_s": d,
                        "ratio_of_medians": n / d if d else None,
                        "median_paired_ratio": statistics.median(pr) if pr else None,
                        "paired_min": min(pr) if pr else None, "paired_max": max(pr) if pr else None,
                        "target_max": target})
    return out


def checks(ctx):
    out = []
    for s in ctx.samples:
        i = s["info"]
        if s["method"] in (M_BM, M_QSD, M_ANCHOR, M_NBDCOPY) and "alloc_bytes" in i:
            out.append(("alloc", s["method"], s["image"], s["rep"], i["alloc_bytes"], i["src_alloc_bytes"]))
    return out


def fmt_s(x):
    return "-" if x is None else "%.3f" % x


def markdown(ctx, rows, ratios, machine):
    L = []
    L.append("## mirror_bench.py results (%s)" % machine["date"])
    L.append("")
    L.append("reps=%d (+%d unrecorded warm-up), case order seeded-shuffled per rep (seed %d), drop_caches=%s, "
             "settle %.1fs; load average (1 min) at start %.2f, at end %.2f; wall %.0fs; "
             "machine: %s, %s CPUs, %s, kernel %s" % (
                 ctx.args.reps, ctx.args.warmup, ctx.args.seed, machine.get("drop_caches"), ctx.args.settle,
                 machine.get("load_start", 0), machine.get("load_end", 0), machine.get("wall_s", 0),
                 machine.get("cpu"), machine.get("nproc"), machine.get("mem_total"), machine.get("kernel")))
    L.append("")
    L.append("### Medians")
    L.append("")
    L.append("| case | img | metric | median s | min-max s | MB/s (virtual) | MB/s (data) | samples s |")
    L.append("|---|---|---|---:|---|---:|---:|---|")
    for r in rows:
        L.append("| %s | %s | %s | %.3f | %.3f-%.3f | %s | %s | %s |" % (
            r["method"], r["image"], r["metric"], r["median_s"], r["min_s"], r["max_s"],
            pb.fmt_rate(r["MBps"]), pb.fmt_rate(r["data_MBps"]) if r["data_bytes"] != r["bytes"] else "=",
            " ".join("%.3g" % x for x in r["samples_s"])))
    L.append("")
    L.append("### Ratios (BlockMirror / peer; < 1 = BlockMirror faster)")
    L.append("")
    L.append("| img | ratio | BM median s | peer median s | ratio of medians | median of per-rep ratios (min-max) | target |")
    L.append("|---|---|---:|---:|---:|---|---|")
    for r in ratios:
        tgt = ("<= %.2f" % r["target_max"]) if r["target_max"] else ""
        verdict = ""
        if r["target_max"] and r["ratio_of_medians"] is not None:
            verdict = " met" if r["ratio_of_medians"] <= r["target_max"] else " **missed**"
        L.append("| %s | %s | %.3f | %.3f | **%.2f** | %s (%s-%s) | %s%s |" % (
            r["image"], r["ratio"], r["num_median_s"], r["den_median_s"], r["ratio_of_medians"],
            "%.2f" % r["median_paired_ratio"] if r["median_paired_ratio"] else "-",
            "%.2f" % r["paired_min"] if r["paired_min"] else "-", "%.2f" % r["paired_max"] if r["paired_max"] else "-",
            tgt, verdict))
    L.append("")
    L.append("### Checks")
    L.append("")
    allocs = {}
    for s in ctx.samples:
        i = s["info"]
        if "alloc_bytes" in i:
            allocs.setdefault((s["method"], s["image"]), set()).add((i["alloc_bytes"], i["src_alloc_bytes"]))
    for (m, img), vals in sorted(allocs.items()):
        L.append("- target allocation, %s, %s: %s" % (m, img, ", ".join(
            "%s vs source %s (%+.1f%%)" % (pb.human(a), pb.human(b), 100.0 * (a - b) / b) for a, b in sorted(vals))))
    for s in ctx.samples:
        i = s["info"]
        if s["section"] == "incremental":
            L.append("- %s %s rep %d: pieces %d, dirty %s, copied %s, bitmap after %s, copied == dirty: %s%s" % (
                s["method"], s["image"], s["rep"], i.get("pieces"), i.get("dirty_bytes"),
                i.get("bytes_copied", i.get("job_len")), i.get("bitmap_after"), i.get("copied_equals_dirty"),
                ", verified" if i.get("verified") else ""))
    for s in ctx.samples:
        if s["section"] == "mirror" and s["info"].get("verified"):
            L.append("- %s %s rep %d: target verified equal to source (qemu-img compare)" % (
                s["method"], s["image"], s["rep"]))
    cpu = {}
    for s in ctx.samples:
        if s["info"].get("cpu_s") is not None:
            cpu.setdefault((s["method"], s["image"]), []).append(s["info"]["cpu_s"])
    for (m, img), v in sorted(cpu.items()):
        L.append("- CPU time (user+sys) of the copying process, %s %s: median %.2fs" % (m, img, statistics.median(v)))
    extra = {}
    for s in ctx.samples:
        for k in ("post_s", "majflt"):
            if s["info"].get(k) is not None:
                extra.setdefault((s["method"], s["image"], k), []).append(s["info"][k])
    for (m, img, k), v in sorted(extra.items()):
        L.append("- %s, %s %s: median %s (all: %s)" % (
            {"post_s": "POST /jobs/mirror response time s", "majflt": "major page faults in the timed window"}[k],
            m, img, statistics.median(v), " ".join(str(x) for x in v)))
    if ctx.failures:
        L.append("")
        L.append("Failures:")
        for f in ctx.failures:
            L.append("- %s / %s / %s rep %d: %s" % (f["section"], f["method"], f["image"], f["rep"], f["error"]))
    if ctx.notes:
        L.append("")
        L.append("Notes:")
        for n in sorted(set(ctx.notes)):
            L.append("- " + n)
    L.append("")
    L.append("Commands ($WORK = the run's temp dir = the service's Storage:Root; $SRC/$DST = source image / target):")
    L.append("")
    for k, v in ctx.commands.items():
        L.append("- %s: `%s`" % (k, v))
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="unrecorded warm-up reps (run first)")
    ap.add_argument("--no-shuffle", dest="shuffle", action="store_false")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--images", default="A,B")
    ap.add_argument("--cases", default=",".join(CASES), help="comma list of: " + ",".join(CASES))
    ap.add_argument("--size-a", type=pb.parse_size, default=GiB)
    ap.add_argument("--size-b", type=pb.parse_size, default=8 * GiB)
    ap.add_argument("--data-b", type=pb.parse_size, default=GiB)
    ap.add_argument("--dirty-fraction", type=float, default=0.01)
    ap.add_argument("--settle", type=float, default=0.5)
    ap.add_argument("--verify", choices=["all", "last", "none"], default="last")
    ap.add_argument("--dll", default=bm_service.DEFAULT_DLL, help="published BlockMirror.Api.dll")
    ap.add_argument("--out", default=os.path.join(bm_service.HERE, "results"))
    ap.add_argument("--tag", default="mirror_bench")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args(argv)
    a.cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    bad = [c for c in a.cases if c not in CASES]
    if bad:
        ap.error("unknown case(s) %s" % bad)
    imgs = [x.strip() for x in a.images.split(",") if x.strip()]

    ctx = pb.Ctx(a)
    ctx.declare("mirror", [M_ANCHOR, M_NBDCOPY, M_QSD, M_BM])
    ctx.declare("incremental", [M_IQSD, M_IBM])
    svc = None
    rc = 0
    machine = {}
    try:
        st = os.statvfs(ctx.work)
        free = st.f_bavail * st.f_frsize
        need = a.size_a * 6 + a.data_b * 6
        if free < need:
            raise SystemExit("not enough free space in %s: %s < %s" % (ctx.work, pb.human(free), pb.human(need)))
        machine = pb.machine_info(ctx)
        machine["load_start"] = os.getloadavg()[0]
        machine["page_reporting"] = bm_service.page_reporting()
        machine["tools"]["dotnet"] = pb.first_line(["dotnet", "--version"])
        pb.log("work dir %s (%s free), reps=%d (+%d warm-up), cases=%s, images=%s, load %.2f, page reporting %s" % (
            ctx.work, pb.human(free), a.reps, a.warmup, ",".join(a.cases), ",".join(imgs), machine["load_start"],
            machine["page_reporting"]))
        ctx.reset_cache([])
        pb.log("drop_caches: %s" % ("works" if ctx.can_drop else "NOT permitted -> warm mode"))
        if "A" in imgs:
            t0 = time.monotonic()
            ctx.images["A"] = dict(pb.make_image_a(ctx.p("imgA.raw"), a.size_a, a.seed + 1), path=ctx.p("imgA.raw"))
            pb.log("image A ready in %.1fs" % (time.monotonic() - t0))
        if "B" in imgs:
            t0 = time.monotonic()
            ctx.images["B"] = dict(pb.make_image_b(ctx.p("imgB.raw"), a.size_b, a.data_b, a.seed + 2),
                                   path=ctx.p("imgB.raw"))
            pb.log("image B ready in %.1fs (alloc %s)" % (time.monotonic() - t0, pb.human(pb.alloc_bytes(ctx.p("imgB.raw")))))

        if any(c in ("bm", "inc-bm") for c in a.cases):
            sock = ctx.p("bm-nbd.sock")
            svc = bm_service.Service(ctx.work, ctx.p("bm-state"), dll=a.dll, nbd_listen="unix:" + sock)
            svc.nbd_sock = sock
            t0 = time.monotonic()
            svc.start()
            svc.start_sse()
            ctx.procs.append(svc.proc)
            ctx.record_cmd("BlockMirror service", " ".join(pb.shell_quote(ctx.clean(x)) for x in svc.argv))
            pb.log("BlockMirror service up in %.1fs (pid %d, port %d)" % (time.monotonic() - t0, svc.proc.pid, svc.port))

        bench = Bench(ctx, svc)
        fns = {"floor": bench.floor, "anchor": bench.anchor, "nbdcopy": bench.nbdcopy, "qsd": bench.qsd_mirror, "bm": bench.bm_mirror,
               "inc-qsd": bench.inc_qsd, "inc-bm": bench.inc_bm}
        cases = [(c, img) for img in imgs for c in a.cases]
        for rep in ctx.rep_range():
            for c, img in ctx.ordered(cases, rep, "mirror_bench"):
                fns[c](img, rep)
    except KeyboardInterrupt as e:
        pb.log("interrupted: %s" % e)
        rc = 130
    finally:
        if svc is not None:
            svc.stop()
            if svc.proc in ctx.procs:
                ctx.procs.remove(svc.proc)
        machine["load_end"] = os.getloadavg()[0]
        machine["drop_caches"] = bool(ctx.can_drop)
        machine["wall_s"] = round(time.monotonic() - ctx.t_start, 1)
        machine.setdefault("date", datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
        rows = pb.summarize(ctx)
        ratios = ratio_rows(ctx, rows)
        md = ctx.clean(markdown(ctx, rows, ratios, machine))
        os.makedirs(a.out, exist_ok=True)
        doc = {"machine": machine, "params": {k: v for k, v in vars(a).items() if k != "out"},
               "images": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in ctx.images.items()},
               "rows": rows, "ratios": ratios, "samples": ctx.samples, "failures": ctx.failures,
               "notes": sorted(set(ctx.notes)), "commands": ctx.commands}
        with open(os.path.join(a.out, a.tag + ".json"), "w") as f:
            f.write(ctx.clean(json.dumps(doc, indent=1, default=str)))
        with open(os.path.join(a.out, a.tag + ".md"), "w") as f:
            f.write(md)
        if svc is not None and os.path.exists(svc.log_path):
            try:
                with open(svc.log_path, "rb") as f:
                    tail = f.read()[-4000:].decode(errors="replace")
                if tail.strip():
                    with open(os.path.join(a.out, a.tag + ".service.log"), "w") as f:
                        f.write(ctx.clean(tail))
            except OSError:
                pass
        ctx.cleanup()
        print(md)
        pb.log("results in %s/%s.{json,md}" % (a.out, a.tag))
    return rc or (1 if ctx.failures else 0)


if __name__ == "__main__":
    sys.exit(main())
