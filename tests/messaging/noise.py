"""Background load for test_live_delivery.py: one device that publishes 4 KiB messages on a
topic nobody subscribes to, as fast as it can, for N seconds. Usage: noise.py WS_URL TOKEN N"""

import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect


async def main(url, token, seconds):
    async with connect(url, subprotocols=["tether.v1"],
                       additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.recv()  # hello
        frame = json.dumps({"op": "pub", "topic": "noise.nobody", "data": "x" * 4096})
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(64):
                await ws.send(frame)


asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
