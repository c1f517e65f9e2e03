#!/usr/bin/env python3
"""RSS per idle device session on /ws: embedded bus vs NATS (docs/benchmarks.md, Messaging).

Starts one node (2 shards; with a nats-server of its own for `nats`), opens N authenticated
device sessions (distinct device ids, each waits for its `hello`), and reports the node's RSS
growth per session. Usage: scripts/bench-messaging-memory.py embedded|nats N
"""
import asyncio
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "messaging"))
from conftest import SECRET, NatsServer, mint, tether_bin  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


async def measure(url, pid, n):
    before = rss_kib(pid)
    conns = []
    gate = asyncio.Semaphore(200)

    async def one(i):
        async with gate:
            ws = await connect(url, subprotocols=["tether.v1"], compression=None,
                               additional_headers={"Authorization": "Bearer " + mint(f"mem-{i}")})
            assert json.loads(await ws.recv())["op"] == "hello"
            conns.append(ws)

    await asyncio.gather(*(one(i) for i in range(n)))
    await asyncio.sleep(2)
    after = rss_kib(pid)
    for ws in conns:
        ws.transport.abort()
    return before, after, len(conns)


def main():
    mode, n = sys.argv[1], int(sys.argv[2])
    args = [tether_bin(), "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--shards", "2"]
    nats = None
    if mode == "nats":
        nats = NatsServer()
        args += ["--nats", nats.url]
    node = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=dict(os.environ, TETHER_JWT_SECRET=SECRET))
    try:
        for line in node.stderr:
            m = re.search(r"tether serving.*?listen=(\S+)", re.sub(r"\x1b\[[0-9;]*m", "", line))
            if m:
                url = f"ws://{m.group(1)}/ws"
                break
        before, after, got = asyncio.run(measure(url, node.pid, n))
        print(json.dumps({"bus": mode, "sessions": got, "rss_before_kib": before, "rss_after_kib": after,
                          "rss_bytes_per_session": round((after - before) * 1024 / got)}))
    finally:
        node.terminate()
        node.wait()
        if nats:
            nats.stop()


if __name__ == "__main__":
    main()
