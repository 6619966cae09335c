#!/usr/bin/env python3
"""Instructions veilgate executes per proxied request, counted by callgrind.

Wall-clock figures on a shared 2-core machine move by 10-20 % from run to
run; instruction counts do not, so this is the figure to compare when
changing the hot path. The kernel's share (syscalls, loopback) is not
counted: this measures veilgate's own code and the crates it links.

    cargo build --release && python3 benches/instructions.py [--requests N] [--binary PATH] [--client | --keyed]

(`--binary` compares another build, e.g. a copy of an older commit's.
`--client` sends the same requests as a client of `[[clients]]` (its token
in the path) with limits and a priced model: the cost of metering, SPEC
§11; the usage store is SQLite in a temporary `data_dir`. `--keyed` gives
the preset a held key, SPEC §12: the request shows the admin token where
it showed a provider key, and veilgate writes the held one instead.)

veilgate runs under `valgrind --tool=callgrind`, pinned to one core like in
`cargo bench --bench proxy`, with `RUST_LOG=warn` (no access log lines),
in front of a small keep-alive origin in this script. It is run twice, with
a few and with many sequential keep-alive POSTs on one connection; the
difference divided by the difference in requests removes start-up and
shutdown.
"""

import argparse
import http.client
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from loopback import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "veilgate")
ANSWER = (
    b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":'
    b'{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":10,"total_tokens":19}}'
)
CLIENT_TOKEN = "bench_client_token_0123456789"
CLIENT = f"""protocol = "openai"
[[clients]]
name = "bench"
token = "{CLIENT_TOKEN}"
[clients.limits]
monthly_requests = 100000000
monthly_tokens = 100000000000
monthly_cost_usd = 1000000.0
requests_per_minute = 100000000
[pricing]
"gpt-4o-mini*" = {{ input = 0.15, output = 0.60 }}
"""
REQUEST = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    def log_message(self, *args):
        pass


def count(binary, requests, origin_port, workdir, client, keyed):
    port = free_port()
    config = os.path.join(workdir, "veilgate.toml")
    state = os.path.join(workdir, f"state.{requests}")
    text = (
        f'listen = "127.0.0.1:{port}"\nauth_token = "bench_token_0123456789"\ndata_dir = "{state}"\n'
        f'[presets.plain]\ntargets = ["http://127.0.0.1:{origin_port}"]\n'
    )
    if keyed:
        text += 'keys = ["sk-held-bench-key-0123456789"]\nkey_header = "authorization"\n'
    if client:
        text += CLIENT
    with open(config, "w") as f:
        f.write(text)
    out = os.path.join(workdir, f"callgrind.{requests}")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary, "--config", config]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0"] + cmd
    env = dict(os.environ, RUST_LOG="warn")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    c.close()
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit("veilgate did not start under valgrind")
            time.sleep(0.1)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        key = "bench_token_0123456789" if keyed else "sk-bench"
        headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
        # The same request either way; a client names itself by its token
        # in the path (§9), so the heads differ by nothing else.
        path = f"/{CLIENT_TOKEN}/plain/v1/chat/completions" if client else "/plain/v1/chat/completions"
        for _ in range(requests):
            c.request("POST", path, body=REQUEST, headers=headers)
            r = c.getresponse()
            r.read()
            if r.status != 200:
                sys.exit(f"status {r.status}")
        c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    with open(out) as f:
        totals = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
    if not totals:
        sys.exit("no callgrind totals")
    return int(totals.group(1)), writer_share(out)


def writer_share(out):
    """Instructions of the usage store's writer thread (SQLite, off the
    request path), from callgrind_annotate's inclusive figures; 0 without it."""
    if not shutil.which("callgrind_annotate"):
        return 0
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", out], capture_output=True, text=True).stdout
    m = re.search(r"^\s*([\d,]+) .*usage::store::write_loop \[", text, re.M)
    return int(m.group(1).replace(",", "")) if m else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--binary", default=BINARY)
    parser.add_argument("--client", action="store_true", help="as a metered client with limits and a price")
    parser.add_argument("--keyed", action="store_true", help="to a preset that holds a provider key")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    if not os.path.exists(args.binary):
        sys.exit("build first: cargo build --release")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as workdir:
        port = server.server_address[1]
        few, few_writer = count(args.binary, 100, port, workdir, args.client, args.keyed)
        many, many_writer = count(args.binary, 100 + args.requests, port, workdir, args.client, args.keyed)
    server.shutdown()
    per = (many - few) / args.requests
    writer = (many_writer - few_writer) / args.requests
    who = "as a metered client" if args.client else "to a preset holding a key" if args.keyed else "no clients"
    print(f"veilgate: {per:,.0f} instructions per proxied request "
          f"(callgrind, {args.requests} keep-alive POSTs, small JSON both ways, {who})")
    if writer:
        print(f"  of which {writer:,.0f} in the usage store's writer thread (SQLite, off the request path); "
              f"request path: {per - writer:,.0f}")


if __name__ == "__main__":
    main()
