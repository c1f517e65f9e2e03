"""Independent WebSocket peers for tether-loadgen's tests (Python `websockets`).

Usage: peer_server.py MODE  -- prints the bound port on stdout, then serves until killed.
With PEER_LOG=FILE, the remote address of every WebSocket connection is appended to FILE.
  echo       echo every message back
  status503  refuse every upgrade with HTTP 503
  close1001  accept, then close with code 1001 after 200 ms
  silent     accept TCP, read, never answer (upgrade timeouts)
"""
import asyncio
import http
import os
import sys

import websockets

PEER_LOG = os.environ.get("PEER_LOG")


def log_peer(ws):
    if PEER_LOG:
        with open(PEER_LOG, "a") as f:
            f.write(ws.remote_address[0] + "\n")


async def echo(ws):
    log_peer(ws)
    async for m in ws:
        await ws.send(m)


async def close1001(ws):
    await asyncio.sleep(0.2)
    await ws.close(1001, "going away")


def refuse(connection, request):
    return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")


async def silent_conn(reader, writer):
    try:
        while await reader.read(4096):
            pass
    finally:
        writer.close()


async def main(mode):
    if mode == "silent":
        server = await asyncio.start_server(silent_conn, "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
    else:
        handler = {"echo": echo, "status503": echo, "close1001": close1001}[mode]
        kwargs = {"process_request": refuse} if mode == "status503" else {}
        server = await websockets.serve(
            handler, "127.0.0.1", 0, max_size=None, ping_interval=None, backlog=4096, **kwargs
        )
        port = list(server.sockets)[0].getsockname()[1]
    print(port, flush=True)
    await asyncio.Future()


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "echo"))
