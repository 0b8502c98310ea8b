#!/usr/bin/env python3
"""Load test (issue "Reliability", part 6): 16 concurrent mirrors of 256 MiB images, NBD writers
through the service's exports, and API reads at a fixed rate, for a bounded time. Reports API
latency percentiles, copy throughput, the service's memory over time, and verifies every target.

Everything runs on loopback and in a temp directory that is removed at the end. Stdlib only.

    python3 bench/load.py                         # defaults: 16 × 256 MiB, 200 req/s, 120 s
    python3 bench/load.py --mirrors 4 --size 64M --seconds 30 --rate 100   # quick
    # DESIGN's latency target: 500 req/s while one mirror copies (speed-limited so it copies throughout)
    python3 bench/load.py --mirrors 1 --size 1G --speed 16M --nbd-writers 0 --rate 500 --readers 4 --seconds 60

Latency is reported twice: as the client saw it (Python, so it includes the client's own
scheduling on a busy machine) and as the service measured it (ASP.NET Core's
http.server.request.duration histogram from /metrics, GET /api requests of the window only):
the share answered within 5 ms and the histogram bucket that holds the 99th percentile.
"""
import argparse, hashlib, http.client, json, os, random, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def parse_size(s):
    s = s.upper().rstrip("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * mult[s[-1]]) if s[-1] in mult else int(s)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, port):
        self.port = port
        self.local = threading.local()

    def conn(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = self.local.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        return c

    def call(self, method, path, body=None, raw=None):
        c = self.conn()
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            data = raw
            headers["Content-Type"] = "application/octet-stream"
        try:
            c.request(method, path, body=data, headers=headers)
            r = c.getresponse()
            text = r.read()
        except (ConnectionError, http.client.HTTPException):
            self.local.c = None
            raise
        if r.status >= 400:
            raise RuntimeError(f"{method} {path} -> {r.status} {text[:300]!r}")
        return json.loads(text) if text and r.getheader("Content-Type", "").startswith("application/json") else text


# Greedy up to the last "} ": route labels contain braces themselves (/api/v1/jobs/{id}).
BUCKET = re.compile(r'^http_server_request_duration_seconds_bucket\{(?P<labels>.*)\} (?P<value>\S+)', re.M)


def server_histogram(api):
    """Cumulative GET /api request counts per bucket bound (seconds) from one /metrics scrape."""
    text = api.call("GET", "/metrics")
    text = text.decode() if isinstance(text, bytes) else text
    buckets = {}
    for m in BUCKET.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if labels.get("http_request_method") != "GET" or not labels.get("http_route", "").startswith("/api/"):
            continue
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        buckets[le] = buckets.get(le, 0) + float(m["value"])
    return buckets


def server_latency(before, after):
    """Share of the window's requests within 5 ms, the bucket bounds that hold the p99 and the
    slowest request (None = beyond the last finite bound), and the request count."""
    diff = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = diff.get(float("inf"), 0)
    if not total:
        return None, None, None, 0
    within_5ms = diff.get(0.005, 0) / total
    bound = lambda share: next(le for le in sorted(diff) if diff[le] >= share * total)
    ms = lambda le: None if le == float("inf") else le * 1000
    return round(within_5ms * 100, 2), ms(bound(0.99)), ms(bound(1.0)), int(total)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mirrors", type=int, default=16)
    ap.add_argument("--size", default="256M")
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--rate", type=float, default=200, help="API read requests per second")
    ap.add_argument("--nbd-writers", type=int, default=4)
    ap.add_argument("--readers", type=int, default=1, help="reader threads sharing --rate")
    ap.add_argument("--speed", default="0", help="speed limit of each mirror in bytes/s (0 = none), e.g. 16M")
    ap.add_argument("--dll", default=None, help="published BlockMirror.Api.dll (default: publish to a temp dir)")
    ap.add_argument("--seed", type=int, default=20261126)
    args = ap.parse_args()
    size = parse_size(args.size)
    rnd = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="bm-load-")
    proc = None
    try:
        dll = args.dll
        if dll is None:
            out = os.path.join(work, "publish")
            subprocess.run(["dotnet", "publish", os.path.join(REPO, "src/BlockMirror.Api"), "-c", "Release", "-o", out,
                            "--artifacts-path", os.path.join(work, "artifacts"), "-v", "q"], check=True)
            dll = os.path.join(out, "BlockMirror.Api.dll")
        port = free_port()
        sock = os.path.join(work, "nbd.sock")
        images = os.path.join(work, "images")
        os.makedirs(images)
        proc = subprocess.Popen(["dotnet", dll, "--Urls", f"http://127.0.0.1:{port}", "--Storage:Root", images,
                                 "--ConnectionStrings:BlockMirror", f"Data Source={work}/bm.db", "--Nbd:Listen", f"unix:{sock}",
                                 "--Logging:LogLevel:Default", "Warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        api = Api(port)
        for _ in range(600):
            try:
                api.call("GET", "/healthz")
                break
            except Exception:
                time.sleep(0.1)
        print(f"service pid {proc.pid} on :{port}", file=sys.stderr)

        # Sources with random data in 1 MiB pieces over half the image; fresh sparse targets.
        chunk = 1 << 20
        for i in range(args.mirrors):
            api.call("POST", "/api/v1/nodes", {"name": f"src{i}", "driver": "raw", "path": f"src{i}.img", "create": {"size": size}})
            api.call("POST", "/api/v1/nodes", {"name": f"dst{i}", "driver": "raw", "path": f"dst{i}.img", "create": {"size": size}})
            api.call("POST", f"/api/v1/nodes/src{i}/bitmaps", {"name": "b0"})
            for off in range(0, size, 2 * chunk):
                api.call("PUT", f"/api/v1/nodes/src{i}/data?offset={off}", raw=rnd.randbytes(chunk))
        for i in range(min(args.nbd_writers, args.mirrors)):
            api.call("POST", "/api/v1/exports", {"name": f"e{i}", "node": f"src{i}", "writable": True})

        rss = []
        latencies = []
        errors = []
        stop = threading.Event()
        hist_before = server_histogram(api)
        start = time.monotonic()
        for i in range(args.mirrors):
            api.call("POST", "/api/v1/jobs/mirror", {"id": f"m{i}", "sync": "full", "device": f"src{i}", "target": f"dst{i}", "autoDismiss": False,
                                                     "speed": parse_size(args.speed)})

        def reader():
            interval = args.readers / args.rate
            nxt = time.monotonic()
            paths = ["/api/v1/jobs", "/api/v1/nodes", "/api/v1/nodes/src0/bitmaps/b0", "/api/v1/jobs/m0", "/healthz"]
            k = 0
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    api.call("GET", paths[k % len(paths)])
                    latencies.append(time.monotonic() - t0)
                except Exception as e:
                    errors.append(str(e))
                k += 1
                nxt += interval
                delay = nxt - time.monotonic()
                if delay > 0:
                    stop.wait(delay)

        def nbd_writer(i):
            r = random.Random(args.seed + i)
            n = 0
            while not stop.is_set():
                off = r.randrange(0, size // 65536) * 65536
                res = subprocess.run(["qemu-io", "-f", "raw", f"nbd+unix:///e{i}?socket={sock}", "-c", f"write -P {r.randrange(256)} {off} 65536"],
                                     capture_output=True, text=True)
                if res.returncode != 0:
                    errors.append(res.stderr[:200])
                n += 1

        def sampler():
            while not stop.is_set():
                rss.append((time.monotonic() - start, rss_kib(proc.pid)))
                stop.wait(1.0)

        threads = [threading.Thread(target=reader) for _ in range(args.readers)] + [threading.Thread(target=sampler)]
        threads += [threading.Thread(target=nbd_writer, args=(i,)) for i in range(min(args.nbd_writers, args.mirrors))]
        for t in threads:
            t.start()
        ready_at = {}
        while time.monotonic() - start < args.seconds:
            jobs = api.call("GET", "/api/v1/jobs")["items"]
            for j in jobs:
                if j["status"] == "ready" and j["id"] not in ready_at:
                    ready_at[j["id"]] = time.monotonic() - start
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        server_within_5ms, server_p99_bucket_ms, server_max_bucket_ms, server_requests = server_latency(hist_before, server_histogram(api))

        # Soft cancel every job at ready: its target is a point-in-time copy of the source.
        for i in range(args.mirrors):
            api.call("POST", f"/api/v1/jobs/m{i}/cancel", {})
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            jobs = api.call("GET", "/api/v1/jobs")["items"]
            if all(j["status"] == "concluded" for j in jobs):
                break
            time.sleep(0.5)
        jobs = {j["id"]: j for j in api.call("GET", "/api/v1/jobs")["items"]}
        copied = sum(j["bytesCopied"] for j in jobs.values())
        bad = []
        for i in range(args.mirrors):
            j = jobs[f"m{i}"]
            if j["error"] or j["status"] != "concluded":
                bad.append(f"m{i}: {j['status']} {j['error']}")
                continue
            a = hashlib.sha256(open(os.path.join(images, f"src{i}.img"), "rb").read()).hexdigest()
            b = hashlib.sha256(open(os.path.join(images, f"dst{i}.img"), "rb").read()).hexdigest()
            if a != b:
                bad.append(f"m{i}: target differs from source")
        lat = sorted(latencies)
        pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
        mem = [m for _, m in rss if m]
        elapsed = args.seconds
        print(json.dumps({
            "mirrors": args.mirrors, "size": size, "seconds": args.seconds, "rate": args.rate,
            "api_requests": len(lat), "api_errors": len(errors), "api_p50_ms": round(pct(0.50), 2),
            "api_p99_ms": round(pct(0.99), 2), "api_max_ms": round(lat[-1] * 1000, 2) if lat else None,
            "server_requests": server_requests, "server_pct_within_5ms": server_within_5ms,
            "server_p99_bucket_ms": server_p99_bucket_ms, "server_max_bucket_ms": server_max_bucket_ms,
            "bytes_copied": copied, "copy_mb_s": round(copied / elapsed / 1e6, 1),
            "jobs_ready": len(ready_at), "first_ready_s": round(min(ready_at.values()), 2) if ready_at else None,
            "last_ready_s": round(max(ready_at.values()), 2) if ready_at else None,
            "rss_mib_start": round(mem[0] / 1024, 1) if mem else None, "rss_mib_max": round(max(mem) / 1024, 1) if mem else None,
            "rss_mib_end": round(mem[-1] / 1024, 1) if mem else None,
            "targets_verified": args.mirrors - len(bad), "failures": bad[:10], "error_samples": errors[:5],
        }, indent=2))
        return 1 if bad or errors else 0
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
