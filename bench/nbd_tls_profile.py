#!/usr/bin/env python3
"""Where the CPU of a 1 GiB mirror over NBD (plain or TLS) goes, per side, per GiB: perf samples of
both services sorted into a few categories that a change to the transport can or cannot move.

Service A mirrors a random image into an export of service B over loopback (the same setup as
bench/nbd_tls.py, one B, one mode per run). After the warm-up mirrors, `perf record -F 999` follows
both processes for --reps full mirrors. Categories per process, in seconds of CPU per GiB copied:

  pwrite page-cache copy  B writing the target (copy_folio_from_iter*): the same code in both modes,
                          and the figure that moves most with other load on the machine
  JIT                     libclrjit: the runtime compiling (tiering up) code in the background
  libcrypto+libssl        the TLS record layer and the cipher (OpenSSL under SslStream)
  memmove                 libc memmove (TLS: SslStream's and OpenSSL's copies, and ours)
  kernel other            syscalls, TCP over loopback (the receiver's work runs in the sender's send)
  other user              .NET code and the runtime

--small N runs N mirrors of a 64 MiB image first (each is a whole REST + job + NBD connection +
handshake): once-per-mirror code is then compiled at its final tier before the measured mirrors,
which shows what the JIT costs a freshly started service. Needs root or perf_event_paranoid <= 1.

  BM_DLL=/tmp/bm-publish/BlockMirror.Api.dll python3 bench/nbd_tls_profile.py --mode tls --reps 3 --small 40
"""

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bm_service  # noqa: E402
import nbd_tls  # noqa: E402

CATEGORIES = ["total", "pwrite page-cache copy", "JIT", "total - pwrite - JIT",
              "libcrypto+libssl", "memmove", "kernel other", "other user"]
SAMPLE = re.compile(r"^\s*(.*?)\s+(\d+)/(\d+)\s+([0-9a-f]+)\s+(.*)\((.*?)\)\s*$")


def category(sym, dso):
    if "copy_folio_from_iter" in sym:
        return "pwrite page-cache copy"
    if "clrjit" in dso:
        return "JIT"
    if "libcrypto" in dso or "libssl" in dso:
        return "libcrypto+libssl"
    if "memmove" in sym:
        return "memmove"
    if dso.startswith("[kernel"):
        return "kernel other"
    return "other user"


def categorize(data, pids):
    out = subprocess.run(["perf", "script", "-G", "-i", data, "-F", "pid,tid,comm,ip,sym,dso"],
                         capture_output=True, text=True, errors="replace").stdout
    counts = {pid: collections.Counter() for pid in pids}
    for line in out.splitlines():
        m = SAMPLE.match(line)
        if not m or int(m.group(2)) not in counts:
            continue
        counts[int(m.group(2))][category(m.group(5).strip(), m.group(6).split("/")[-1])] += 1
    for c in counts.values():
        c["total"] = sum(c.values())
        c["total - pwrite - JIT"] = c["total"] - c["pwrite page-cache copy"] - c["JIT"]
    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("plain", "tls"), default="tls")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--small", type=int, default=0, help="64 MiB warm-up mirrors before the 1 GiB warm-up")
    ap.add_argument("--nbd-port", type=int, default=12809)
    args = ap.parse_args()
    size = 1 << 30
    work = tempfile.mkdtemp(prefix="bm-tls-profile-")
    services = []
    # JIT-compiled frames resolve through /tmp/perf-PID.map.
    os.environ.update(DOTNET_PerfMapEnabled="1", DOTNET_EnableWriteXorExecute="0")
    try:
        certs = os.path.join(work, "certs")
        os.makedirs(certs)
        nbd_tls.make_certs(certs, "127.0.0.1")
        c = lambda name: os.path.join(certs, name)  # noqa: E731
        b_args = ["--Auth:ApiKeys:0", nbd_tls.KEY]
        if args.mode == "tls":
            b_args += ["--Nbd:Tls:CertificatePath", c("host-b-cert.pem"), "--Nbd:Tls:KeyPath", c("host-b-key.pem"),
                       "--Nbd:Tls:ClientCaPath", c("ca-cert.pem"), "--Nbd:Tls:AllowedClients:0", "CN=host-a,O=Bench"]
        b = bm_service.Service(os.path.join(work, "b", "images"), os.path.join(work, "b"),
                               nbd_listen="127.0.0.1:%d" % args.nbd_port, extra_args=b_args)
        a = bm_service.Service(os.path.join(work, "a", "images"), os.path.join(work, "a"), extra_args=[
            "--Nbd:Client:Tls:CaPath", c("ca-cert.pem"), "--Nbd:Client:Tls:CertificatePath", c("host-a-cert.pem"),
            "--Nbd:Client:Tls:KeyPath", c("host-a-key.pem")])
        for s in (b, a):
            os.makedirs(s.root, exist_ok=True)
            services.append(s)
            s.start(timeout=180)
        a.start_sse()
        for name, nbytes in (("src", size), ("warm", 64 << 20)):
            with open(os.path.join(a.root, name + ".img"), "wb") as f:
                for _ in range(nbytes >> 20):
                    f.write(os.urandom(1 << 20))
            a.post("/api/v1/nodes", {"name": name, "driver": "raw", "path": name + ".img", "readOnly": True})
        for i in range(args.small):
            nbd_tls.mirror_once(a, b, args.mode, 64 << 20, 2000 + i, device="warm")
        nbd_tls.mirror_once(a, b, args.mode, size, 900)
        data = os.path.join(work, "perf.data")
        perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", data, "-p",
                                 "%d,%d" % (b.proc.pid, a.proc.pid)], stderr=subprocess.DEVNULL)
        try:
            for i in range(args.reps):
                s, ca, cb = nbd_tls.mirror_once(a, b, args.mode, size, i)
                with open("/proc/loadavg") as f:
                    load = f.read().split()[0]
                print("%s %.2f s  cpu A %.2f s  B %.2f s  load %s" % (args.mode, s, ca, cb, load), flush=True)
        finally:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        counts = categorize(data, (a.proc.pid, b.proc.pid))
        print("%-24s %10s %10s   (s of CPU per GiB, perf samples / 999 Hz / %d GiB)" % ("", "A", "B", args.reps))
        for k in CATEGORIES:
            print("%-24s %10.2f %10.2f" % (k, counts[a.proc.pid][k] / 999 / args.reps, counts[b.proc.pid][k] / 999 / args.reps))
    finally:
        for s in services:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
