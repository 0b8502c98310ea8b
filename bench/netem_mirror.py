#!/usr/bin/env python3
"""A mirror between two hosts over a slow link with a writer on the source (issue 16, "What must be
shown"): time to READY with copyMode background vs auto, and auto's switch time.

Host B is a BlockMirror in a network namespace of its own (bmnet-b), joined to host A's (the
initial namespace) by a veth pair 10.79.0.1 <-> 10.79.0.2; NBD between them over TLS with client
certificates (made with openssl in a temp directory, as bench/nbd_tls.py does). Both ends of the
pair get the issue's link, `tc qdisc add dev <veth> root netem delay 20ms rate 100mbit loss 0.1%`;
on a kernel without sch_netem (tc: "Specified qdisc kind is unknown") the link is shaped by
`tbf rate 100mbit` instead (same rate, no delay or loss) and the script says so.

A's device is a --size image of random data. Per case: B makes an empty target and exports it, A
opens it as an nbd node (tls) and mirrors sync=full into it with the case's copyMode while a writer
thread PUTs 64 KiB of random data at random 64 KiB-aligned offsets of the device's first --hot MiB
(a guest's working set; the whole device with --hot 0) at --write-rate MiB/s (a fixed rate: the writer sleeps to its schedule, and falls behind only when writes are
slowed, which is what write-blocking does). Timed from the POST: BLOCK_JOB_COPY_MODE_SWITCHED
(auto) and BLOCK_JOB_READY, capped at --cap s; a case that is not READY by then is reported as
"did not converge in N s" with the job's remaining bytes, and force-cancelled. A READY job is
cancelled in ready (the target stays an exact copy, the device stays on A) after the writer
stops, and B's target is compared with A's image byte for byte. Cases alternate per rep.

Needs root and a published service (BM_DLL, default /tmp/bm-publish/BlockMirror.Api.dll):
  dotnet publish src/BlockMirror.Api -c Release -o /tmp/bm-publish --artifacts-path /tmp/art-bench
Usage: python3 bench/netem_mirror.py [--size 1G] [--hot 256] [--write-rate 12] [--cap 240] [--reps 1]
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bm_service  # noqa: E402
import nbd_tls  # noqa: E402  (make_certs)

NS = "bmnet-b"
VETH_A, VETH_B = "bmnet-a", "bmnet-bb"
IP_A, IP_B = "10.79.0.1", "10.79.0.2"
KEY = "bench-key-not-secret"
MiB = 1 << 20
BLOCK = 64 * 1024
NETEM = ["netem", "delay", "20ms", "rate", "100mbit", "loss", "0.1%"]
TBF = ["tbf", "rate", "100mbit", "burst", "64kb", "latency", "50ms"]


def run(*argv):
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(argv), r.stderr.strip()))


def netns_up():
    run("ip", "netns", "add", NS)
    run("ip", "link", "add", VETH_A, "type", "veth", "peer", "name", VETH_B)
    run("ip", "link", "set", VETH_B, "netns", NS)
    run("ip", "addr", "add", IP_A + "/24", "dev", VETH_A)
    run("ip", "link", "set", VETH_A, "up")
    run("ip", "-n", NS, "addr", "add", IP_B + "/24", "dev", VETH_B)
    run("ip", "-n", NS, "link", "set", VETH_B, "up")
    run("ip", "-n", NS, "link", "set", "lo", "up")


def netns_down():
    subprocess.run(["ip", "link", "del", VETH_A], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)


def shape_link():
    """netem on both ends where the kernel has it, tbf at the same rate where not; the discipline used."""
    try:
        run("tc", "qdisc", "add", "dev", VETH_A, "root", *NETEM)
        discipline = NETEM
    except RuntimeError as e:
        if "qdisc kind is unknown" not in str(e):
            raise
        run("tc", "qdisc", "add", "dev", VETH_A, "root", *TBF)
        discipline = TBF
    run("tc", "-n", NS, "qdisc", "add", "dev", VETH_B, "root", *discipline)
    return " ".join(discipline)


class Writer(threading.Thread):
    """PUT /nodes/{node}/data of 64 KiB at a fixed rate, on a connection of its own."""

    def __init__(self, service, node, size, rate, seed):
        super().__init__(daemon=True)
        self.svc = bm_service.Service.__new__(bm_service.Service)
        self.svc.host, self.svc.port, self.svc.conn = service.host, service.port, None
        self.node, self.size, self.interval = node, size, BLOCK / (rate * MiB)
        self.random = random.Random(seed)
        self.stop_flag = threading.Event()
        self.written = 0

    def run(self):
        due = time.monotonic()
        piece = os.urandom(BLOCK)
        while not self.stop_flag.is_set():
            off = self.random.randrange(self.size // BLOCK) * BLOCK
            # A new piece each time would cost more CPU than the writes; rotating one keeps data changing.
            piece = piece[4096:] + piece[:4096]
            self.svc.request("PUT", "/api/v1/nodes/%s/data?offset=%d" % (self.node, off), raw=piece)
            self.written += BLOCK
            due += self.interval
            left = due - time.monotonic()
            if left > 0:
                time.sleep(left)

    def stop(self):
        self.stop_flag.set()
        self.join()


def same_files(x, y):
    with open(x, "rb") as f, open(y, "rb") as g:
        while True:
            p, q = f.read(16 * MiB), g.read(16 * MiB)
            if p != q:
                return False
            if not p:
                return True


def run_case(a, b, mode, args, size, n):
    auth = {"Authorization": "Bearer " + KEY}
    dst, job, node = "dst%d" % n, "%s-%d" % (mode, n), "t%d" % n
    b.request("POST", "/api/v1/nodes", {"name": dst, "driver": "raw", "path": dst + ".img", "create": {"size": size}}, headers=auth)
    _, export = b.request("POST", "/api/v1/exports", {"name": dst, "node": dst, "writable": True}, headers=auth)
    a.post("/api/v1/nodes", {"name": node, "driver": "nbd", "uri": export["uri"], "tls": True})
    writer = Writer(a, "src", args.hot * MiB or size, args.write_rate, n)
    result = {"mode": mode, "switch": None, "ready": None, "exact": None, "remaining": None,
              "load_start": os.getloadavg()[0]}
    try:
        writer.start()
        time.sleep(1)  # the writer at its rate before the job starts
        t0 = time.monotonic()
        a.post("/api/v1/jobs/mirror", {"id": job, "device": "src", "target": node, "sync": "full", "copyMode": mode})
        try:
            if mode == "auto":
                ev = a.sse.wait("BLOCK_JOB_COPY_MODE_SWITCHED", job, timeout=args.cap, after=t0)
                result["switch"] = ev["recv_monotonic"] - t0
                result["why"] = {k: ev["data"].get(k) for k in ("copyRate", "dirtyRate", "remaining", "remainingAtWindowStart")}
            ev = a.sse.wait("BLOCK_JOB_READY", job, timeout=max(0.0, args.cap - (time.monotonic() - t0)), after=t0)
            result["ready"] = ev["recv_monotonic"] - t0
        except TimeoutError:
            state = a.job(job)
            result["remaining"] = state["remaining"]
            result["bytes_copied"] = state["bytesCopied"]
        writer.stop()
        result["written_mib"] = writer.written / MiB
        result["load_end"] = os.getloadavg()[0]
        if result["ready"] is None:
            a.post("/api/v1/jobs/%s/cancel" % job, {"force": True})
            a.sse.wait("BLOCK_JOB_CANCELLED", job)
        else:
            a.post("/api/v1/jobs/%s/cancel" % job)
            ended = a.sse.wait(("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), job)
            if ended["data"].get("error"):
                raise RuntimeError("mirror %s ended with %s" % (job, ended["data"]))
            result["bytes_copied"] = a.job(job)["bytesCopied"]
            result["exact"] = same_files(os.path.join(a.root, "src.img"), os.path.join(b.root, dst + ".img"))
        a.sse.drop_job(job)
        return result
    finally:
        if writer.is_alive():
            writer.stop()
        a.request("POST", "/api/v1/jobs/%s/dismiss" % job, {}, check=False)
        a.remove_node(node)
        b.request("DELETE", "/api/v1/exports/" + dst, check=False, headers=auth)
        b.request("DELETE", "/api/v1/nodes/%s?deleteImage=true" % dst, check=False, headers=auth)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--hot", type=int, default=256, help="MiB at the device's start the writer writes (0: all of it)")
    ap.add_argument("--write-rate", type=float, default=12, help="the writer's rate, MiB/s")
    ap.add_argument("--cap", type=float, default=240, help="seconds a case may take to READY")
    ap.add_argument("--window", default="00:00:05", help="Jobs:AutoCopyModeWindow")
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    size = int(args.size[:-1]) << {"M": 20, "G": 30}[args.size[-1]] if args.size[-1] in "MG" else int(args.size)

    work = tempfile.mkdtemp(prefix="bm-netem-bench-")
    services = []
    rows = []
    try:
        netns_down()
        netns_up()
        link = shape_link()
        print("link: %s on both ends of the veth pair" % link, flush=True)
        certs = os.path.join(work, "certs")
        os.makedirs(certs)
        nbd_tls.make_certs(certs, IP_B)
        c = lambda name: os.path.join(certs, name)  # noqa: E731
        b = bm_service.Service(os.path.join(work, "b", "images"), os.path.join(work, "b"),
                               nbd_listen="%s:10809" % IP_B, host=IP_B, pin=("ip", "netns", "exec", NS), extra_args=[
                                   "--Auth:ApiKeys:0", KEY,
                                   "--Nbd:Tls:CertificatePath", c("host-b-cert.pem"), "--Nbd:Tls:KeyPath", c("host-b-key.pem"),
                                   "--Nbd:Tls:ClientCaPath", c("ca-cert.pem"), "--Nbd:Tls:AllowedClients:0", "CN=host-a,O=Bench"])
        a = bm_service.Service(os.path.join(work, "a", "images"), os.path.join(work, "a"), extra_args=[
            "--Jobs:AutoCopyModeWindow", args.window,
            "--Nbd:Client:Tls:CaPath", c("ca-cert.pem"), "--Nbd:Client:Tls:CertificatePath", c("host-a-cert.pem"),
            "--Nbd:Client:Tls:KeyPath", c("host-a-key.pem")])
        for s in (b, a):
            os.makedirs(s.root, exist_ok=True)
            s.start()
            services.append(s)
        a.start_sse()
        with open(os.path.join(a.root, "src.img"), "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(MiB))
        a.post("/api/v1/nodes", {"name": "src", "driver": "raw", "path": "src.img"})
        n = 0
        for rep in range(args.reps):
            for mode in (("background", "auto") if rep % 2 == 0 else ("auto", "background")):
                n += 1
                r = run_case(a, b, mode, args, size, n)
                rows.append(r)
                print(r, flush=True)
    finally:
        for s in reversed(services):
            s.stop()
        netns_down()
        shutil.rmtree(work, ignore_errors=True)

    print("\n%s, link %s, writer %g MiB/s of 64 KiB random writes over %s, window %s, cap %g s\n"
          % (args.size, link, args.write_rate, "the first %d MiB" % args.hot if args.hot else "all of it", args.window, args.cap))
    print("| copyMode | to switch | to READY | bytes copied | written by the writer | target exact | load avg start/end |")
    print("|---|---:|---:|---:|---:|---|---|")
    for r in rows:
        ready = "%.1f s" % r["ready"] if r["ready"] is not None else \
            "did not converge in %g s (%.0f MiB remaining)" % (args.cap, r["remaining"] / MiB)
        switch = "%.1f s" % r["switch"] if r["switch"] is not None else ("never" if r["mode"] == "auto" else "—")
        exact = {None: "—", True: "yes", False: "NO"}[r["exact"]]
        print("| %s | %s | %s | %.0f MiB | %.0f MiB | %s | %.1f / %.1f |" % (
            r["mode"], switch, ready, r.get("bytes_copied", 0) / MiB, r["written_mib"], exact, r["load_start"], r["load_end"]))


if __name__ == "__main__":
    main()
