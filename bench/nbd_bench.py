#!/usr/bin/env python3
"""NBD export throughput: BlockMirror's NBD server side by side with
qemu-storage-daemon's export and nbdkit's file plugin, in one run.

writes  1 GiB (image A, warm in the page cache) sequentially with
        `nbdcopy --connections=1 --threads=1 --request-size=1048576
        --requests=16 --flush SRC URI` into a fresh sparse file served by:
        BlockMirror with 0 and with 4 enabled bitmaps (bench/serve_nbd.sh
        through peer_bench's --extra-nbd hook), qsd (0 and 4 bitmaps, plus
        peer_bench's malloc-tunable variant), nbdkit file, and a local file
        without NBD. This is peer_bench.section_nbdwrite, run in-process.
reads   1 GiB from an export of image A to null: with the same nbdcopy
        options (`nbdcopy ... URI null:`), page cache warm (image read first)
        and cold (caches dropped); BlockMirror (0 bitmaps), qsd, nbdkit -r.

Every case runs --reps times after --warmup unrecorded reps, in a seeded
shuffled order per rep; caches are dropped before every timed run.
Results: bench/results/<tag>.json/.md; the markdown is printed on stdout.
Reuses ../shared/peers/peer_bench.py (relative to the repository root).
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bm_service  # noqa: E402

pb, qmp = bm_service.import_peers()
KiB, MiB, GiB = pb.KiB, pb.MiB, pb.GiB
SERVE = os.path.join(bm_service.HERE, "serve_nbd.sh")
BM0, BM4 = "BlockMirror export 0 bitmaps", "BlockMirror export 4 bitmaps"
BM0_COLD = "BlockMirror export 0 bitmaps, cold JIT (first transfer after start)"
BM0_WATCH = "BlockMirror export 0 bitmaps, content root = image dir (config watcher sees every write)"


def patient_extra_nbd_start(timeout):
    """peer_bench.extra_nbd_start waits 30 s for the socket; a .NET service that
    runs its migrations on a loaded 2-core machine can take longer to come up
    (untimed). Same logic, longer deadline."""
    orig = pb.extra_nbd_start

    def start(ctx, tmpl, export, dst, size):
        import shlex
        import socket as _s
        sock = ctx.p("extra-nbd.sock")
        pb.rm(sock)
        cmd = tmpl.format(sock=shlex.quote(sock), dst=shlex.quote(dst), size=size)
        p = ctx.spawn(["bash", "-c", "exec " + cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if p.poll() is not None or time.monotonic() > deadline:
                p.poll() is None and p.terminate()
                ctx.reap(p, timeout=5)
                raise RuntimeError("extra NBD server did not start: %s" % ctx.clean(cmd))
            if os.path.exists(sock):
                c = _s.socket(_s.AF_UNIX, _s.SOCK_STREAM)
                try:
                    c.connect(sock)
                    break
                except OSError:
                    pass
                finally:
                    c.close()
            time.sleep(0.02)
        return p, "nbd+unix:///%s?socket=%s" % (export, sock)
    start.orig = orig
    return start


# ---------------------------------------------------------------------------
# reads
# ---------------------------------------------------------------------------
READ_SERVERS = [("bm", "BlockMirror export"), ("qsd", "qsd NBD export"), ("nbdkit", "nbdkit file -r")]


def read_case_name(server, mode):
    return "nbdcopy %s -> null:, 1 MiB x 16, %s cache" % (dict(READ_SERVERS)[server], mode)


def section_nbdread(ctx):
    a = ctx.args
    src = ctx.images["A"]["path"]
    size = ctx.images["A"]["size"]
    cases = [(s, m) for s, _ in READ_SERVERS for m in ("warm", "cold")]
    ctx.declare("nbdread", [read_case_name(s, m) for s, m in cases])
    for rep in ctx.rep_range():
        for server, mode in ctx.ordered(cases, rep, "nbdread"):
            name = read_case_name(server, mode)
            p = q = None
            try:
                if server == "bm":
                    p, uri = pb.extra_nbd_start(ctx, SERVE + " {dst} {sock} 0", "tgt", src, size)
                    ctx.record_cmd("read server: BlockMirror", "bench/serve_nbd.sh $SRC $WORK/extra-nbd.sock 0")
                elif server == "qsd":
                    p, q = pb.qsd_start(ctx, "nbdr")
                    q.execute("blockdev-add", pb.raw_node("src", src))
                    uri = pb.nbd_export(q, "src", ctx.p("nbd-r.sock"), "src")
                    ctx.record_cmd("read server: qsd", "blockdev-add file+raw $SRC; nbd-server-start unix; "
                                   "block-export-add nbd (writable)")
                else:
                    sock, pidf = ctx.p("nbdkit-r.sock"), ctx.p("nbdkit-r.pid")
                    pb.rm(sock, pidf)
                    argv = ["nbdkit", "--exit-with-parent", "-r", "-f", "-P", pidf, "-U", sock, "file", src]
                    ctx.record_cmd("read server: nbdkit", [("$SRC" if x == src else x) for x in argv])
                    p = ctx.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    deadline = time.monotonic() + 15
                    while not (os.path.exists(pidf) and os.path.getsize(pidf) > 0):
                        if p.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError("nbdkit did not start")
                        time.sleep(0.01)
                    uri = "nbd+unix:///?socket=" + sock
                argv = ["nbdcopy", "--connections=1", "--threads=1", "--request-size=%d" % MiB,
                        "--requests=16", uri, "null:"]
                ctx.record_cmd("nbdread", "nbdcopy --connections=1 --threads=1 --request-size=1048576 "
                               "--requests=16 URI null:")
                ctx.reset_cache([src])
                if mode == "warm":
                    pb.read_file(src)
                la = os.getloadavg()[0]
                t0 = time.perf_counter()
                ctx.run(argv)
                dt = time.perf_counter() - t0
                info = {"load1": round(la, 2)}
                if pb.want_verify(ctx, rep):
                    chk = ctx.p("read-check.raw")
                    pb.create_sparse(chk, size)
                    ctx.run(["nbdcopy", uri, chk])
                    rc = subprocess.run(["cmp", "-s", src, chk]).returncode
                    pb.rm(chk)
                    if rc != 0:
                        raise RuntimeError("read verification failed: data read differs from the image")
                    info["verified"] = True
                if q is not None:
                    pb.nbd_unexport(q, "src")
                    q.execute("blockdev-del", {"node-name": "src"})
                    pb.qsd_stop(ctx, p, q)
                else:
                    p.terminate()
                    ctx.reap(p)
                p = None
                ctx.add("nbdread", name, "A", rep, {"nbdcopy read": (dt, size, size)}, **info)
            except Exception as e:  # noqa: BLE001
                ctx.fail("nbdread", name, "A", rep, e)
            finally:
                if p is not None:
                    if q is not None:
                        pb.qsd_stop(ctx, p, q)
                    else:
                        p.terminate()
                        ctx.reap(p)


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------
def find(rows, section, pred):
    for r in rows:
        if r["section"] == section and pred(r["method"]):
            return r
    return None


def paired(ctx, section, m_num, m_den):
    by = {(s["section"], s["method"], s["rep"]): s for s in ctx.samples}
    out = []
    for rep in range(1, ctx.args.reps + 1):
        a, b = by.get((section, m_num, rep)), by.get((section, m_den, rep))
        if a and b:
            out.append(next(iter(a["metrics"].values()))["s"] / next(iter(b["metrics"].values()))["s"])
    return out


def ratio_rows(ctx, rows):
    reqs = ctx.args.nbd_requests[-1]
    ex = "(extra) nbdcopy -> %s, 1 MiB x %d in flight"
    W = {
        "bm0": lambda m: m == ex % (BM0, reqs),
        "bm4": lambda m: m == ex % (BM4, reqs),
        "bm0cold": lambda m: m == ex % (BM0_COLD, reqs),
        "bm0watch": lambda m: m == ex % (BM0_WATCH, reqs),
        "qsd0": lambda m: m.startswith("nbdcopy -> qsd NBD export, 0 bitmaps, 1 MiB x %d in flight" % reqs) and "pinned" not in m,
        "qsd4": lambda m: m.startswith("nbdcopy -> qsd NBD export, 4 bitmaps, 1 MiB x %d in flight" % reqs) and "pinned" not in m,
        "nbdkit": lambda m: m == "(ref) nbdcopy -> nbdkit file export, 1 MiB x %d in flight" % reqs,
        "file": lambda m: m == "(ref) nbdcopy -> local file, no NBD, 1 MiB x %d in flight" % reqs,
    }
    wr = {k: find(rows, "nbdwrite", f) for k, f in W.items()}
    spec = [("bm0", "nbdkit", "writes: BM 0 bitmaps / nbdkit", 1.0),
            ("bm4", "nbdkit", "writes: BM 4 bitmaps / nbdkit", 1.0),
            ("bm0", "qsd0", "writes: BM 0 bitmaps / qsd 0 bitmaps", None),
            ("bm4", "qsd4", "writes: BM 4 bitmaps / qsd 4 bitmaps", None),
            ("bm0", "file", "writes: BM 0 bitmaps / local file (no NBD)", None),
            ("bm0cold", "nbdkit", "writes: BM 0 bitmaps cold JIT / nbdkit", None),
            ("bm0cold", "bm0", "writes: BM cold JIT / BM warm", None),
            ("bm0watch", "bm0", "writes: BM content root = image dir / BM (default)", None)]
    out = []
    for n, d, label, target in spec:
        if wr[n] and wr[d]:
            pr = paired(ctx, "nbdwrite", wr[n]["method"], wr[d]["method"])
            out.append({"ratio": label, "num_median_s": wr[n]["median_s"], "den_median_s": wr[d]["median_s"],
                        "ratio_of_medians": wr[n]["median_s"] / wr[d]["median_s"],
                        "median_paired_ratio": statistics.median(pr) if pr else None,
                        "target_max_time_ratio": target})
    for mode in ("warm", "cold"):
        rd = {s: find(rows, "nbdread", lambda m, s=s: m == read_case_name(s, mode)) for s, _ in READ_SERVERS}
        for d in ("nbdkit", "qsd"):
            if rd["bm"] and rd[d]:
                pr = paired(ctx, "nbdread", rd["bm"]["method"], rd[d]["method"])
                out.append({"ratio": "reads (%s): BM / %s" % (mode, d), "num_median_s": rd["bm"]["median_s"],
                            "den_median_s": rd[d]["median_s"],
                            "ratio_of_medians": rd["bm"]["median_s"] / rd[d]["median_s"],
                            "median_paired_ratio": statistics.median(pr) if pr else None,
                            "target_max_time_ratio": None})
    return out


def bucket(samples_s, fast=1.5):
    return "%d/%d" % (sum(1 for x in samples_s if x <= fast), len(samples_s))


def markdown(ctx, rows, ratios, machine, reports):
    L = ["## nbd_bench.py results (%s)" % machine["date"], ""]
    L.append("reps=%d (+%d unrecorded warm-up), seeded-shuffled case order per rep (seed %d), drop_caches=%s; "
             "load average (1 min) at start %.2f, at end %.2f; wall %.0fs; machine: %s, %s CPUs, %s, kernel %s" % (
                 ctx.args.reps, ctx.args.warmup, ctx.args.seed, machine.get("drop_caches"),
                 machine.get("load_start", 0), machine.get("load_end", 0), machine.get("wall_s", 0),
                 machine.get("cpu"), machine.get("nproc"), machine.get("mem_total"), machine.get("kernel")))
    L.append("")
    L.append("| section | case | median s | MB/s | min-max s | reps <= 1.5 s | samples s (run order) |")
    L.append("|---|---|---:|---:|---|---|---|")
    for r in rows:
        L.append("| %s | %s | %.3f | %s | %.3f-%.3f | %s | %s |" % (
            r["section"], r["method"], r["median_s"], pb.fmt_rate(r["MBps"]), r["min_s"], r["max_s"],
            bucket(r["samples_s"]), " ".join("%.3g" % x for x in r["samples_s"])))
    L.append("")
    L.append("| ratio (time; < 1 = BlockMirror faster) | BM median s | peer median s | ratio of medians | "
             "median of per-rep ratios | target |")
    L.append("|---|---:|---:|---:|---:|---|")
    for r in ratios:
        t = r["target_max_time_ratio"]
        verdict = ("<= %.2f %s" % (t, "met" if r["ratio_of_medians"] <= t else "**missed**")) if t else ""
        L.append("| %s | %.3f | %.3f | **%.2f** | %s | %s |" % (
            r["ratio"], r["num_median_s"], r["den_median_s"], r["ratio_of_medians"],
            "%.2f" % r["median_paired_ratio"] if r["median_paired_ratio"] else "-", verdict))
    L.append("")
    L.append("Checks:")
    L.append("")
    size = ctx.images["A"]["size"]
    four = [r for r in reports if len(r.get("bitmaps", [])) == 4]
    if four:
        ok = all(b["count"] == size for r in four for b in r["bitmaps"])
        L.append("- BlockMirror with 4 bitmaps: %d server stops reported, every bitmap count == %d: %s" % (
            len(four), size, ok))
    for s in ctx.samples:
        i = s["info"]
        if i.get("verified"):
            L.append("- %s rep %d: verified%s" % (s["method"], s["rep"],
                                                  (", qsd bitmap counts %s" % i["bitmap_counts"]) if "bitmap_counts" in i else ""))
        elif "bitmap_counts" in i and i["bitmap_counts"]:
            pass
    if ctx.failures:
        L += ["", "Failures:"]
        for f in ctx.failures:
            L.append("- %s / %s rep %d: %s" % (f["section"], f["method"], f["rep"], f["error"]))
    if ctx.notes:
        L += ["", "Notes:"]
        L += ["- " + n for n in sorted(set(ctx.notes))]
    L += ["", "Commands ($WORK = the run's temp dir, $SRC = image A, $DST = the fresh target):", ""]
    for k, v in ctx.commands.items():
        L.append("- %s: `%s`" % (k, v))
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-shuffle", dest="shuffle", action="store_false")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--size-a", type=pb.parse_size, default=GiB)
    ap.add_argument("--nbd-requests", default="16", help="nbdcopy --requests values for writes (e.g. 1,16)")
    ap.add_argument("--no-variants", dest="variants", action="store_false",
                    help="skip the two diagnostic BlockMirror write variants (cold JIT; image inside the content root)")
    ap.add_argument("--pin", action="store_true", help="also peer_bench's CPU-pinned qsd/nbdkit/file write cases")
    ap.add_argument("--sections", default="nbdwrite,nbdread")
    ap.add_argument("--settle", type=float, default=0.5)
    ap.add_argument("--verify", choices=["all", "last", "none"], default="last")
    ap.add_argument("--start-timeout", type=float, default=120, help="seconds to wait for serve_nbd.sh")
    ap.add_argument("--dll", default=bm_service.DEFAULT_DLL)
    ap.add_argument("--out", default=os.path.join(bm_service.HERE, "results"))
    ap.add_argument("--tag", default="nbd_bench")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args(argv)
    a.nbd_requests = [int(x) for x in a.nbd_requests.split(",")]
    a.sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    a.extra_nbd = ["%s::%s {dst} {sock} 0::tgt" % (BM0, SERVE), "%s::%s {dst} {sock} 4::tgt" % (BM4, SERVE)]
    if a.variants:
        a.extra_nbd += ["%s::env BM_WARMUP_MB=0 %s {dst} {sock} 0::tgt" % (BM0_COLD, SERVE),
                        "%s::env BM_CWD=@image-dir %s {dst} {sock} 0::tgt" % (BM0_WATCH, SERVE)]
    os.environ["BM_DLL"] = a.dll
    if not os.path.isfile(a.dll):
        sys.exit("service binary %s not found; publish it first (see bench/README.md)" % a.dll)

    ctx = pb.Ctx(a)
    report = ctx.p("serve_nbd.report.jsonl")
    os.environ["BM_SERVE_REPORT"] = report
    pb.extra_nbd_start = patient_extra_nbd_start(a.start_timeout)
    machine = {}
    rc = 0
    try:
        machine = pb.machine_info(ctx)
        machine["load_start"] = os.getloadavg()[0]
        ctx.reset_cache([])
        pb.log("work dir %s, reps=%d (+%d warm-up), drop_caches %s, load %.2f" % (
            ctx.work, a.reps, a.warmup, ctx.can_drop, machine["load_start"]))
        ctx.images["A"] = dict(pb.make_image_a(ctx.p("imgA.raw"), a.size_a, a.seed + 1), path=ctx.p("imgA.raw"))
        for sec in a.sections:
            t0 = time.monotonic()
            pb.log("== section %s" % sec)
            if sec == "nbdwrite":
                pb.section_nbdwrite(ctx)
            elif sec == "nbdread":
                section_nbdread(ctx)
            else:
                raise SystemExit("unknown section %s" % sec)
            pb.log("== section %s done in %.0fs" % (sec, time.monotonic() - t0))
    except KeyboardInterrupt as e:
        pb.log("interrupted: %s" % e)
        rc = 130
    finally:
        machine["load_end"] = os.getloadavg()[0]
        machine["drop_caches"] = bool(ctx.can_drop)
        machine["wall_s"] = round(time.monotonic() - ctx.t_start, 1)
        machine.setdefault("date", datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
        reports = []
        if os.path.exists(report):
            with open(report) as f:
                for line in f:
                    try:
                        reports.append(json.loads(line))
                    except ValueError:
                        pass
        rows = pb.summarize(ctx)
        ratios = ratio_rows(ctx, rows)
        md = ctx.clean(markdown(ctx, rows, ratios, machine, reports)).replace(bm_service.HERE, "bench")
        os.makedirs(a.out, exist_ok=True)
        doc = {"machine": machine, "params": {k: v for k, v in vars(a).items() if k != "out"},
               "rows": rows, "ratios": ratios, "samples": ctx.samples, "failures": ctx.failures,
               "serve_nbd_reports": reports, "notes": sorted(set(ctx.notes)), "commands": ctx.commands}
        with open(os.path.join(a.out, a.tag + ".json"), "w") as f:
            f.write(ctx.clean(json.dumps(doc, indent=1, default=str)))
        with open(os.path.join(a.out, a.tag + ".md"), "w") as f:
            f.write(md)
        ctx.cleanup()
        print(md)
        pb.log("results in %s/%s.{json,md}" % (a.out, a.tag))
    return rc or (1 if ctx.failures else 0)


if __name__ == "__main__":
    sys.exit(main())
