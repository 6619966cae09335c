#!/usr/bin/env python3
"""Latency a SOCKS5 exit adds per request (SPEC §10): veilgate in front of
a loopback origin, directly and through `microsocks` on loopback, p50/p99
of sequential requests from one keep-alive client.

    cargo build --release && python3 benches/egress_latency.py [--requests N]

Two origins: one that keeps its connections (veilgate's pool reuses the
exit's connection, so the exit costs only a relay hop) and one that
closes after every answer (each request opens a new connection through
the exit: TCP to the proxy, the SOCKS5 handshake, TCP onwards).
"""

import argparse
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading

from loopback import free_port, timed_gets, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "veilgate")
BODY = b'{"ok":true}'


def origin(close):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            # One write: a head and body in two segments would meet Nagle
            # and delayed ACKs (40 ms) and measure those instead.
            head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            head += f"content-length: {len(BODY)}\r\n" + ("connection: close\r\n" if close else "") + "\r\n"
            self.wfile.write(head.encode() + BODY)
            self.close_connection = close

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(socks, origin_port, requests, workdir):
    port = free_port()
    config = os.path.join(workdir, "veilgate.toml")
    text = f'listen = "127.0.0.1:{port}"\nauth_token = "bench_token_0123456789"\ndata_dir = "{workdir}"\n'
    if socks:
        text += f'[egress.exit]\nsocks5 = "127.0.0.1:{socks}"\n[upstream]\negress = "exit"\n'
    text += f'[presets.plain]\ntargets = ["http://localhost:{origin_port}"]\n'
    with open(config, "w") as f:
        f.write(text)
    return timed_gets(BINARY, config, port, "/plain/x", requests)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    if not shutil.which("microsocks"):
        sys.exit("microsocks is not installed (apt-get install microsocks)")
    if not os.path.exists(BINARY):
        sys.exit("build first: cargo build --release")
    socks_port = free_port()
    socks = subprocess.Popen(["microsocks", "-i", "127.0.0.1", "-p", str(socks_port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(socks_port)
        print(f"{'origin':<28}{'direct p50/p99 µs':>22}{'via SOCKS5 p50/p99 µs':>26}{'added p50/p99 µs':>22}")
        for close in (False, True):
            server = origin(close)
            with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
                direct = run(None, server.server_address[1], args.requests, d1)
                via = run(socks_port, server.server_address[1], args.requests, d2)
            server.shutdown()
            name = "closes every connection" if close else "keep-alive (pooled)"
            added = (via[0] - direct[0], via[1] - direct[1])
            print(f"{name:<28}{direct[0]:>11.0f} / {direct[1]:<8.0f}{via[0]:>13.0f} / {via[1]:<10.0f}"
                  f"{added[0]:>11.0f} / {added[1]:<8.0f}")
    finally:
        socks.terminate()
        socks.wait(timeout=10)


if __name__ == "__main__":
    main()
