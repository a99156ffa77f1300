#!/usr/bin/env python3
"""Benchmarks of the Python package, each against a raw `subprocess` baseline from the same run.

    python3 crates/hitchserve-py/bench/bench.py      # one JSON line per workload

- W1: ready-detection latency: from the instant a service writes `READY <ns>` (its own clock)
  to `startup()` returning, with a Python `log_line_ready_checker`; baseline: Popen + readline.
- W2: 20 services `sh -c 'echo READY; exec sleep 1000'` in 4 chains of 5 (needs), Python
  checkers: startup and shutdown; baseline: 4 threads each Popen-ing its chain (own process
  group, both pipes) and reading each first line, then SIGTERM + wait.
- W3: a service writes 200,000 lines of 80 bytes then DONE: lines/s until `tail.until` sees
  DONE and `.logs.out.lines()` returns every line; baseline: Popen + reading lines in Python.
- W4: shutdown of 10 services that exit 0.1 s after SIGTERM; baseline: the 0.1 s itself.

Targets (issue #12): W1 median < 1 ms; W2 <= 1.3x baseline; W3 lossless and >= 30 % of the
raw rate; W4 <= 1.3x. The original Python hitchserve: 9-12 ms (W1), 0.2 s (W2), 84k lines/s (W3).
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import hitchserve

READY_PY = "import sys, time\nsys.stdout.write('READY %d\\n' % time.time_ns())\nsys.stdout.flush()\ntime.sleep(1000)"
CHAIN_SH = "echo READY; exec sleep 1000"
W3_LINES = 200_000


def bundle(project):
    # Real time (as the baselines), and the console muted: stdout carries the JSON lines.
    return hitchserve.ServiceBundle(project, startup_timeout=60, shutdown_timeout=10, quiet=True, time_travel=False)


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def emit(**fields):
    print(json.dumps(fields), flush=True)


def w1(project, runs=20):
    ours, raw = [], []
    for _ in range(runs):
        b = bundle(project)
        b["Py"] = hitchserve.Service(command=["python3", "-c", READY_PY], log_line_ready_checker=lambda l: l.startswith("READY "))
        b.startup()
        returned = time.time_ns()
        line = b["Py"].logs.out.lines()[0]
        ours.append((returned - int(line.split()[1])) / 1e6)
        b.shutdown()

        child = subprocess.Popen(["python3", "-c", READY_PY], stdout=subprocess.PIPE)
        line = child.stdout.readline()
        read = time.time_ns()
        raw.append((read - int(line.split()[1])) / 1e6)
        child.kill()
        child.wait()
    emit(workload="W1", what="ready-detection latency (write READY -> startup() returns), Python checker",
         runs=runs, median_ms=statistics.median(ours), p95_ms=pct(ours, 0.95),
         baseline_median_ms=statistics.median(raw), baseline_p95_ms=pct(raw, 0.95),
         original_python_ms="9-12", target="median < 1 ms")


def w2(project, runs=11):
    start, stop, raw_start, raw_stop = [], [], [], []
    for _ in range(runs):
        b = bundle(project)
        for chain in range(4):
            for link in range(5):
                needs = [f"C{chain}L{link - 1}"] if link else []
                b[f"C{chain}L{link}"] = hitchserve.Service(
                    command=["sh", "-c", CHAIN_SH], log_line_ready_checker=lambda l: l == "READY", needs=needs)
        t = time.perf_counter()
        b.startup()
        start.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        b.shutdown()
        stop.append((time.perf_counter() - t) * 1e3)

        children = []
        lock = threading.Lock()

        def chain():
            for _ in range(5):
                c = subprocess.Popen(["sh", "-c", CHAIN_SH], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, process_group=0)
                c.stdout.readline()
                with lock:
                    children.append(c)

        t = time.perf_counter()
        threads = [threading.Thread(target=chain) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        raw_start.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        for c in children:
            c.send_signal(signal.SIGTERM)
        for c in children:
            c.wait()
        raw_stop.append((time.perf_counter() - t) * 1e3)
        for c in children:
            c.stdout.close()
            c.stderr.close()
    s, rs = statistics.median(start), statistics.median(raw_start)
    emit(workload="W2", what="20 services in 4 chains of 5 (median of runs), Python checkers", runs=runs,
         startup_ms=s, baseline_startup_ms=rs, startup_ratio=s / rs,
         shutdown_ms=statistics.median(stop), baseline_shutdown_ms=statistics.median(raw_stop),
         original_python_ms=200, target="startup <= 1.3x baseline")


def producer():
    line = ("0123456789" * 8)[:79]
    return f"yes {line} | head -n {W3_LINES}; echo DONE; exec sleep 1000"


def w3(project, runs=5):
    ours, raw = [], []
    for _ in range(runs):
        b = bundle(project)
        b["Producer"] = hitchserve.Service(command=["sh", "-c", producer()])
        t = time.perf_counter()
        b.startup()
        b["Producer"].logs.out.tail.until(lambda l: l == "DONE", timeout=60, lines_back=W3_LINES + 1)
        lines = b["Producer"].logs.out.lines()
        secs = time.perf_counter() - t
        assert len(lines) == W3_LINES + 1 and lines[-1] == "DONE", "every line must be readable"
        ours.append(W3_LINES / secs)
        b.shutdown()

        t = time.perf_counter()
        child = subprocess.Popen(["sh", "-c", producer()], stdout=subprocess.PIPE)
        got = []
        for raw_line in child.stdout:
            if raw_line == b"DONE\n":
                break
            got.append(raw_line.decode().rstrip("\n"))
        secs = time.perf_counter() - t
        raw.append(len(got) / secs)
        child.kill()
        child.wait()
        child.stdout.close()
    o, r = statistics.median(ours), statistics.median(raw)
    emit(workload="W3", what="200,000 lines of 80 bytes then DONE, read through .logs.out.lines() (median)",
         runs=runs, lines_per_s=o, baseline_lines_per_s=r, ratio=o / r, lossless=True,
         original_python_lines_per_s=84000, target=">= 30 % of the raw rate, lossless")


def w4(project, runs=5):
    stop = []
    for _ in range(runs):
        b = bundle(project)
        for i in range(10):
            b[f"Slow{i}"] = hitchserve.Service(
                command=["sh", "-c", "trap 'sleep 0.1; exit 0' TERM; sleep 1000 & echo READY; wait"],
                log_line_ready_checker=lambda l: l == "READY")
        b.startup()
        t = time.perf_counter()
        b.shutdown()
        stop.append((time.perf_counter() - t) * 1e3)
    d = statistics.median(stop)
    emit(workload="W4", what="shutdown of 10 services that exit 0.1 s after SIGTERM (median)", runs=runs,
         shutdown_ms=d, baseline_ms=100.0, ratio=d / 100.0, target="<= 1.3x 0.1 s")


def main():
    only = set(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="hitchserve-py-bench-") as project:
        for name, run in (("W1", w1), ("W2", w2), ("W3", w3), ("W4", w4)):
            if not only or name in only:
                run(project)


if __name__ == "__main__":
    main()
