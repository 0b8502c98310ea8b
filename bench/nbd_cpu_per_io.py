#!/usr/bin/env python3
"""CPU time and syscalls per I/O (4 KiB random, or 1 MiB sequential) through NBD: BlockMirror beside nbdkit's file plugin.

On a machine shared with other work, IOPS move with the load; the server's own CPU time per
request (utime + stime from /proc/<pid>/stat, divided by the I/Os fio completed) moves much less,
and says where a server spends more than its peer. Per round and server: a fresh 1 GiB fallocated
file, a fresh server, then the jobs in order (fio's nbd engine, libnbd), each for --seconds with
its CPU measured over exactly the fio run (a 1 s ramp excluded: fio's own I/O count covers the
whole run then, so no ramp is used here). With --strace, one extra pass per server and job
attaches `strace -c -f` and reports syscalls per I/O by name (strace slows the server: its
counts, not its times, are the point).

usage: nbd_cpu_per_io.py --dll A.dll[,B.dll...] [--seconds 5] [--rounds 2] [--warmup 3] [--strace]
       [--servers nbdkit,bm-0bm,bm-4bm,bm-4pbm,bm-direct] [--jobs randwrite-qd1,...,write-1m-qd16]
BlockMirror servers get a label per dll given (bm-0bm@1 for the second dll), so builds
interleave in one run when the machine's load changes.
"""
import argparse, json, os, random, shutil, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bm_service  # noqa: E402

GiB = 1 << 30
TICK = os.sysconf("SC_CLK_TCK")
JOBS = {"randwrite-qd1": ("randwrite", "4k", 1), "randwrite-qd32": ("randwrite", "4k", 32),
        "randread-qd1": ("randread", "4k", 1), "randread-qd32": ("randread", "4k", 32),
        "write-1m-qd16": ("write", "1m", 16), "read-1m-qd16": ("read", "1m", 16)}
DEFAULT_JOBS = "randwrite-qd1,randwrite-qd32,randread-qd1,randread-qd32"


def cpu_seconds(pid):
    """utime + stime of a process and all its threads, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_sock(path, t=30):
    end = time.time() + t
    while time.time() < end:
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise RuntimeError("no socket " + path)


class Nbdkit:
    def __init__(self, work, f):
        self.sock = os.path.join(work, "kit.sock")
        self.p = subprocess.Popen(["nbdkit", "-f", "--unix", self.sock, "file", "file=" + f],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_sock(self.sock)
        self.pid = self.p.pid
        self.uri = "nbd+unix:///?socket=" + self.sock

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(15)


class BlockMirror:
    """The service (bm_service.Service, as the other NBD benches start it) exporting d.img with bitmaps."""

    def __init__(self, work, f, dll, nbitmaps, persistent, direct=False):
        root = os.path.join(work, "bmroot")
        os.makedirs(root)
        os.link(f, os.path.join(root, "d.img"))
        self.sock = os.path.join(work, "bm.sock")
        self.svc = bm_service.Service(root, os.path.join(work, "state"), dll=dll, nbd_listen="unix:" + self.sock,
                                      extra_args=["--Storage:AllowHardLinks", "true"]).start()
        self.pid = self.svc.proc.pid
        try:
            self.svc.post("/api/v1/nodes", {"name": "d", "driver": "raw", "path": "d.img", "cache": {"direct": direct}})
            for i in range(nbitmaps):
                self.svc.post("/api/v1/nodes/d/bitmaps", {"name": "b%d" % i, "persistent": persistent})
            self.svc.post("/api/v1/exports", {"name": "d", "node": "d", "writable": True})
        except BaseException:
            self.stop()
            raise
        self.uri = "nbd+unix:///d?socket=" + self.sock

    def stop(self):
        self.svc.stop(30)


def fio(uri, job, seconds):
    rw, bs, qd = JOBS[job]
    out = subprocess.run(["fio", "--name=j", "--ioengine=nbd", "--uri=" + uri, "--rw=" + rw, "--bs=" + bs,
                          "--iodepth=%d" % qd, "--size=1g", "--time_based", "--runtime=%d" % seconds,
                          "--randrepeat=0", "--output-format=json"],
                         capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    j = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    side = j["write"] if "write" in rw else j["read"]
    return side["total_ios"], side["iops"], side["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000.0


def strace_counts(pid, uri, job, seconds):
    """Syscalls per I/O by name, strace -c -f attached to the server for one fio run."""
    log = tempfile.mktemp(prefix="strace.", dir="/tmp")
    st = subprocess.Popen(["strace", "-c", "-f", "-o", log, "-p", str(pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # strace attaches to every thread before the run starts
    ios, _, _ = fio(uri, job, seconds)
    st.send_signal(signal.SIGINT)
    st.wait(60)
    counts = {}
    with open(log) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                try:
                    counts[parts[-1]] = int(parts[3])
                except ValueError:
                    pass
    os.unlink(log)
    per = {k: v / ios for k, v in counts.items() if v / ios >= 0.01}
    return dict(sorted(per.items(), key=lambda kv: -kv[1])), sum(counts.values()) / ios


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dll", required=True, help="comma list of published BlockMirror.Api.dll")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--servers", default="nbdkit,bm-0bm,bm-4bm,bm-4pbm")
    ap.add_argument("--jobs", default=DEFAULT_JOBS, help="from: " + ",".join(JOBS))
    ap.add_argument("--warmup", type=int, default=0,
                    help="seconds of 4 KiB QD32 random writes, not measured, before the jobs (the JIT's tiers settle)")
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--out", default="nbd_cpu_per_io.json")
    a = ap.parse_args()
    dlls = a.dll.split(",")
    makers = {}
    for s in a.servers.split(","):
        if s == "nbdkit":
            makers[s] = lambda w, f: Nbdkit(w, f)
            continue
        nb, persistent, direct = {"bm-0bm": (0, False, False), "bm-4bm": (4, False, False), "bm-4pbm": (4, True, False),
                                  "bm-direct": (0, False, True)}[s]
        for i, dll in enumerate(dlls):
            makers[s if i == 0 else "%s@%d" % (s, i)] = (lambda d, n, p, x: lambda w, f: BlockMirror(w, f, d, n, p, x))(dll, nb, persistent, direct)
    res = {}
    rnd = random.Random(11)
    for r in range(a.rounds):
        order = list(makers)
        rnd.shuffle(order)
        for s in order:
            work = tempfile.mkdtemp(prefix="nbdcpu.", dir=os.environ.get("TMPDIR", "/var/tmp"))
            f = os.path.join(work, "d.img")
            subprocess.run(["fallocate", "-l", str(GiB), f], check=True)
            srv = makers[s](work, f)
            try:
                if a.warmup:
                    fio(srv.uri, "randwrite-qd32", a.warmup)
                for job in a.jobs.split(","):
                    load = os.getloadavg()[0]
                    c0 = cpu_seconds(srv.pid)
                    ios, iops, p99 = fio(srv.uri, job, a.seconds)
                    cpu = cpu_seconds(srv.pid) - c0
                    row = {"ios": ios, "iops": iops, "p99_us": p99, "cpu_us_per_io": cpu * 1e6 / ios, "load": load}
                    if a.strace and r == 0:
                        row["syscalls_per_io"], row["syscalls_total_per_io"] = strace_counts(srv.pid, srv.uri, job, a.seconds)
                    res.setdefault(job, {}).setdefault(s, []).append(row)
                    print("%-15s %-10s r%d %8.0f IOPS p99 %7.0f us  CPU %6.1f us/IO  load %.1f%s" %
                          (job, s, r, iops, p99, row["cpu_us_per_io"], load,
                           "  syscalls/IO %.2f %s" % (row["syscalls_total_per_io"],
                                                      " ".join("%s=%.2f" % kv for kv in list(row["syscalls_per_io"].items())[:6]))
                           if "syscalls_per_io" in row else ""), flush=True)
            finally:
                srv.stop()
                shutil.rmtree(work, ignore_errors=True)
    json.dump(res, open(a.out, "w"), indent=1)
    print("\nmedians over rounds: CPU us per I/O (ratio to nbdkit's), IOPS (ratio to nbdkit's in the same round)")
    for job, by in res.items():
        kit = by.get("nbdkit")
        for s, rows in by.items():
            cpu = sorted(x["cpu_us_per_io"] for x in rows)[len(rows) // 2]
            iops = sorted(x["iops"] for x in rows)[len(rows) // 2]
            if kit:
                kcpu = sorted(x["cpu_us_per_io"] for x in kit)[len(kit) // 2]
                ratios = sorted(x["iops"] / k["iops"] for x, k in zip(rows, kit))
                print("%-15s %-10s CPU %6.1f us/IO (%.2fx)  %8.0f IOPS (%.2fx)" %
                      (job, s, cpu, cpu / kcpu, iops, ratios[len(ratios) // 2]))
            else:
                print("%-15s %-10s CPU %6.1f us/IO  %8.0f IOPS" % (job, s, cpu, iops))


if __name__ == "__main__":
    main()
