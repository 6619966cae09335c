"""Opens a WebSocket through veilgate with the `websockets` library.

usage: websockets_echo.py URL
Prints the echoed message and the negotiated subprotocol.
"""
import asyncio
import sys

import websockets


async def main() -> None:
    async with websockets.connect(sys.argv[1], subprotocols=["realtime"], open_timeout=10) as ws:
        await ws.send("hello from python")
        reply = await asyncio.wait_for(ws.recv(), 10)
        print(f"echo: {reply} | subprotocol: {ws.subprotocol}")


asyncio.run(main())
