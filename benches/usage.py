#!/usr/bin/env python3
"""How fast `GET /usage` answers for a team: 100 clients with 10,000
requests each in a month (last month, so that every day has figures) (1,000,000 rows in the SQLite store).

    cargo build --release && python3 benches/usage.py [--binary PATH] [--clients N] [--requests N]

The store is created by veilgate itself (its migrations), filled with
Python's sqlite3 while veilgate is stopped, then veilgate starts on it (and
reads the month totals into memory) and `/usage` is asked as the admin,
every client with its per-model and per-day figures. Prints the start-up
time and the median and worst of 50 answers, measured by the client.
"""

import argparse
import datetime
import http.client
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

from loopback import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "veilgate")
TOKEN = "bench_token_0123456789"
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "gemini-2.5-flash"]


def start(binary, config):
    proc = subprocess.Popen([binary, "--config", config], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, RUST_LOG="warn"))
    return proc


def wait_ready(port, proc):
    t0 = time.monotonic()
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                c.close()
                return time.monotonic() - t0
        except OSError:
            pass
        if proc.poll() is not None:
            sys.exit("veilgate exited: " + proc.stderr.read().decode(errors="replace"))
        if time.monotonic() - t0 > 120:
            sys.exit("veilgate did not start")
        time.sleep(0.01)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=BINARY)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--requests", type=int, default=10_000, help="per client")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        port = free_port()
        state = os.path.join(work, "state")
        clients = "".join(
            f'[[clients]]\nname = "client{i:03}"\ntoken = "client_token_{i:03}_0123456789"\n'
            f"[clients.limits]\nmonthly_cost_usd = 100.0\n"
            for i in range(args.clients)
        )
        config = os.path.join(work, "veilgate.toml")
        with open(config, "w") as f:
            f.write(f'listen = "127.0.0.1:{port}"\nauth_token = "{TOKEN}"\ndata_dir = "{state}"\n{clients}')
        proc = start(args.binary, config)  # creates and migrates the store
        wait_ready(port, proc)
        proc.terminate()
        proc.wait()

        # Last month, whole: every day has figures.
        this_month = datetime.datetime.now(datetime.timezone.utc).replace(
            day=1, hour=0, minute=0, second=0, microsecond=0)
        month_start = (this_month - datetime.timedelta(days=1)).replace(day=1)
        month = month_start.strftime("%Y-%m")
        span = int((this_month - month_start).total_seconds() * 1000)
        base = int(month_start.timestamp() * 1000)
        rng = random.Random(7)
        db = sqlite3.connect(os.path.join(state, "veilgate.db"))
        rows = []
        for i in range(args.clients):
            for _ in range(args.requests):
                t = base + rng.randrange(span)
                d = datetime.datetime.fromtimestamp(t / 1000, datetime.timezone.utc)
                rows.append((t, d.strftime("%Y-%m"), d.strftime("%Y-%m-%d"), f"client{i:03}", "openai",
                             rng.choice(MODELS), 200, 500, 200, 0, 0, 0.0002, 0, 1, 300))
        db.executemany(
            "INSERT INTO requests (time_ms, month, day, client, preset, model, status, input_tokens, output_tokens,"
            " cached_tokens, cache_write_tokens, cost_usd, estimated, attempts, duration_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.commit()
        db.close()

        proc = start(args.binary, config)
        started = wait_ready(port, proc)
        times = []
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(50):
            t0 = time.perf_counter()
            c.request("GET", f"/usage?month={month}", headers={"authorization": f"Bearer {TOKEN}"})
            r = c.getresponse()
            body = r.read()
            times.append(time.perf_counter() - t0)
            if r.status != 200:
                sys.exit(f"status {r.status}: {body[:200]!r}")
        c.close()
        proc.terminate()
        proc.wait()
        total = args.clients * args.requests
        print(f"/usage, {args.clients} clients x {args.requests} requests ({total:,} rows, {len(body):,} bytes): "
              f"median {statistics.median(times) * 1000:.1f} ms, worst {max(times) * 1000:.1f} ms; "
              f"start-up with that store {started:.2f} s")


if __name__ == "__main__":
    main()
