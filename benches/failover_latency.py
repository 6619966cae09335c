#!/usr/bin/env python3
"""Time a failover adds per request (SPEC §13): veilgate in front of a
loopback origin, once with the origin as the preset's only target and once
behind a first target whose port refuses connections (`strategy =
"ordered"`, ejection off), p50/p99 of sequential requests from one
keep-alive client.

    cargo build --release && python3 benches/failover_latency.py [--requests N]

A refused connection is tried by both transports (the socket, then the
fetch fallback of §4) before the next target: the figure is what a dead
first target costs every request that still tries it.
"""

import argparse
import http.server
import os
import sys
import tempfile
import threading

from loopback import free_port, timed_gets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "veilgate")
BODY = b'{"ok":true}'


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        # One write: head and body in two segments would meet Nagle.
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(BODY)}\r\n\r\n"
        self.wfile.write(head.encode() + BODY)

    def log_message(self, *args):
        pass


def run(targets, requests, workdir):
    port = free_port()
    config = os.path.join(workdir, "veilgate.toml")
    listed = ", ".join(f'"{t}"' for t in targets)
    with open(config, "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\nauth_token = "bench_token_0123456789"\ndata_dir = "{workdir}"\n'
                f'[health]\neject_after = 1000000000\n'
                f'[presets.api]\ntargets = [{listed}]\nstrategy = "ordered"\n')
    return timed_gets(BINARY, config, port, "/api/x", requests)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    if not os.path.exists(BINARY):
        sys.exit("build first: cargo build --release")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    live = f"http://127.0.0.1:{server.server_address[1]}"
    dead = f"http://127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
        alone = run([live], args.requests, d1)
        behind = run([dead, live], args.requests, d2)
    server.shutdown()
    print(f"{'':<34}{'p50 µs':>10}{'p99 µs':>10}")
    print(f"{'the origin alone':<34}{alone[0]:>10.0f}{alone[1]:>10.0f}")
    print(f"{'behind a refusing first target':<34}{behind[0]:>10.0f}{behind[1]:>10.0f}")
    print(f"{'added by the failover':<34}{behind[0] - alone[0]:>10.0f}{behind[1] - alone[1]:>10.0f}")


if __name__ == "__main__":
    main()
