"""What the benchmark scripts share: free loopback ports, waiting for a
listener, and timing sequential keep-alive requests through a veilgate
started for the purpose."""

import http.client
import os
import socket
import statistics
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def timed_gets(binary, config, port, path, requests, warmup=50):
    """Runs `binary --config config` (listening on `port`), sends `warmup`
    then `requests` sequential GETs of `path` on one keep-alive connection,
    and returns the p50 and p99 of the measured ones in µs."""
    proc = subprocess.Popen([binary, "--config", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, RUST_LOG="warn"))
    try:
        wait_port(port)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        times = []
        for i in range(requests + warmup):
            t = time.perf_counter()
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            if r.status != 200:
                sys.exit(f"status {r.status}")
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1e6)
        c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]
