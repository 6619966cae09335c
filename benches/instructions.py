#!/usr/bin/env python3
"""Instructions veilgate executes per proxied request, counted by callgrind,
beside nginx's for the same requests, and both's syscalls per request.

Wall-clock figures on a shared 2-core machine move by 10-20 % from run to
run; instruction counts do not, so this is the figure to compare when
changing the hot path. The kernel's share (syscalls, loopback) is not
counted: this measures veilgate's own code and the crates it links (and
nginx's); the syscall count (strace -f -c) shows the kernel side.

    cargo build --release && python3 benches/instructions.py [--requests N] [--binary PATH] [--client | --keyed] [--no-nginx]

(`--binary` compares another build, e.g. a copy of an older commit's.
`--client` sends the same requests as a client of `[[clients]]` (its token
in the path) with limits and a priced model: the cost of metering, SPEC
§11; the usage store is SQLite in a temporary `data_dir`. `--keyed` gives
the preset a held key, SPEC §12: the request shows the admin token where
it showed a provider key, and veilgate writes the held one instead. Both
skip nginx, which has neither.)

veilgate runs under `valgrind --tool=callgrind`, pinned to one core like in
`cargo bench --bench proxy`, with `RUST_LOG=warn` (no access log lines),
in front of a small keep-alive origin in this script; nginx the same way
with `worker_processes 1`, `master_process off`, a keep-alive upstream,
`proxy_buffering off` and `access_log off` — its cheapest honest
reverse-proxy setup. Each is run twice, with a few and with many
sequential keep-alive POSTs on one connection; the difference divided by
the difference in requests removes start-up and shutdown.
"""

import argparse
import http.client
import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from loopback import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NGINX = next((p for p in ("/usr/sbin/nginx", "/usr/bin/nginx") if os.path.exists(p)), None)
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
ANSWER_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(ANSWER)).encode() + b"\r\n\r\n"
)
REQUEST = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        # Head and body in one write, as a provider's small JSON answer
        # arrives: whether a proxy reads them in one go or two must not
        # depend on the scheduling of this origin's two writes.
        self.wfile.write(ANSWER_HEAD + ANSWER)

    def log_message(self, *args):
        pass


def veilgate_server(binary, origin_port, workdir, tag, client, keyed):
    """The command line of a veilgate in front of the origin, and the path
    the requests go to."""
    port = free_port()
    config = os.path.join(workdir, f"veilgate.{tag}.toml")
    state = os.path.join(workdir, f"state.{tag}")
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
    # The same request either way; a client names itself by its token in
    # the path (§9), so the heads differ by nothing else.
    path = f"/{CLIENT_TOKEN}/plain/v1/chat/completions" if client else "/plain/v1/chat/completions"
    return [binary, "--config", config], port, path, dict(os.environ, RUST_LOG="warn")


def nginx_server(origin_port, workdir, tag):
    """nginx as its cheapest honest reverse proxy: one worker, no master,
    keep-alive upstream, no buffering, no access log."""
    port = free_port()
    prefix = os.path.join(workdir, f"nginx.{tag}")
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(
            f"worker_processes 1;\nmaster_process off;\ndaemon off;\nerror_log stderr error;\n"
            f"pid {prefix}/nginx.pid;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n"
            f"  fastcgi_temp_path {prefix}/fcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n"
            f"  upstream plain {{ server 127.0.0.1:{origin_port}; keepalive 16; keepalive_requests 10000000; }}\n"
            f"  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n"
            f"  server {{\n    listen 127.0.0.1:{port};\n    proxy_http_version 1.1;\n"
            f"    proxy_set_header Connection \"\";\n    proxy_buffering off;\n"
            f"    location /plain/ {{ proxy_pass http://plain/; }}\n  }}\n}}\n"
        )
    return [NGINX, "-p", prefix, "-c", conf], port, "/plain/v1/chat/completions", dict(os.environ)


def run(server, requests, tool, out, keyed=False):
    """Runs `server` under `tool` ("callgrind" or "strace"), sends it
    `requests` keep-alive POSTs, stops it, and returns what the tool wrote."""
    cmd, port, path, env = server
    if tool == "callgrind":
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + cmd
    else:
        cmd = ["strace", "-f", "-c", "-o", out] + cmd
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0"] + cmd
    key = "bench_token_0123456789" if keyed else "sk-bench"
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Ready once the first request is answered (the same request: it
        # falls out with start-up).
        deadline = time.monotonic() + 120
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                c.request("POST", path, body=REQUEST, headers=headers)
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit(f"{os.path.basename(server[0][0])} did not start under {tool}")
            time.sleep(0.1)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        for _ in range(requests):
            c.request("POST", path, body=REQUEST, headers=headers)
            r = c.getresponse()
            r.read()
            if r.status != 200:
                sys.exit(f"status {r.status}")
        c.close()
    finally:
        stop(proc, tool)
    with open(out) as f:
        return f.read()


def stop(proc, tool):
    """SIGTERM to the server; under strace to the traced process itself
    (strace then writes its summary and exits)."""
    target = proc.pid
    if tool == "strace":
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                target = int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            pass
    try:
        os.kill(target, signal.SIGTERM)
    except ProcessLookupError:
        pass
    proc.wait(timeout=120)


def instructions(text):
    totals = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if not totals:
        sys.exit("no callgrind totals")
    return int(totals.group(1))


def syscalls(text):
    # The summary's last row: `100.00  seconds  usecs/call  calls  [errors]  total`.
    total = re.search(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?total$", text, re.M)
    if not total:
        sys.exit("no strace totals")
    return int(total.group(1))


def per_request(make, workdir, requests, tool, parse, keyed=False):
    """`tool`'s figure per request: a run with 100 requests and one with
    100 + `requests`, the difference divided (start-up and shutdown drop out)."""
    figures = []
    for n in (100, 100 + requests):
        out = os.path.join(workdir, f"{tool}.{make.__name__}.{n}")
        text = run(make(f"{tool}.{n}"), n, tool, out, keyed)
        figures.append((parse(text), out))
    (few, few_out), (many, many_out) = figures
    return (many - few) / requests, few_out, many_out


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
    parser.add_argument("--no-nginx", action="store_true", help="veilgate's instructions only")
    parser.add_argument("--keep", metavar="DIR", help="copy veilgate's two callgrind outputs here, for callgrind_annotate")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    if not os.path.exists(args.binary):
        sys.exit("build first: cargo build --release")
    compare = not (args.no_nginx or args.client or args.keyed)
    if compare and not (NGINX and shutil.which("strace")):
        print("(nginx or strace is not installed: veilgate only; apt-get install nginx strace)")
        compare = False
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin_port = server.server_address[1]
    with tempfile.TemporaryDirectory() as workdir:

        def veilgate(tag):
            return veilgate_server(args.binary, origin_port, workdir, tag, args.client, args.keyed)

        def nginx(tag):
            return nginx_server(origin_port, workdir, tag)

        per, few_out, many_out = per_request(veilgate, workdir, args.requests, "callgrind", instructions, args.keyed)
        writer = (writer_share(many_out) - writer_share(few_out)) / args.requests
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            for out in (few_out, many_out):
                shutil.copy(out, args.keep)
        if compare:
            ng, _, _ = per_request(nginx, workdir, args.requests, "callgrind", instructions)
            vg_calls, _, _ = per_request(veilgate, workdir, args.requests, "strace", syscalls)
            ng_calls, _, _ = per_request(nginx, workdir, args.requests, "strace", syscalls)
    server.shutdown()
    who = "as a metered client" if args.client else "to a preset holding a key" if args.keyed else "no clients"
    print(f"veilgate: {per:,.0f} instructions per proxied request "
          f"(callgrind, {args.requests} keep-alive POSTs, small JSON both ways, {who})")
    if writer:
        print(f"  of which {writer:,.0f} in the usage store's writer thread (SQLite, off the request path); "
              f"request path: {per - writer:,.0f}")
    if compare:
        print(f"nginx:    {ng:,.0f} instructions per proxied request (the same requests, "
              f"worker_processes 1, keep-alive upstream, proxy_buffering off, access_log off)")
        print(f"ratio veilgate / nginx: {per / ng:.2f}x instructions")
        print(f"syscalls per request (strace -f -c): veilgate {vg_calls:.1f}, nginx {ng_calls:.1f}")


if __name__ == "__main__":
    main()
