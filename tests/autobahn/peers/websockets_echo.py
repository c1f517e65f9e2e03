"""Reference echo server on Python `websockets` (asyncio API), for comparison runs of
scripts/autobahn.sh. Usage: python3 websockets_echo.py PORT [--no-compression]. Settings follow websockets' own
compliance server: messages up to 32 MiB, permessage-deflate negotiated unless
--no-compression (then it refuses compression as tether does, and cases 12-13 are
UNIMPLEMENTED)."""

import asyncio
import sys

from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main(port, compression):
    async with serve(echo, "127.0.0.1", port, max_size=2**25, compression=compression):
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    compression = None if "--no-compression" in sys.argv[2:] else "deflate"
    asyncio.run(main(int(sys.argv[1]), compression))
