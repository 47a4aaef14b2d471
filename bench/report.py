#!/usr/bin/env python3
"""Turns wrk outputs and /proc readings into the benchmark's report.

  sample SCENARIO ROUND WRK_FILE SECONDS CLK CPU_BEFORE CPU_AFTER
         CORE_BEFORE CORE_AFTER HWM_KIB
      prints one JSON line for one wrk run (and a progress line to stderr). CPU_* are the proxy's CPU ticks
      as "USER,SYSTEM" ("-" for the direct scenario, which has no proxy), CORE_* the proxy
      core's busy ticks, HWM_KIB the proxy's peak RSS ("-" for direct).

  summary SAMPLES_FILE HEADER_FILE IDLE_RSS_KIB IDLE_HWM_KIB PINNED
      prints the Markdown report (PINNED is 1 when the proxy had a core of
      its own, which makes the noise check meaningful): the header, the table of medians over
      rounds, sluice's ratios to the others with PASS/MISS against the
      performance targets (see bench/README.md), and every run.

  instructions FILE
      prints the callgrind section: FILE has one "NAME INSTRUCTIONS REQUESTS"
      line per proxy; the table gives user-space instructions per request
      and sluice's ratio to each.

Medians rather than means: one run disturbed by something else on the
machine should not move the result.
"""

import json
import re
import statistics
import sys

SCENARIOS = ["direct", "nginx", "haproxy", "sluice"]
LABELS = {"direct": "direct", "nginx": "nginx", "haproxy": "HAProxy", "sluice": "sluice"}

# The performance targets (bench/README.md).
CPU_TARGET = 0.70  # sluice CPU/request <= this x the better of nginx, HAProxy
DIRECT_TARGET = 0.95  # sluice req/s >= this x direct
IDLE_RSS_TARGET_MIB = 20.0  # with 100 pools x 10 endpoints
# Busy share of the proxy's core during `direct` (no proxy working) above
# which the report warns that something else was running there.
NOISE_PERCENT = 5.0

UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def to_us(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(text):
    """Requests/s, p50, p99 (µs), requests completed and errors of one run."""
    out = {}
    m = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    if not m:
        raise ValueError("no Requests/sec in wrk output:\n" + text)
    out["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", text, re.M)
        if not m:
            raise ValueError(f"no {pct}% latency in wrk output (run with --latency)")
        out[key] = to_us(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else 0
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errors += int(m.group(1))
    out["errors"] = errors
    return out


def sample(args):
    scenario, rnd, wrk_file, seconds, clk = args[0], int(args[1]), args[2], float(args[3]), int(args[4])
    cpu0, cpu1, core0, core1, hwm = args[5:10]
    with open(wrk_file) as f:
        run = parse_wrk(f.read())
    run.update(scenario=scenario, round=rnd, seconds=seconds)
    n = max(run["requests"], 1)
    if cpu0 != "-":
        (u0, s0), (u1, s1) = ([int(t) for t in c.split(",")] for c in (cpu0, cpu1))
        cpu_s = (u1 + s1 - u0 - s0) / clk
        run["cpu_us_per_req"] = cpu_s * 1e6 / n
        run["user_us_per_req"] = (u1 - u0) / clk * 1e6 / n
        run["cpu_percent"] = 100.0 * cpu_s / seconds
    (b0, t0), (b1, t1) = ([int(t) for t in c.split(",")] for c in (core0, core1))
    run["core_us_per_req"] = (b1 - b0) / clk * 1e6 / n
    run["core_busy_percent"] = 100.0 * (b1 - b0) / max(t1 - t0, 1)
    if hwm != "-":
        run["hwm_kib"] = int(hwm)
    print(json.dumps(run))
    cpu = run.get("cpu_us_per_req")
    print(
        f"bench: round {rnd} {scenario:<8} {run['rps']:8.0f} req/s  p50 {fmt_us(run['p50_us']):>9}  "
        f"p99 {fmt_us(run['p99_us']):>9}  CPU {fmt(cpu, '.1f')} µs/req  errors {run['errors']}",
        file=sys.stderr,
    )


def fmt_us(us):
    if us is None:
        return "—"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def fmt(v, spec, unit=""):
    return "—" if v is None else f"{v:{spec}}{unit}"


def median(samples, key):
    vals = [s[key] for s in samples if key in s]
    return statistics.median(vals) if vals else None


def summary(args):
    samples_file, header_file, idle_rss, idle_hwm = args[0], args[1], int(args[2]), int(args[3])
    pinned = args[4] == "1"
    with open(samples_file) as f:
        samples = [json.loads(line) for line in f if line.strip()]
    with open(header_file) as f:
        print(f.read().rstrip("\n"))
    print()

    med = {}
    for sc in SCENARIOS:
        runs = [s for s in samples if s["scenario"] == sc]
        if not runs:
            continue
        hwm = [s["hwm_kib"] for s in runs if "hwm_kib" in s]
        med[sc] = {
            "rps": median(runs, "rps"),
            "p50": median(runs, "p50_us"),
            "p99": median(runs, "p99_us"),
            "cpu": median(runs, "cpu_us_per_req"),
            "user": median(runs, "user_us_per_req"),
            "pct": median(runs, "cpu_percent"),
            "core": median(runs, "core_us_per_req"),
            "core_pct": median(runs, "core_busy_percent"),
            "hwm_mib": max(hwm) / 1024 if hwm else None,
            "errors": sum(s["errors"] for s in runs),
            "runs": len(runs),
        }

    print("## Results (median over rounds)")
    print()
    print("| scenario | req/s | p50 | p99 | CPU µs/req | of which user | proxy CPU % | core busy µs/req | peak RSS | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for sc, m in med.items():
        print(
            f"| {LABELS[sc]} | {m['rps']:,.0f} | {fmt_us(m['p50'])} | {fmt_us(m['p99'])} "
            f"| {fmt(m['cpu'], '.1f')} | {fmt(m['user'], '.1f')} | {fmt(m['pct'], '.0f', ' %')} | {fmt(m['core'], '.1f')} "
            f"| {fmt(m['hwm_mib'], '.1f', ' MiB')} | {m['errors']} |"
        )
    print()
    print(
        "CPU µs/req: the proxy's own user+system time (all its processes and threads) "
        "divided by requests completed; \"of which user\" is the part spent in the proxy's "
        "own code rather than in the kernel's socket calls. Proxy CPU %: that time over "
        "the run's length (near 100 % means the proxy, not wrk, was the limit). Core busy µs/req: everything the proxy's core "
        "did per request, other tenants and softirq included (for `direct` it is pure "
        "background noise). Peak RSS: VmHWM, summed over the proxy's processes, max over rounds."
    )
    print()

    direct = med.get("direct")
    if pinned and direct and direct["core_pct"] is not None and direct["core_pct"] > NOISE_PERCENT:
        print(
            f"**Noisy machine:** the proxy's core was {direct['core_pct']:.0f} % busy during the "
            "`direct` runs, when no proxy was working: other processes shared it, so CPU per "
            "request, throughput and latency below are inflated and vary between runs. "
            "Rerun on a quiet machine before quoting them."
        )
        print()

    print("## sluice against the others")
    print()
    checks = []
    s = med.get("sluice")
    if s is None:
        print("No sluice runs.")
    else:

        def ratio(a, b):
            return a / b if a is not None and b else None

        print("| ratio | sluice / nginx | sluice / HAProxy | sluice / direct |")
        print("|---|---:|---:|---:|")
        for key, name in (("rps", "req/s"), ("p50", "p50"), ("p99", "p99"), ("cpu", "CPU µs/req"), ("hwm_mib", "peak RSS")):
            cells = [
                fmt(ratio(s[key], med.get(o, {}).get(key)), ".2f") for o in ("nginx", "haproxy", "direct")
            ]
            print(f"| {name} | " + " | ".join(cells) + " |")
        print()

        # The same ratios taken within each round, where the scenarios ran
        # back to back under the same load from other tenants, then the
        # median over rounds: less moved by load that drifts over the run.
        by_round = {}
        for x in samples:
            by_round.setdefault(x["round"], {})[x["scenario"]] = x
        keys = (("rps", "req/s"), ("p99_us", "p99"), ("cpu_us_per_req", "CPU µs/req"), ("user_us_per_req", "user µs/req"))
        print(
            "Paired: the ratio within each round (the four scenarios run back to back, "
            "so they share that round's load from other tenants), median over rounds:"
        )
        print()
        print("| ratio, median of rounds | sluice / nginx | sluice / HAProxy |")
        print("|---|---:|---:|")
        for key, name in keys:
            cells = []
            for o in ("nginx", "haproxy"):
                rs = [
                    r["sluice"][key] / r[o][key]
                    for r in by_round.values()
                    if "sluice" in r and o in r and r["sluice"].get(key) is not None and r[o].get(key)
                ]
                cells.append(fmt(statistics.median(rs) if rs else None, ".2f"))
            print(f"| {name} | " + " | ".join(cells) + " |")
        print()

        def check(ok, text):
            checks.append(("PASS" if ok else "MISS") + "  " + text)

        others = {o: med[o]["cpu"] for o in ("nginx", "haproxy") if o in med and med[o]["cpu"]}
        if others and s["cpu"] is not None:
            best = min(others, key=others.get)
            r = s["cpu"] / others[best]
            check(
                r <= CPU_TARGET,
                f"sluice / {LABELS[best]} CPU per request: {r:.2f} "
                f"({s['cpu']:.1f} vs {others[best]:.1f} µs; target ≤ {CPU_TARGET:.2f} of the better of nginx and HAProxy)",
            )
        for o in ("nginx", "haproxy"):
            if o in med:
                r = s["rps"] / med[o]["rps"]
                check(r >= 1.0, f"sluice / {LABELS[o]} throughput: {r:.2f} (target ≥ 1.00)")
        if "direct" in med:
            r = s["rps"] / med["direct"]["rps"]
            check(r >= DIRECT_TARGET, f"sluice throughput / direct: {r:.2f} (target ≥ {DIRECT_TARGET:.2f})")
        for o in ("nginx", "haproxy"):
            if o in med:
                r = s["p99"] / med[o]["p99"]
                check(
                    r <= 1.0,
                    f"sluice / {LABELS[o]} p99: {r:.2f} ({fmt_us(s['p99'])} vs {fmt_us(med[o]['p99'])}; target ≤ 1.00)",
                )
        check(s["errors"] == 0, f"sluice errors (socket errors + non-2xx): {s['errors']} (target 0)")
    rss_mib = idle_rss / 1024
    check_ok = rss_mib <= IDLE_RSS_TARGET_MIB
    checks.append(
        ("PASS" if check_ok else "MISS")
        + f"  sluice idle RSS, 100 pools × 10 endpoints: {rss_mib:.1f} MiB "
        + f"(peak while loading {idle_hwm / 1024:.1f} MiB; target ≤ {IDLE_RSS_TARGET_MIB:.0f} MiB)"
    )
    print("```")
    print("\n".join(checks))
    print("```")
    print()

    print("## Every run")
    print()
    print("| round | scenario | req/s | p50 | p99 | CPU µs/req | of which user | core busy µs/req | core busy % | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for x in samples:
        print(
            f"| {x['round']} | {LABELS[x['scenario']]} | {x['rps']:,.0f} | {fmt_us(x['p50_us'])} "
            f"| {fmt_us(x['p99_us'])} | {fmt(x.get('cpu_us_per_req'), '.1f')} | {fmt(x.get('user_us_per_req'), '.1f')} "
            f"| {fmt(x.get('core_us_per_req'), '.1f')} | {fmt(x.get('core_busy_percent'), '.0f', ' %')} | {x['errors']} |"
        )


def instructions(args):
    (path,) = args
    per_request = {}
    for line in open(path, encoding="utf-8"):
        name, ir, requests = line.split()
        per_request[name] = int(ir) / max(int(requests), 1)
    print()
    print("## User-space instructions per request (callgrind)")
    print()
    print(
        "Each proxy once more, alone under valgrind's callgrind, which counts the instructions it "
        "executes in user space (the kernel's socket work is not counted; `rep`-prefixed copies count "
        "once per iteration) while wrk loads it for a few seconds, then h2load over h2c (HTTP/2 with "
        "prior knowledge, 8 connections with 8 streams in flight each; to the backends HTTP/1.1 as "
        "before). Unlike CPU time, this figure does not move with other tenants' load, so it is the "
        "one to compare changes with."
    )
    print()
    h2 = any(name.endswith("-h2c") for name in per_request)
    if h2:
        print("| proxy | HTTP/1.1 instructions per request | sluice / this | h2c instructions per request | sluice / this |")
        print("|---|---:|---:|---:|---:|")
    else:
        print("| proxy | instructions per request | sluice / this |")
        print("|---|---:|---:|")

    def cells(suffix, name):
        mine, theirs = per_request.get("sluice" + suffix), per_request.get(name + suffix)
        if theirs is None:
            return "— | —"
        ratio = f"{mine / theirs:.2f}" if mine else "—"
        return f"{theirs:,.0f} | {ratio}"

    for name in ("nginx", "haproxy", "sluice"):
        if name in per_request or name + "-h2c" in per_request:
            row = f"| {LABELS[name]} | {cells('', name)} |"
            if h2:
                row += f" {cells('-h2c', name)} |"
            print(row)


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "sample":
        sample(args)
    elif cmd == "summary":
        summary(args)
    elif cmd == "instructions":
        instructions(args)
    else:
        raise SystemExit(f"unknown subcommand {cmd!r}")


if __name__ == "__main__":
    main(sys.argv)
