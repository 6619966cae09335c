#!/usr/bin/env bash
# Descriptors veilgate holds under an HTTP/2 stream flood.
#
#   cargo build --release && bash benches/h2_streams.sh [binary] [extra TOML]
#
# h2load (Debian's nghttp2-client) opens 6 HTTP/2 connections with 200
# streams each to a preset whose origin answers every request after 3 s;
# the peak of /proc/PID/fd is sampled every 50 ms. Extra TOML, e.g.
# '[limits]\nmax_upstream_connections = 200', goes into veilgate's config.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release/veilgate}
extra=${2:-}
command -v h2load >/dev/null || { echo "h2load is missing: apt-get install nghttp2-client" >&2; exit 1; }
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$dir"' EXIT

python3 - "$dir/port" <<'PY' &
import http.server, socketserver, sys, time
class Slow(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        time.sleep(3)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 4096
server = Server(("127.0.0.1", 0), Slow)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()
PY
pids+=($!)
while [ ! -s "$dir/port" ]; do sleep 0.05; done

printf 'listen = "127.0.0.1:0"\nauth_token = "h2_streams_token_0123456789"\n%b\n[presets.openai]\ntargets = ["http://127.0.0.1:%s"]\n' \
  "$extra" "$(cat "$dir/port")" > "$dir/veilgate.toml"
"$bin" --config "$dir/veilgate.toml" 2> "$dir/log" &
vg=$!
pids+=($vg)
until grep -q listening "$dir/log"; do sleep 0.05; done
addr=$(grep -o 'addr=[0-9.:]*' "$dir/log" | head -1 | cut -d= -f2)

echo 0 > "$dir/peak"
( while kill -0 "$vg" 2>/dev/null; do
    n=$(ls "/proc/$vg/fd" | wc -l)
    [ "$n" -gt "$(cat "$dir/peak")" ] && echo "$n" > "$dir/peak"
    sleep 0.05
  done ) &
pids+=($!)
h2load -n 1200 -c 6 -m 200 -T 30 "http://$addr/openai/slow" 2>&1 | grep -E "^(requests|status codes):"
echo "veilgate descriptors: peak $(cat "$dir/peak")"
