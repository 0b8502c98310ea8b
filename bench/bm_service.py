#!/usr/bin/env python3
"""Shared helpers for the side-by-side benchmarks in bench/ (stdlib only).

* `import_peers()` puts ../shared/peers (relative to the repository root) on
  sys.path and imports peer_bench and qmp from there; it exits with a clear
  message when that directory is missing.
* `Service` starts a published BlockMirror.Api.dll with every setting on the
  command line (the published copy has no appsettings.json next to it), waits
  for /healthz, and offers a small REST client plus an SSE reader thread
  whose events carry the monotonic time at which they were read.
"""

import collections
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# BM_PEERS overrides it, for a worktree that is not next to shared/ (git worktrees live elsewhere).
PEERS = os.environ.get("BM_PEERS") or os.path.normpath(os.path.join(REPO, "..", "shared", "peers"))
DEFAULT_DLL = os.environ.get("BM_DLL", "/tmp/bm-publish/BlockMirror.Api.dll")


def import_peers():
    """(peer_bench, qmp) from ../shared/peers, or exit 2 saying what is missing."""
    for f in ("peer_bench.py", "qmp.py"):
        if not os.path.isfile(os.path.join(PEERS, f)):
            sys.stderr.write(
                "error: %s not found.\n"
                "These benchmarks reuse the peer harness in ../shared/peers (relative to the\n"
                "repository root %s): peer_bench.py and qmp.py. Check out or mount shared/\n"
                "next to the repository and retry.\n" % (os.path.join(PEERS, f), REPO))
            sys.exit(2)
    if PEERS not in sys.path:
        sys.path.insert(0, PEERS)
    import peer_bench  # noqa: E402
    import qmp  # noqa: E402
    return peer_bench, qmp


PAGE_REPORTING = "/sys/module/page_reporting/parameters/min_free_ms"


def page_reporting():
    """How long this guest keeps freed memory before handing it back to the host (free page
    reporting, virtio_balloon), as a string for a bench's header: "off" when the kernel has no such
    knob. At 0 every page the page cache frees (a deleted image, drop_caches) goes back to the host
    within a second or two, and touching it again costs the guest ~2 s of system CPU per GiB instead
    of ~0.3 s (bench/README, "Freed memory goes back to the host"): whichever run touches it pays,
    which is noise, not the software. Benches are meant to run with it raised (root):
    echo 60000 > /sys/module/page_reporting/parameters/min_free_ms"""
    try:
        with open(PAGE_REPORTING) as f:
            return "min_free_ms=" + f.read().strip()
    except OSError:
        return "off"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ApiError(Exception):
    def __init__(self, method, path, status, body):
        self.status = status
        self.body = body
        super().__init__("%s %s -> %d %s" % (method, path, status, body[:500]))


class SseReader(threading.Thread):
    """Reads GET /api/v1/events on its own connection; every event is queued
    as {event, id, data, recv_monotonic}. Start it before the request whose
    events you wait for."""

    def __init__(self, host, port, last_event_id=None):
        super().__init__(daemon=True)
        self.host, self.port = host, port
        self.cond = threading.Condition()
        self.events = collections.deque()
        self.connected = threading.Event()
        self.error = None
        self.stopped = False
        self.last_event_id = last_event_id
        self.conn = None

    def run(self):
        try:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=None)
            path = "/api/v1/events"
            headers = {"Accept": "text/event-stream"}
            if self.last_event_id is not None:
                headers["Last-Event-ID"] = str(self.last_event_id)
            self.conn.request("GET", path, headers=headers)
            resp = self.conn.getresponse()
            if resp.status != 200:
                raise RuntimeError("SSE: HTTP %d" % resp.status)
            ev = {}
            while not self.stopped:
                line = resp.fp.readline()
                if not line:
                    break
                line = line.decode("utf-8").rstrip("\r\n")
                if line.startswith(":"):
                    self.connected.set()
                    continue
                if line == "":
                    if "event" in ev or "data" in ev:
                        ev["recv_monotonic"] = time.monotonic()
                        try:
                            ev["data"] = json.loads(ev.get("data") or "null")
                        except ValueError:
                            pass
                        with self.cond:
                            self.events.append(ev)
                            self.cond.notify_all()
                    ev = {}
                    continue
                k, _, v = line.partition(":")
                v = v[1:] if v.startswith(" ") else v
                if k == "data" and "data" in ev:
                    ev["data"] += "\n" + v
                else:
                    ev[k] = v
        except Exception as e:  # noqa: BLE001
            if not self.stopped:
                self.error = e
        finally:
            self.connected.set()
            with self.cond:
                self.cond.notify_all()

    def wait(self, names, job_id, timeout=900, after=None):
        """First queued event named in `names` for job `job_id` (received at or
        after monotonic `after`); consumed events are dropped from the queue."""
        if isinstance(names, str):
            names = (names,)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in list(self.events):
                    d = ev.get("data")
                    if ev.get("event") in names and isinstance(d, dict) and d.get("id") == job_id and \
                            (after is None or ev["recv_monotonic"] >= after):
                        self.events.remove(ev)
                        return ev
                if self.error is not None:
                    raise RuntimeError("SSE reader failed: %s" % self.error)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no %s for job %s within %ss" % ("/".join(names), job_id, timeout))
                self.cond.wait(min(left, 1.0))

    def drop_job(self, job_id):
        with self.cond:
            for ev in list(self.events):
                d = ev.get("data")
                if isinstance(d, dict) and d.get("id") == job_id:
                    self.events.remove(ev)

    def stop(self):
        self.stopped = True
        try:
            if self.conn is not None and self.conn.sock is not None:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Service:
    """One BlockMirror service process (started by PID, stopped by PID)."""

    def __init__(self, root, state_dir, dll=DEFAULT_DLL, nbd_listen="", port=None, log_path=None,
                 dotnet="dotnet", extra_args=(), env=None, pin=(), host="127.0.0.1"):
        # host: the REST address (another network namespace's, with pin=("ip", "netns", "exec", NAME)).
        self.host = host
        self.root = os.path.abspath(root)
        self.state_dir = os.path.abspath(state_dir)
        self.dll = dll
        self.port = port or free_port()
        self.nbd_listen = nbd_listen
        self.log_path = log_path or os.path.join(self.state_dir, "service.log")
        os.makedirs(self.state_dir, exist_ok=True)
        self.argv = list(pin) + [dotnet, dll,
                     "--Urls", "http://%s:%d" % (host, self.port),
                     "--Storage:Root", self.root,
                     "--ConnectionStrings:BlockMirror", "Data Source=%s" % os.path.join(self.state_dir, "bm.db"),
                     "--Nbd:Listen", nbd_listen,
                     "--Logging:LogLevel:Default", "Warning",
                     "--Logging:LogLevel:Microsoft.AspNetCore", "Warning",
                     "--Logging:LogLevel:Microsoft.EntityFrameworkCore", "Warning"] + list(extra_args)
        self.env = env
        self.proc = None
        self.conn = None
        self.sse = None

    # -- process -----------------------------------------------------------
    def start(self, timeout=60):
        if not os.path.isfile(self.dll):
            raise RuntimeError("service binary %s not found; publish it first: dotnet publish "
                               "src/BlockMirror.Api -c Release -o %s --artifacts-path /tmp/art-bench"
                               % (self.dll, os.path.dirname(self.dll)))
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                     cwd=self.state_dir, env=dict(os.environ, **self.env) if self.env else None)
        logf.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("service exited with %s during start; see %s" % (self.proc.returncode, self.log_path))
            try:
                st, _ = self.request("GET", "/healthz", check=False, timeout=2)
                if st == 200:
                    break
            except (OSError, http.client.HTTPException):
                self.conn = None
            if time.monotonic() > deadline:
                raise RuntimeError("service not healthy after %ss; see %s" % (timeout, self.log_path))
            time.sleep(0.1)
        return self

    def start_sse(self):
        self.sse = SseReader(self.host, self.port)
        self.sse.start()
        if not self.sse.connected.wait(15) or self.sse.error:
            raise RuntimeError("SSE stream did not open: %s" % self.sse.error)
        return self.sse

    def stop(self, timeout=20):
        if self.sse is not None:
            self.sse.stop()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM to this PID only: the host shuts down cleanly
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    # -- REST ----------------------------------------------------------------
    def request(self, method, path, body=None, check=True, timeout=900, raw=None, headers=None):
        """(status, parsed JSON or None). One keep-alive connection, reopened on failure."""
        h = {"Accept": "application/json"}
        data = None
        if raw is not None:
            data = raw
            h["Content-Type"] = "application/octet-stream"
        elif body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        if headers:
            h.update(headers)
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            try:
                self.conn.timeout = timeout
                if self.conn.sock is not None:
                    self.conn.sock.settimeout(timeout)
                self.conn.request(method, path, body=data, headers=h)
                resp = self.conn.getresponse()
                text = resp.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest,
                    BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        parsed = None
        if text:
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text.decode(errors="replace")
        if check and resp.status >= 300:
            raise ApiError(method, path, resp.status, text.decode(errors="replace"))
        return resp.status, parsed

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body if body is not None else {}, **kw)[1]

    def get(self, path, **kw):
        return self.request("GET", path, **kw)[1]

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)[1]

    # -- conveniences ----------------------------------------------------------
    def add_node(self, name, path, size=None, read_only=False):
        body = {"name": name, "driver": "raw", "path": path}
        if size is not None:
            body["create"] = {"size": size}
        if read_only:
            body["readOnly"] = True
        return self.post("/api/v1/nodes", body)

    def remove_node(self, name):
        st, _ = self.request("DELETE", "/api/v1/nodes/" + urllib.parse.quote(name), check=False)
        return st

    def job(self, job_id):
        return self.get("/api/v1/jobs/%s?include=dismissed" % urllib.parse.quote(job_id))

    def bitmap(self, node, name):
        return self.get("/api/v1/nodes/%s/bitmaps/%s" % (urllib.parse.quote(node), urllib.parse.quote(name)))
