#!/usr/bin/env python3
"""The big-body and connection-storm benchmark's loads, readings and report.

  sink PORT
      an HTTP/1.1 upload sink for the backends: reads each request's body
      to its end (Content-Length or chunked), then answers `200` with a
      3-byte body; keep-alive. One thread per connection. Body bytes are
      spliced to /dev/null, never copied into the sink (see `Discard`).

  bodies SPEC_FILE ROUNDS SECONDS CLK OUT_JSONL
      runs the big-body cases: SPEC_FILE is JSON {"targets": {NAME:
      {"h1": URL_BASE, "h2": URL_BASE or null, "pid": PID or null}},
      "files": {"1m": PATH, "1g": PATH}, "lua": PATH, "taskset": [...],
      "transfers_1g": N}. Every round runs every case against every
      target, targets interleaved within a case (the 1 GiB cases N times
      over), one JSON line per run into OUT_JSONL.

  storm SPEC_FILE CONNECTIONS ROUNDS OUT_JSONL
      first, per target, CONNECTIONS / 2 idle HTTP/1.1 keep-alive
      connections and then (those still open) as many idle h2c ones, one
      answered request each, reading the proxy's memory; then, ROUNDS
      times per target, CONNECTIONS connections at once, one request on
      each, closed again, and as many idle HTTP/1.1 ones.

  report HEADER BODIES_JSONL STORM_JSONL
      prints the Markdown report: medians over rounds (and transfers),
      ratios of sluice to nginx and HAProxy (of the medians, and paired
      within each round).

Everything goes to 127.0.0.1 only; every load is bounded in time (curl
--max-time, wrk -d, h2load -D) and in count.
"""

import fcntl
import json
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import measure  # noqa: E402

MIB = 1024 * 1024
TARGETS = ["direct", "nginx", "haproxy", "sluice"]
LABELS = {"direct": "direct", "nginx": "nginx", "haproxy": "HAProxy", "sluice": "sluice"}
# Longest a single 1 GiB transfer may take before it counts as failed.
TRANSFER_LIMIT_S = 120


# --- the upload sink ------------------------------------------------------


def sink(port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1024)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=sink_conn, args=(conn,), daemon=True).start()


class Discard:
    """Drops a connection's next bytes without copying them: splice(2)
    from the socket into a pipe and from the pipe into /dev/null.

    Why: a sink copying bodies into its own memory (recv) was the slowest
    part of the 1 GiB upload, on the load core with curl, and its speed
    depended on the proxy in front of it: a proxy that kept pace filled the
    sink's receive queue (2-3 MB) and the sink's copies then ran from cold
    memory (perf: its kernel copy 43 % of the load core behind sluice, 6 %
    behind HAProxy, which spends more CPU per MiB and so kept the queue
    short). The upload figures measured the sink's cache, not the proxy.
    Without the copy the sink's cost no longer depends on the queue.
    """

    PIPE = 1024 * 1024

    def __init__(self):
        self.r, self.w = os.pipe()
        self.null = os.open(os.devnull, os.O_WRONLY)
        self.room = 64 * 1024  # a pipe's default size
        try:
            self.room = fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, self.PIPE)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: the default will do

    def take(self, sock, left):
        """Drops `left` bytes of `sock`; False if it closed first."""
        while left > 0:
            n = os.splice(sock.fileno(), self.w, min(left, self.room))
            if n == 0:
                return False
            left -= n
            while n > 0:
                n -= os.splice(self.r, self.null, n)
        return True

    def close(self):
        for fd in (self.r, self.w, self.null):
            os.close(fd)


def sink_conn(conn):
    buf = bytearray(64 * 1024)
    view = memoryview(buf)
    pending = b""
    discard = Discard()
    try:
        while True:
            while b"\r\n\r\n" not in pending:
                n = conn.recv_into(view)
                if n == 0:
                    return
                pending += bytes(view[:n])
                if len(pending) > 64 * 1024 and b"\r\n\r\n" not in pending:
                    return
            head, _, pending = pending.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if "content-length" in headers:
                left = int(headers["content-length"]) - len(pending)
                pending = b"" if left >= 0 else pending[len(pending) + left :]
                if not discard.take(conn, left):
                    return
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                pending = drain_chunked(conn, view, pending, discard)
                if pending is None:
                    return
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
    except OSError:
        pass
    finally:
        conn.close()
        discard.close()


def drain_chunked(conn, view, pending, discard):
    """Reads a chunked body to its end; returns what follows it."""

    def more():
        n = conn.recv_into(view)
        if n == 0:
            raise OSError("closed")
        return bytes(view[:n])

    while True:
        while b"\r\n" not in pending:
            pending += more()
        line, _, pending = pending.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            while b"\r\n\r\n" not in b"\r\n" + pending:
                pending += more()
            _, _, pending = (b"\r\n" + pending).partition(b"\r\n\r\n")
            return pending
        left = size + 2 - len(pending)
        if left <= 0:
            pending = pending[size + 2 :]
            continue
        pending = b""
        if not discard.take(conn, left):
            return None


# --- readings -------------------------------------------------------------


class RssPeak:
    """Samples a process tree's VmRSS every 50 ms while a load runs."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, threading.Event()
        self.thread = None

    def __enter__(self):
        if self.pid:
            self.before = measure.status_kib(self.pid, "VmRSS")
            self.peak = self.before
            self.thread = threading.Thread(target=self.run, daemon=True)
            self.thread.start()
        return self

    def run(self):
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, measure.status_kib(self.pid, "VmRSS"))

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread:
            self.thread.join()
            self.after = measure.status_kib(self.pid, "VmRSS")


def cpu_seconds(pid, clk):
    if not pid:
        return None
    user, system = measure.cpu_ticks(pid)
    return (user + system) / clk


# --- the body cases -------------------------------------------------------

CASES = [
    # name, protocol, direction, body size
    ("download 1 GiB", "h1", "down", "1g"),
    ("upload 1 GiB", "h1", "up", "1g"),
    ("download 1 MiB", "h1", "down", "1m"),
    ("upload 1 MiB", "h1", "up", "1m"),
    ("download 1 GiB", "h2", "down", "1g"),
    ("upload 1 GiB", "h2", "up", "1g"),
    ("download 1 MiB", "h2", "down", "1m"),
    ("upload 1 MiB", "h2", "up", "1m"),
]


def run_case(spec, case, url, seconds):
    """Runs one case against one URL base: (bytes moved, seconds, errors)."""
    _, proto, direction, size = case
    taskset = spec["taskset"]
    files = spec["files"]
    if size == "1g" and proto == "h1":
        cmd = ["curl", "-s", "-o", "/dev/null", "--max-time", str(TRANSFER_LIMIT_S), "-w",
               "%{http_code} %{size_download} %{size_upload} %{time_total}"]
        if direction == "down":
            cmd.append(url + "/1g")
        else:
            cmd += ["-H", "Expect:", "-X", "POST", "-T", files["1g"], url + "/upload"]
        out = subprocess.run(taskset + cmd, capture_output=True, text=True)
        parts = out.stdout.split()
        if out.returncode != 0 or len(parts) != 4 or parts[0] != "200":
            return 0, 0.0, 1
        moved = float(parts[1]) if direction == "down" else float(parts[2])
        return moved, float(parts[3]), 0 if moved == 1024 * MIB else 1
    if proto == "h1":
        cmd = ["wrk", "-t1", "-c8", f"-d{seconds}s", url + ("/1m" if direction == "down" else "/upload")]
        if direction == "up":
            cmd[1:1] = ["-s", spec["lua"]]
        start = time.monotonic()
        out = subprocess.run(taskset + cmd, capture_output=True, text=True)
        took = time.monotonic() - start
        m = re.search(r"(\d+) requests in ([0-9.]+)(ms|s|m)", out.stdout)
        if out.returncode != 0 or not m:
            return 0, took, 1
        requests = int(m.group(1))
        took = float(m.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
        errors = 0
        e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out.stdout)
        if e:
            errors += sum(int(g) for g in e.groups())
        e = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
        if e:
            errors += int(e.group(1))
        return requests * MIB, took, errors
    # HTTP/2 with prior knowledge (h2c), h2load.
    if size == "1g":
        cmd = ["h2load", "-n1", "-c1", "-m1", "-w30", "-W30"]
    else:
        cmd = ["h2load", "-c8", "-m1", f"-D{seconds}", "-w30", "-W30"]
    if direction == "up":
        cmd += ["-d", files[size], url + "/upload"]
    else:
        cmd.append(url + "/" + size)
    start = time.monotonic()
    try:
        out = subprocess.run(taskset + cmd, capture_output=True, text=True, timeout=TRANSFER_LIMIT_S)
    except subprocess.TimeoutExpired:
        return 0, time.monotonic() - start, 1
    took = time.monotonic() - start
    m = re.search(r"finished in ([0-9.]+)(ms|s)", out.stdout)
    if m:
        took = float(m.group(1)) * (1e-3 if m.group(2) == "ms" else 1.0)
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out.stdout)
    s = re.search(r"status codes: (\d+) 2xx", out.stdout)
    if out.returncode != 0 or not m or not s:
        return 0, took, 1
    # (With -D, a request still in flight at the end counts in neither.)
    ok = int(s.group(1))
    errors = int(m.group(2)) + int(m.group(3))
    per = 1024 * MIB if size == "1g" else MIB
    return ok * per, took, errors


def bodies(args):
    spec_file, rounds, seconds, clk, out_file = args[0], int(args[1]), int(args[2]), int(args[3]), args[4]
    with open(spec_file) as f:
        spec = json.load(f)
    names = [t for t in TARGETS if t in spec["targets"]]
    with open(out_file, "a") as out:
        for rnd in range(1, rounds + 1):
            for case in CASES:
                # Rotate the targets' order from round to round; 1 GiB cases
                # go over the targets `transfers_1g` times, one transfer each.
                k = (rnd - 1) % len(names)
                order = names[k:] + names[:k]
                repeat = spec.get("transfers_1g", 1) if case[3] == "1g" else 1
                for transfer, name in ((i + 1, n) for i in range(repeat) for n in order):
                    target = spec["targets"][name]
                    base = target.get(case[1])
                    if not base:
                        continue
                    if case[2] == "up" and case[1] == "h1":
                        base = target.get("upload", base)
                    pid = target.get("pid")
                    cpu0 = cpu_seconds(pid, clk)
                    with RssPeak(pid) as rss:
                        moved, took, errors = run_case(spec, case, base, seconds)
                    cpu1 = cpu_seconds(pid, clk)
                    row = {
                        "round": rnd, "transfer": transfer, "case": case[0], "proto": case[1], "target": name,
                        "mib": moved / MIB, "seconds": took, "errors": errors,
                        "mib_s": moved / MIB / took if took > 0 else 0.0,
                        "cpu_us_per_mib": (cpu1 - cpu0) * 1e6 / (moved / MIB) if pid and moved else None,
                        "rss_growth_kib": (rss.peak - rss.before) if pid else None,
                    }
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(f"bench: round {rnd}.{transfer} {case[1]} {case[0]:15} {name:8} "
                          f"{row['mib_s']:8.0f} MiB/s  errors {errors}", file=sys.stderr)


# --- the storm ------------------------------------------------------------


def nstat(*names):
    out = subprocess.run(["nstat", "-az", *names], capture_output=True, text=True).stdout
    total = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in names:
            total[parts[0]] = int(parts[1])
    return total


STORM_COUNTERS = ("TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtTCPSynRetrans")
REQUEST = b"GET / HTTP/1.1\r\nHost: storm.bench\r\n\r\n"
# HTTP/2 with prior knowledge (h2c): the client's preface, an empty
# SETTINGS frame, and a HEADERS frame that ends stream 1: `GET /` with
# `:method GET`, `:scheme http`, `:path /` from HPACK's static table and
# `:authority storm.bench` a literal.
H2_REQUEST = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
              + b"\x00\x00\x10\x01\x05\x00\x00\x00\x01\x82\x86\x84\x41\x0bstorm.bench")
H2_SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


def h1_answered(buf):
    """Whether buf holds a whole HTTP/1.1 answer: None (not yet), True (a
    200 with its Content-Length body) or False (anything else)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    m = re.search(rb"(?i)content-length:\s*(\d+)", buf[:end])
    if not buf.startswith(b"HTTP/1.1 200") or not m:
        return False
    return True if len(buf) >= end + 4 + int(m.group(1)) else None


def hpack_first_field(block):
    """The first byte of a header block's first field, after the dynamic
    table size updates a block may begin with (RFC 7541 §4.2, §6.3:
    001xxxxx and a prefixed integer)."""
    at = 0
    while at < len(block) and block[at] & 0xE0 == 0x20:
        more = block[at] & 0x1F == 0x1F
        at += 1
        while more and at < len(block):
            more = block[at] & 0x80 != 0
            at += 1
    return block[at:at + 1]


def h2_answered(buf):
    """Whether buf (the server's frames) holds the end of stream 1: None
    (not yet), True (its HEADERS began with `:status 200`, HPACK's static
    entry 8) or False (another status, or GOAWAY)."""
    at, ok = 0, None
    while at + 9 <= len(buf):
        size = int.from_bytes(buf[at:at + 3], "big")
        kind, flags, stream = buf[at + 3], buf[at + 4], int.from_bytes(buf[at + 5:at + 9], "big") & 0x7FFFFFFF
        if at + 9 + size > len(buf):
            break
        if kind == 7:
            return False
        if stream == 1 and kind == 1:
            ok = hpack_first_field(buf[at + 9:at + 9 + size]) == b"\x88"
        if stream == 1 and kind in (0, 1) and flags & 1:
            return bool(ok)
        at += 9 + size
    return None


def burst(port, n, limit_s=60, h2=False):
    """Opens n non-blocking connections at once, sends one GET on each as it
    connects, reads each answer (Content-Length framed; with h2, over
    HTTP/2 with prior knowledge, the server's SETTINGS acknowledged).
    Returns the open sockets, how many were served, how many failed, and
    the time from the first connect to the last answer. One epoll loop:
    fast enough that the client, not its own scheduling, is what the proxy
    sees."""
    answered = h2_answered if h2 else h1_answered
    acked = set()
    ep = select.epoll()
    socks, state = {}, {}
    start = time.monotonic()
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks[s.fileno()] = s
        state[s.fileno()] = b""
        ep.register(s.fileno(), select.EPOLLOUT)
    served, failed, last = [], 0, start
    pending = n
    deadline = start + limit_s
    while pending and time.monotonic() < deadline:
        for fd, ev in ep.poll(0.5):
            s = socks[fd]
            if ev & select.EPOLLERR:
                failed += 1
                pending -= 1
                ep.unregister(fd)
                s.close()
                del socks[fd]
                continue
            if ev & select.EPOLLOUT:
                try:
                    s.send(H2_REQUEST if h2 else REQUEST)
                except OSError:
                    failed += 1
                    pending -= 1
                    ep.unregister(fd)
                    s.close()
                    del socks[fd]
                    continue
                ep.modify(fd, select.EPOLLIN)
                continue
            try:
                got = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                got = b""
            if not got:
                failed += 1
                pending -= 1
                ep.unregister(fd)
                s.close()
                del socks[fd]
                continue
            buf = state[fd] + got
            state[fd] = buf
            if h2 and fd not in acked and len(buf) >= 9 and buf[3] == 4 and buf[4] & 1 == 0:
                # The server's SETTINGS come first (RFC 9113 §3.4); acknowledged.
                acked.add(fd)
                try:
                    s.send(H2_SETTINGS_ACK)
                except OSError:
                    pass
            verdict = answered(buf)
            if verdict is None:
                continue
            if verdict:
                served.append(s)
            else:
                failed += 1
            pending -= 1
            last = time.monotonic()
            ep.unregister(fd)
    failed += pending
    ep.close()
    return served, failed, last - start


def open_idle(port, n, h2=False):
    """Opens n connections 100 at a time, one request answered on each, and
    leaves them open: (the open sockets, how many failed)."""
    idle, failed = [], 0
    while len(idle) + failed < n:
        got, bad, _ = burst(port, min(100, n - len(idle) - failed), h2=h2)
        idle += got
        failed += bad
    return idle, failed


def idle_costs(port, h2_port, n, pid):
    """What idle connections cost a proxy that has not yet met a storm: n
    HTTP/1.1 keep-alive connections opened and left open, then, with them
    still open, n HTTP/2 (h2c) ones, each answered once. Nothing is freed
    in between, so neither count is hidden by memory the other gave back."""
    rss_before = measure.status_kib(pid, "VmRSS")
    h1, h1_failed = open_idle(port, n)
    time.sleep(1.0)
    rss_h1 = measure.status_kib(pid, "VmRSS")
    h2, h2_failed = open_idle(h2_port, n, h2=True)
    time.sleep(1.0)
    rss_h2 = measure.status_kib(pid, "VmRSS")
    for s in h1 + h2:
        s.close()
    time.sleep(2.0)
    return {
        "idle": True, "connections": n, "errors": h1_failed + h2_failed,
        "rss_before_kib": rss_before, "rss_h1_kib": rss_h1, "rss_h2_kib": rss_h2,
        "rss_after_kib": measure.status_kib(pid, "VmRSS"),
        "h1_bytes_per_conn": (rss_h1 - rss_before) * 1024 / max(len(h1), 1),
        "h2_bytes_per_conn": (rss_h2 - rss_h1) * 1024 / max(len(h2), 1),
    }


def storm_round(port, n, pid):
    """A burst of n connections at once (closed again), then n idle ones
    opened 100 at a time, so that what they hold is an idle connection's
    cost rather than that of n requests in flight (after the burst, memory
    it freed may hide it: see idle_costs)."""
    rss_before = measure.status_kib(pid, "VmRSS")
    c0 = nstat(*STORM_COUNTERS)
    served, failed, took = burst(port, n)
    c1 = nstat(*STORM_COUNTERS)
    burst_served = len(served)
    time.sleep(1.0)
    rss_burst = measure.status_kib(pid, "VmRSS")
    for s in served:
        s.close()
    time.sleep(2.0)
    rss_closed = measure.status_kib(pid, "VmRSS")
    idle, idle_failed = open_idle(port, n)
    time.sleep(1.0)
    rss_idle = measure.status_kib(pid, "VmRSS")
    for s in idle:
        s.close()
    time.sleep(2.0)
    rss_after = measure.status_kib(pid, "VmRSS")
    d = {k: c1.get(k, 0) - c0.get(k, 0) for k in STORM_COUNTERS}
    return {
        "served": burst_served, "errors": failed + idle_failed, "retried": d["TcpExtTCPSynRetrans"],
        "seconds": took, "overflows": d["TcpExtListenOverflows"], "drops": d["TcpExtListenDrops"],
        "rss_before_kib": rss_before, "rss_burst_kib": rss_burst, "rss_closed_kib": rss_closed,
        "rss_idle_kib": rss_idle, "rss_after_kib": rss_after,
        "idle_bytes_per_conn": (rss_idle - rss_closed) * 1024 / max(len(idle), 1),
    }


# Seconds after the last storm before the final reading: past sluice's
# default idle timeout of endpoint connections (60 s) and its heap check
# (every 10 s).
SETTLE_S = 75


def storm(args):
    spec_file, n, rounds, out_file = args[0], int(args[1]), int(args[2]), args[3]
    with open(spec_file) as f:
        spec = json.load(f)
    names = [t for t in ("nginx", "haproxy", "sluice") if t in spec["targets"]]
    with open(out_file, "a") as out:
        # Half the storm's count of each kind: both kinds open at once are
        # as many connections as a burst.
        for name in names:
            target = spec["targets"][name]
            h2_port = int(target["h2"].rsplit(":", 1)[1])
            row = idle_costs(target["port"], h2_port, max(n // 2, 1), target["pid"])
            row["target"] = name
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"bench: idle {name:8} HTTP/1.1 {row['h1_bytes_per_conn']:.0f} B/conn, "
                  f"h2c {row['h2_bytes_per_conn']:.0f} B/conn, errors {row['errors']}, RSS {row['rss_before_kib']} "
                  f"-> {row['rss_h1_kib']} -> {row['rss_h2_kib']} -> closed {row['rss_after_kib']} KiB",
                  file=sys.stderr)
        for rnd in range(1, rounds + 1):
            for name in names:
                target = spec["targets"][name]
                row = storm_round(target["port"], n, target["pid"])
                row.update({"round": rnd, "target": name})
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(f"bench: storm round {rnd} {name:8} served {row['served']} in {row['seconds']:.2f} s, "
                      f"SYNs retried {row['retried']}, errors {row['errors']}, idle {row['idle_bytes_per_conn']:.0f} B/conn, "
                      f"RSS {row['rss_before_kib']} -> burst {row['rss_burst_kib']} -> closed {row['rss_closed_kib']} "
                      f"-> idle {row['rss_idle_kib']} -> closed {row['rss_after_kib']} KiB",
                      file=sys.stderr)
        print(f"bench: waiting {SETTLE_S} s for idle connections to expire", file=sys.stderr)
        time.sleep(SETTLE_S)
        for name in names:
            rss = measure.status_kib(spec["targets"][name]["pid"], "VmRSS")
            out.write(json.dumps({"settled": True, "target": name, "rss_kib": rss}) + "\n")


# --- the report -----------------------------------------------------------


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def f(v, spec):
    return "—" if v is None else format(v, spec)


def ratio(a, b):
    return None if a is None or not b else a / b


def report(args):
    header, bodies_file, storm_file = args
    with open(header) as fh:
        print(fh.read().rstrip())
    rows = [json.loads(l) for l in open(bodies_file)] if os.path.exists(bodies_file) else []
    if rows:
        print("\n## Big bodies (median over rounds, and over each round's transfers)\n")
        print("MiB/s: bytes moved over the transfer's time as the client saw it. CPU µs/MiB: the "
              "proxy's user+system time per MiB moved. RSS growth: the proxy's peak VmRSS during "
              "the run minus its VmRSS before.\n")
        print("| case | proto | target | MiB/s | CPU µs/MiB | RSS growth | errors |")
        print("|---|---|---|---:|---:|---:|---:|")
        keys = []
        for r in rows:
            k = (r["case"], r["proto"])
            if k not in keys:
                keys.append(k)
        medians = {}
        for case, proto in keys:
            for t in TARGETS:
                sel = [r for r in rows if (r["case"], r["proto"], r["target"]) == (case, proto, t)]
                if not sel:
                    continue
                m = {
                    "mib_s": med(r["mib_s"] for r in sel),
                    "cpu": med(r["cpu_us_per_mib"] for r in sel),
                    "rss": med(r["rss_growth_kib"] for r in sel),
                    "errors": sum(r["errors"] for r in sel),
                }
                medians[(case, proto, t)] = m
                rss = "—" if m["rss"] is None else f"{m['rss'] / 1024:.1f} MiB"
                print(f"| {case} | {proto} | {LABELS[t]} | {f(m['mib_s'], ',.0f')} | {f(m['cpu'], ',.0f')} "
                      f"| {rss} | {m['errors']} |")
        print("\n### sluice against the anchors\n")
        print("Of the medians, and paired (within each round, where the targets ran back to back, "
              "sluice's median transfer over the anchor's; then the median over rounds).\n")
        print("| case | proto | MiB/s ÷ nginx | ÷ HAProxy | paired ÷ nginx | paired ÷ HAProxy "
              "| CPU/MiB ÷ nginx | ÷ HAProxy | paired ÷ nginx | paired ÷ HAProxy |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for case, proto in keys:
            s = medians.get((case, proto, "sluice"))
            if not s:
                continue
            cells = []
            for key, rk in (("mib_s", "mib_s"), ("cpu", "cpu_us_per_mib")):
                for o in ("nginx", "haproxy"):
                    om = medians.get((case, proto, o))
                    cells.append(f(ratio(s[key], om and om[key]), ".2f"))
                for o in ("nginx", "haproxy"):
                    # Within a round: the median of sluice's transfers over
                    # the median of the anchor's (one of each for most cases).
                    paired = []
                    for rnd in {r["round"] for r in rows}:
                        a = med(r[rk] for r in rows if (r["case"], r["proto"], r["target"], r["round"]) == (case, proto, "sluice", rnd))
                        b = med(r[rk] for r in rows if (r["case"], r["proto"], r["target"], r["round"]) == (case, proto, o, rnd))
                        if a is not None and b:
                            paired.append(a / b)
                    cells.append(f(med(paired), ".2f"))
            print(f"| {case} | {proto} | " + " | ".join(cells[0:2] + cells[2:4] + cells[4:6] + cells[6:8]) + " |")
    srows = [json.loads(l) for l in open(storm_file)] if os.path.exists(storm_file) else []
    settled = {r["target"]: r["rss_kib"] for r in srows if r.get("settled")}
    idle_rows = [r for r in srows if r.get("idle")]
    srows = [r for r in srows if not r.get("settled") and not r.get("idle")]
    mib = lambda k: f"{k / 1024:.1f} MiB"
    if idle_rows:
        n = idle_rows[0]["connections"]
        print(f"\n## Idle connections ({n:,} HTTP/1.1 and {n:,} HTTP/2, before the storms)\n")
        print(f"{n:,} keep-alive HTTP/1.1 connections opened 100 at a time, one `GET /` answered on "
              f"each, and left open; then, with them still open, {n:,} HTTP/2 connections (h2c, "
              "prior knowledge) the same way. B/conn: the VmRSS each kind added ÷ its connections. "
              "Nothing is closed in between, so memory one kind freed cannot hide the other's.\n")
        print("| target | HTTP/1.1 B/conn | h2c B/conn | errors | RSS before | HTTP/1.1 open | both open | closed |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in idle_rows:
            print(f"| {LABELS[r['target']]} | {r['h1_bytes_per_conn']:,.0f} | {r['h2_bytes_per_conn']:,.0f} | "
                  f"{r['errors']} | {mib(r['rss_before_kib'])} | {mib(r['rss_h1_kib'])} | "
                  f"{mib(r['rss_h2_kib'])} | {mib(r['rss_after_kib'])} |")
    if srows:
        n = max(r["served"] + r["errors"] for r in srows)
        print(f"\n## Connection storm ({n:,} connections at once, one request each)\n")
        print("Burst: all connections opened at once, one `GET /` each; time from the first connect "
              "to the last answer; SYNs retried: the kernel's TcpExtTCPSynRetrans during the burst "
              "(a SYN the listener's full queue dropped is sent again after 1 s), overflows its "
              "TcpExtListenOverflows (both machine-wide). Then as many idle keep-alive connections, "
              "opened 100 at a time after one request each: idle B/conn is the VmRSS they added ÷ "
              "connections (memory the burst freed can hide it: see the idle connections above). "
              "VmRSS before the round, 1 s after the burst, 2 s after its connections closed, with "
              "the idle ones open, and 2 s after those closed.\n")
        print("| round | target | served | errors | burst time | SYNs retried | overflows | idle B/conn "
              "| RSS before | burst | closed | idle | closed |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in srows:
            print(f"| {r['round']} | {LABELS[r['target']]} | {r['served']:,} | {r['errors']} | "
                  f"{r['seconds']:.2f} s | {r['retried']} | {r['overflows']} | "
                  f"{r['idle_bytes_per_conn']:,.0f} | {mib(r['rss_before_kib'])} | {mib(r['rss_burst_kib'])} | "
                  f"{mib(r['rss_closed_kib'])} | {mib(r['rss_idle_kib'])} | {mib(r['rss_after_kib'])} |")
        print(f"\n| median over rounds | burst time | SYNs retried | idle B/conn | RSS before the first round "
              f"| after the last | {SETTLE_S} s later |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for t in ("nginx", "haproxy", "sluice"):
            sel = [r for r in srows if r["target"] == t]
            if sel:
                later = mib(settled[t]) if t in settled else "—"
                print(f"| {LABELS[t]} | {med(r['seconds'] for r in sel):.2f} s | "
                      f"{med(r['retried'] for r in sel):.0f} | "
                      f"{med(r['idle_bytes_per_conn'] for r in sel):,.0f} | {mib(sel[0]['rss_before_kib'])} | "
                      f"{mib(sel[-1]['rss_after_kib'])} | {later} |")


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "sink":
        sink(int(args[0]))
    elif cmd == "bodies":
        bodies(args)
    elif cmd == "storm":
        storm(args)
    elif cmd == "report":
        report(args)
    else:
        raise SystemExit(f"unknown subcommand {cmd!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
