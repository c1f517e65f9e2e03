#!/usr/bin/env python3
"""Opens N idle upgraded WebSocket connections to HOST:PORT/PATH and holds them.

Used by scripts/measure-idle-memory.sh. With TLS_CA=FILE set it connects with TLS (wss://),
trusting FILE and checking the name "localhost". Prints "ready <n>" on stdout once every connection is
upgraded (or "failed <n> <first error>"), then holds them until the process is terminated. One process
holds at most what its open-files limit allows (raised to the hard limit here), so large
counts are spread over several processes by the caller. Source addresses rotate over
127.0.0.1..127.0.0.N (SRC_ADDRS) so no single source runs out of ephemeral ports.
"""
import asyncio
import base64
import os
import resource
import socket
import ssl
import sys

TLS_CA = os.environ.get("TLS_CA")
TLS_CTX = ssl.create_default_context(cafile=TLS_CA) if TLS_CA else None


async def one(host, port, path, src, sem, errors):
    async with sem:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # IP_BIND_ADDRESS_NO_PORT (24): pick the port at connect time, per destination.
            sock.setsockopt(socket.IPPROTO_IP, 24, 1)
            sock.bind((src, 0))
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            if TLS_CTX is None:
                reader, writer = await asyncio.open_connection(sock=sock)
            else:
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=TLS_CTX, server_hostname="localhost"
                )
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    f"Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(head.split(b"\r\n")[0].decode())
            return writer
        except Exception as e:  # noqa: BLE001 - reported to the caller
            errors.append(repr(e))
            return None


async def main():
    n, host, port, path = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    src_addrs = int(os.environ.get("SRC_ADDRS", "8"))
    first_src = int(os.environ.get("SRC_FIRST", "1"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sem = asyncio.Semaphore(256)
    errors = []
    tasks = [
        one(host, port, path, f"127.0.0.{first_src + i % src_addrs}", sem, errors)
        for i in range(n)
    ]
    writers = [w for w in await asyncio.gather(*tasks) if w is not None]
    if errors:
        print(f"failed {len(errors)} {errors[0]}", flush=True)
    else:
        print(f"ready {len(writers)}", flush=True)
    # Hold the connections (answering nothing) until SIGTERM ends the process.
    await asyncio.Event().wait()


asyncio.run(main())
