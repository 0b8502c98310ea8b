#!/usr/bin/env python3
"""NBD over TLS vs plain: a full mirror of a 1 GiB random image from one BlockMirror (A) into
an export of another (B), timed from POST /api/v1/jobs/mirror to BLOCK_JOB_READY.

B runs twice, side by side: one service with plain NBD and one with Nbd:Tls (a certificate,
client certificates required, AllowedClients = host A). A is one service whose nbd nodes reach
either (nbd:// or nbds://, with A's certificate from Nbd:Client:Tls). The cases alternate per
rep in a seeded-shuffled order, so load on a shared machine hits both alike; one unrecorded
warm-up mirror of each kind first. Certificates are made with openssl in a temp directory.

  --netns   run both B services in a network namespace of their own (bmtls-b), joined to A's
            (the initial namespace) by a veth pair 10.77.0.1 <-> 10.77.0.2; needs root.
            Without it everything is on loopback.
  --host-cpus A:B  pin host A to CPU A and both B services to CPU B (taskset), as two hosts
            of one core each would run: without it the two "hosts" share every core, so the
            CPU TLS adds on both sides lands on one budget, which two machines do not share.

Needs a published service (BM_DLL, default /tmp/bm-publish/BlockMirror.Api.dll):
  dotnet publish src/BlockMirror.Api -c Release -o /tmp/bm-publish --artifacts-path /tmp/art-bench
Usage: python3 bench/nbd_tls.py [--size 1G] [--reps 3] [--netns] [--host-cpus 0:1] [--warm-mirrors N]
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bm_service  # noqa: E402

NS = "bmtls-b"
VETH_A, VETH_B = "bmtls-a", "bmtls-bb"
IP_A, IP_B = "10.77.0.1", "10.77.0.2"
KEY = "bench-key-not-secret"


def run(*argv):
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def openssl(*argv):
    run("openssl", *argv)


def make_certs(d, ip_b):
    cnf = os.path.join(d, "req.cnf")
    with open(cnf, "w") as f:
        f.write("[req]\ndistinguished_name=dn\nprompt=no\n[dn]\n")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", os.path.join(d, "ca-key.pem"),
            "-out", os.path.join(d, "ca-cert.pem"), "-days", "2", "-subj", "/CN=Bench CA", "-config", cnf,
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for host in ("host-a", "host-b"):
        ext = os.path.join(d, host + ".ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1,IP:%s\n" % ip_b)
        openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", os.path.join(d, host + "-key.pem"),
                "-out", os.path.join(d, host + ".csr"), "-subj", "/O=Bench/CN=" + host, "-config", cnf)
        openssl("x509", "-req", "-in", os.path.join(d, host + ".csr"), "-CA", os.path.join(d, "ca-cert.pem"),
                "-CAkey", os.path.join(d, "ca-key.pem"), "-CAcreateserial", "-days", "2", "-extfile", ext,
                "-out", os.path.join(d, host + "-cert.pem"))


def netns_up():
    run("ip", "netns", "add", NS)
    run("ip", "link", "add", VETH_A, "type", "veth", "peer", "name", VETH_B)
    run("ip", "link", "set", VETH_B, "netns", NS)
    run("ip", "addr", "add", IP_A + "/24", "dev", VETH_A)
    run("ip", "link", "set", VETH_A, "up")
    run("ip", "netns", "exec", NS, "ip", "addr", "add", IP_B + "/24", "dev", VETH_B)
    run("ip", "netns", "exec", NS, "ip", "link", "set", VETH_B, "up")
    run("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")


def netns_down():
    subprocess.run(["ip", "link", "del", VETH_A], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)


def cpu_seconds(service):
    """The service process's user+system CPU so far (the copy's cost, less sensitive to a busy machine than the wall time)."""
    with open("/proc/%d/stat" % service.proc.pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mirror_once(a, b, mode, size, n, device="src"):
    """(seconds from the POST to BLOCK_JOB_READY, CPU seconds of A, of B) of a full mirror of A's device into a new export of B."""
    auth = {"Authorization": "Bearer " + KEY}
    dst, job = "dst%d" % n, "m%d" % n
    b.request("POST", "/api/v1/nodes", {"name": dst, "driver": "raw", "path": dst + ".img", "create": {"size": size}}, headers=auth)
    _, export = b.request("POST", "/api/v1/exports", {"name": dst, "node": dst, "writable": True}, headers=auth)
    uri = export["uri"]
    assert uri.startswith("nbds://" if mode == "tls" else "nbd://"), uri
    a.post("/api/v1/nodes", {"name": "t%d" % n, "driver": "nbd", "uri": uri})
    try:
        ca, cb = cpu_seconds(a), cpu_seconds(b)
        t0 = time.monotonic()
        a.post("/api/v1/jobs/mirror", {"id": job, "sync": "full", "device": device, "target": "t%d" % n})
        ready = a.sse.wait("BLOCK_JOB_READY", job, after=t0)
        seconds = ready["recv_monotonic"] - t0
        ca, cb = cpu_seconds(a) - ca, cpu_seconds(b) - cb
        # Cancel at READY: the target stays a finished copy, the source stays the device.
        a.post("/api/v1/jobs/%s/cancel" % job)
        ended = a.sse.wait(("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), job, after=t0)
        if ended["data"].get("error"):
            raise RuntimeError("mirror %s ended with %s" % (job, ended["data"]))
        a.request("POST", "/api/v1/jobs/%s/dismiss" % job, {}, check=False)
        return seconds, ca, cb
    finally:
        a.remove_node("t%d" % n)
        b.request("DELETE", "/api/v1/exports/" + dst, check=False, headers=auth)
        b.request("DELETE", "/api/v1/nodes/%s?deleteImage=true" % dst, check=False, headers=auth)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--netns", action="store_true")
    ap.add_argument("--warm-mirrors", type=int, default=0,
                    help="unrecorded mirrors of a 64 MiB image per mode before the 1 GiB warm-up: the services' background JIT"
                         " of once-per-mirror code (REST, job setup, TLS handshake) otherwise runs during the measured mirrors")
    ap.add_argument("--host-cpus", default="", help="A:B, e.g. 0:1: pin host A to CPU A and the B services to CPU B (taskset)")
    ap.add_argument("--nbd-port", type=int, default=10809, help="B's plain export port; the TLS one is the next (another run on the machine may hold 10809)")
    args = ap.parse_args()
    size = int(args.size[:-1]) << {"M": 20, "G": 30}[args.size[-1]] if args.size[-1] in "MG" else int(args.size)

    work = tempfile.mkdtemp(prefix="bm-tls-bench-")
    services = []
    try:
        if args.netns:
            netns_down()
            netns_up()
        ip_b = IP_B if args.netns else "127.0.0.1"
        pin_b = ("ip", "netns", "exec", NS) if args.netns else ()
        pin_a = ()
        if args.host_cpus:
            cpu_a, cpu_b = args.host_cpus.split(":")
            pin_a, pin_b = ("taskset", "-c", cpu_a), pin_b + ("taskset", "-c", cpu_b)
        certs = os.path.join(work, "certs")
        os.makedirs(certs)
        make_certs(certs, ip_b)
        c = lambda name: os.path.join(certs, name)  # noqa: E731
        b_args = ["--Auth:ApiKeys:0", KEY]
        b_plain = bm_service.Service(os.path.join(work, "b-plain", "images"), os.path.join(work, "b-plain"),
                                     nbd_listen="%s:%d" % (ip_b, args.nbd_port), host=ip_b, pin=pin_b, extra_args=b_args)
        b_tls = bm_service.Service(os.path.join(work, "b-tls", "images"), os.path.join(work, "b-tls"),
                                   nbd_listen="%s:%d" % (ip_b, args.nbd_port + 1), host=ip_b, pin=pin_b, extra_args=b_args + [
                                       "--Nbd:Tls:CertificatePath", c("host-b-cert.pem"), "--Nbd:Tls:KeyPath", c("host-b-key.pem"),
                                       "--Nbd:Tls:ClientCaPath", c("ca-cert.pem"), "--Nbd:Tls:AllowedClients:0", "CN=host-a,O=Bench"])
        a = bm_service.Service(os.path.join(work, "a", "images"), os.path.join(work, "a"), pin=pin_a, extra_args=[
            "--Nbd:Client:Tls:CaPath", c("ca-cert.pem"), "--Nbd:Client:Tls:CertificatePath", c("host-a-cert.pem"),
            "--Nbd:Client:Tls:KeyPath", c("host-a-key.pem")])
        for s in (b_plain, b_tls, a):
            os.makedirs(s.root, exist_ok=True)
            services.append(s)  # before start: one that fails to become healthy is still stopped
            s.start(timeout=180)
        a.start_sse()
        with open(os.path.join(a.root, "src.img"), "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        a.post("/api/v1/nodes", {"name": "src", "driver": "raw", "path": "src.img", "readOnly": True})
        if args.warm_mirrors:
            with open(os.path.join(a.root, "warm.img"), "wb") as f:
                f.write(os.urandom(64 << 20))
            a.post("/api/v1/nodes", {"name": "warm", "driver": "raw", "path": "warm.img", "readOnly": True})

        print("page reporting: %s; host CPUs: %s" % (bm_service.page_reporting(), args.host_cpus or "shared"), flush=True)
        rng = random.Random(args.seed)
        results = {"plain": [], "tls": []}
        n = 0
        # Warm-up of both paths, not recorded: the first TLS mirror otherwise pays for JIT-compiling the session's code.
        for i in range(args.warm_mirrors):
            mirror_once(a, b_plain, "plain", 64 << 20, 1000 + 2 * i, device="warm")
            mirror_once(a, b_tls, "tls", 64 << 20, 1001 + 2 * i, device="warm")
        mirror_once(a, b_plain, "plain", size, 900)
        mirror_once(a, b_tls, "tls", size, 901)
        for rep in range(args.reps):
            order = ["plain", "tls"]
            rng.shuffle(order)
            for mode in order:
                n += 1
                s, ca, cb = mirror_once(a, b_tls if mode == "tls" else b_plain, mode, size, n)
                results[mode].append(s)
                with open("/proc/loadavg") as f:
                    load = f.read().split()[0]
                print("rep %d %-5s %.2f s  %.0f MiB/s  cpu A %.2f s  B %.2f s  load %s" % (rep, mode, s, size / s / 2**20, ca, cb, load), flush=True)
        med = {m: statistics.median(v) for m, v in results.items()}
        print("median: plain %.2f s (%.0f MiB/s), tls %.2f s (%.0f MiB/s); tls/plain throughput %.2f" % (
            med["plain"], size / med["plain"] / 2**20, med["tls"], size / med["tls"] / 2**20, med["plain"] / med["tls"]))
    finally:
        for s in services:
            s.stop()
        if args.netns:
            netns_down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
