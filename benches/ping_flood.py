#!/usr/bin/env python3
"""Memory of veilgate under a WebSocket ping flood, from either side of a tunnel.

    cargo build --release
    target/sdk-venv/bin/python3 benches/ping_flood.py [--binary PATH] [--mib N] client|upstream

The flooding peer writes N MiB of 125-byte pings and never reads the pongs,
then sends a text message "done"; the script waits for "done" to come through
the tunnel (so veilgate has read everything before it) and prints veilgate's
RSS before the flood and its peak (VmHWM) after. `client`: the flood comes
from the client (a raw socket); `upstream`: from the origin (the `websockets`
package, as .ci/run installs it into target/sdk-venv).
"""

import argparse
import asyncio
import base64
import os
import socket
import subprocess
import tempfile
import time

import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PING = 125


def memory_kib(pid, field):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def frame(opcode, payload, masked):
    """One final WebSocket frame with a payload under 126 bytes."""
    if not masked:
        return bytes([0x80 | opcode, len(payload)]) + payload
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def flood_chunks(mib, masked):
    chunk = frame(0x9, b"p" * PING, masked) * 1024
    return chunk, mib * 1024 * 1024 // len(chunk)


def start_veilgate(binary, origin_port):
    config = os.path.join(tempfile.mkdtemp(), "veilgate.toml")
    with open(config, "w") as f:
        f.write(
            'listen = "127.0.0.1:0"\nauth_token = "flood_token_0123456789"\n'
            f'[presets.openai]\ntargets = ["http://127.0.0.1:{origin_port}"]\n'
        )
    proc = subprocess.Popen([binary, "--config", config], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "listening" in line:
            return proc, line.split("addr=")[1].split()[0]
    raise RuntimeError("veilgate exited before listening")


def client_session(addr, side, mib, pid):
    """Opens a tunnel with a raw socket, floods (client side) or waits, reads until "done"."""
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /openai/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace"))
    before = memory_kib(pid, "VmRSS")
    started = time.time()
    sock.sendall(frame(0x1, b"go", True))
    if side == "client":
        chunk, count = flood_chunks(mib, True)
        for _ in range(count):
            sock.sendall(chunk)
        sock.sendall(frame(0x1, b"done", True))
    seen = b""
    while b"\x81\x04done" not in seen:
        data = sock.recv(1 << 20)
        if not data:
            raise RuntimeError("the tunnel closed before done")
        seen = seen[-16:] + data
    return before, time.time() - started


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("side", choices=["client", "upstream"])
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "veilgate"))
    parser.add_argument("--mib", type=int, default=1024)
    args = parser.parse_args()

    async def origin(ws):
        if args.side == "client":
            async for message in ws:
                await ws.send(message)
            return
        await ws.recv()
        chunk, count = flood_chunks(args.mib, False)
        for _ in range(count):
            ws.transport.write(chunk)
            while ws.transport.get_write_buffer_size() > 4 << 20:
                await asyncio.sleep(0.001)
        await ws.send("done")
        await asyncio.Future()  # never reads again

    server = await websockets.serve(origin, "127.0.0.1", 0, ping_interval=None, max_queue=None)
    proc, addr = start_veilgate(args.binary, server.sockets[0].getsockname()[1])
    try:
        loop = asyncio.get_running_loop()
        before, took = await loop.run_in_executor(None, client_session, addr, args.side, args.mib, proc.pid)
        peak = memory_kib(proc.pid, "VmHWM")
        print(
            f"{args.side} ping flood, {args.mib} MiB in {took:.1f} s: "
            f"RSS before {before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB"
        )
    finally:
        proc.kill()
        server.close()


asyncio.run(main())
