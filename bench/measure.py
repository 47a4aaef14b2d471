#!/usr/bin/env python3
"""What run.sh reads from the machine: free ports, readiness, and /proc.

Each subcommand prints one line so that the shell can capture it:

  ports N                 N free loopback TCP ports, space-separated
  wait URL BODY SECONDS   polls URL until it answers 200 (and, unless BODY is
                          empty, with exactly BODY); exit 1 on timeout
  cpu PID                 CPU time of PID and all its descendants, all threads
                          included, as "USER,SYSTEM" clock ticks
  hwm PID                 peak resident set (VmHWM, KiB) summed over PID and
                          its descendants
  rss PID                 current resident set (VmRSS, KiB), summed likewise
  core N                  busy and total jiffies of CPU N from /proc/stat
  clk                     clock ticks per second (for cpu)

A process tree is summed because nginx forks workers from a master; for
HAProxy (-db) and sluice it is a single process with several threads, which
/proc/PID/stat already sums.
"""

import os
import socket
import sys
import time
import urllib.error
import urllib.request


def free_ports(n):
    # Bind them all before closing any, so the n ports are distinct.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait(url, body, seconds):
    # Straight to loopback, whatever http_proxy says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=1) as resp:
                got = resp.read().decode("utf-8", "replace")
                if resp.status == 200 and (not body or got == body):
                    return True
                last = f"status {resp.status}, body {got!r}"
        except urllib.error.HTTPError as e:
            last = f"status {e.code}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    print(f"{url}: not ready after {seconds}s ({last})", file=sys.stderr)
    return False


def children_map():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split
        # after its closing parenthesis.
        rest = stat[stat.rindex(")") + 2 :].split()
        kids.setdefault(int(rest[1]), []).append(int(entry))
    return kids


def tree(pid):
    kids = children_map()
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(kids.get(p, []))
    return seen


def cpu_ticks(pid):
    user = system = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Fields 14 and 15 of stat (utime, stime); rest[0] is field 3.
        user += int(rest[11])
        system += int(rest[12])
    return user, system


def status_kib(pid, key):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def core(n):
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields[0] == f"cpu{n}":
                ticks = [int(x) for x in fields[1:]]
                # user nice system idle iowait irq softirq steal (guest time
                # is already inside user).
                total = sum(ticks[:8])
                idle = ticks[3] + ticks[4]
                return total - idle, total
    raise SystemExit(f"no cpu{n} in /proc/stat")


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "ports":
        print(" ".join(str(p) for p in free_ports(int(args[0]))))
    elif cmd == "wait":
        return 0 if wait(args[0], args[1], float(args[2])) else 1
    elif cmd == "cpu":
        print("%d,%d" % cpu_ticks(int(args[0])))
    elif cmd == "hwm":
        print(status_kib(int(args[0]), "VmHWM"))
    elif cmd == "rss":
        print(status_kib(int(args[0]), "VmRSS"))
    elif cmd == "core":
        busy, total = core(int(args[0]))
        print(busy, total)
    elif cmd == "clk":
        print(os.sysconf("SC_CLK_TCK"))
    else:
        raise SystemExit(f"unknown subcommand {cmd!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
