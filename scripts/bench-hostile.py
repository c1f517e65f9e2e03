#!/usr/bin/env python3
"""Hostile-client benchmarks of issue 12 (docs/benchmarks.md, "Hostile clients"): the same run
against a baseline binary and the current one.

  parked N FRAME_BYTES   N clients upgrade on /echo, each sends a binary frame header announcing
                         FRAME_BYTES and all of its payload but the last byte, and stops; the
                         node's RSS before and after, and how many were closed (1013).
  fanout N               N sessions of one device (one token) that never read, then three 1 MB
                         `send`s to that device; node RSS and kernel TCP memory before and after.
  admin SECONDS          a client trickling an admin request (one byte every 1.5 s) and ten idle
                         admin connections; /healthz latency every 100 ms meanwhile.

Usage: scripts/bench-hostile.py BINARY[,BINARY...] parked|fanout|admin ARGS...
Each binary runs in turn (2 shards); one line of JSON per binary.
"""
import asyncio
import json
import os
import re
import resource
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

SECRET = "bench-hostile-secret-0123456789"
UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def tcp_mem_kib():
    """Kernel memory of all TCP sockets (pages in /proc/net/sockstat)."""
    for line in open("/proc/net/sockstat"):
        if line.startswith("TCP:"):
            f = line.split()
            return int(f[f.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    return 0


def start(binary, extra):
    args = [binary, "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--shards", "2"]
    node = subprocess.Popen(args + extra, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TETHER_LOG="info"))
    for line in node.stderr:
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        m = re.search(r"tether serving.*?listen=(\S+).*?admin=(\S+)", line)
        if m:
            listen, admin = m.group(1), m.group(2)
            break
    else:
        raise SystemExit(f"{binary} did not start")
    threading.Thread(target=lambda: [None for _ in node.stderr], daemon=True).start()
    lh, lp = listen.rsplit(":", 1)
    ah, ap = admin.rsplit(":", 1)
    return node, int(lp), int(ap)


def stop(node):
    node.kill()
    node.wait()


def frame_header(length, opcode=0x2):
    """A masked (key 0) final frame header, shortest length encoding."""
    if length <= 125:
        return bytes([0x80 | opcode, 0x80 | length]) + b"\0\0\0\0"
    if length <= 0xFFFF:
        return bytes([0x80 | opcode, 0x80 | 126]) + struct.pack(">H", length) + b"\0\0\0\0"
    return bytes([0x80 | opcode, 0x80 | 127]) + struct.pack(">Q", length) + b"\0\0\0\0"


async def upgrade(port, path, extra=""):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(UPGRADE.format(path=path, extra=extra).encode())
    head = await r.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(head.split(b"\r\n")[0].decode())
    return r, w


async def parked(port, pid, n, frame):
    conns = []
    gate = asyncio.Semaphore(256)

    async def one():
        async with gate:
            conns.append(await upgrade(port, "/echo"))

    await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(1)
    before = rss_kib(pid)
    body = frame_header(frame) + b"p" * (frame - 1)

    async def park(rw):
        async with gate:
            r, w = rw
            w.write(body)
            try:
                await asyncio.wait_for(w.drain(), 30)
            except Exception:
                pass

    t0 = time.monotonic()
    await asyncio.gather(*(park(c) for c in conns))
    await asyncio.sleep(3)
    after = rss_kib(pid)
    closed = 0
    for r, w in conns:
        try:
            data = await asyncio.wait_for(r.read(64), 0.001)
            if len(data) >= 4 and data[0] == 0x88 and struct.unpack(">H", data[2:4])[0] == 1013:
                closed += 1
        except Exception:
            pass
        w.transport.abort()
    return {"parked": n, "frame_bytes": frame, "rss_before_kib": before, "rss_after_kib": after,
            "rss_growth_per_conn_kib": round((after - before) / n, 1), "closed_1013": closed,
            "send_s": round(time.monotonic() - t0, 1)}


def token(binary, device):
    out = subprocess.run([binary, "token", "--sub", device, "--jwt-secret", SECRET],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


async def fanout(binary, port, pid, n):
    tv = token(binary, "tv")
    gate = asyncio.Semaphore(128)
    sessions = []

    async def one():
        async with gate:
            r, w = await upgrade(port, f"/ws?token={tv}")
            sessions.append((r, w))
            # Make the socket's receive buffer small and never read: a stalled device.

    await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(2)
    before, kbefore = rss_kib(pid), tcp_mem_kib()
    r, w = await upgrade(port, f"/ws?token={token(binary, 'phone')}")
    await r.readuntil(b"}")  # hello
    data = "x" * 1_000_000
    for i in range(3):
        msg = json.dumps({"op": "send", "to": "tv", "data": data, "id": f"m{i}"}).encode()
        w.write(frame_header(len(msg), 0x1) + msg)
        await w.drain()
        await asyncio.sleep(1)
    await asyncio.sleep(2)
    after, kafter = rss_kib(pid), tcp_mem_kib()
    live = 0
    for sr, sw in sessions:
        if not sr.at_eof() and not sw.transport.is_closing():
            live += 1
        sw.transport.abort()
    w.transport.abort()
    return {"sessions": n, "rss_before_kib": before, "rss_after_kib": after,
            "rss_growth_kib": after - before, "tcp_mem_before_kib": kbefore,
            "tcp_mem_after_kib": kafter, "tcp_mem_growth_kib": kafter - kbefore}


def admin_latency(admin_port, seconds):
    stop_flag = threading.Event()

    def trickle():
        req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        while not stop_flag.is_set():
            s = socket.create_connection(("127.0.0.1", admin_port))
            try:
                for b in req:
                    if stop_flag.is_set():
                        break
                    s.send(bytes([b]))
                    time.sleep(1.5)
            except OSError:
                pass  # the server cut it off: start over
            s.close()

    threading.Thread(target=trickle, daemon=True).start()
    idle = [socket.create_connection(("127.0.0.1", admin_port)) for _ in range(10)]
    lat, unanswered = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            s = socket.create_connection(("127.0.0.1", admin_port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            resp = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                resp += chunk
            s.close()
            if resp.startswith(b"HTTP/1.1 200"):
                lat.append((time.monotonic() - t0) * 1000)
            else:
                unanswered += 1
        except OSError:
            unanswered += 1
        time.sleep(0.1)
    stop_flag.set()
    for s in idle:
        s.close()
    out = {"requests": len(lat) + unanswered, "answered": len(lat), "unanswered_5s": unanswered}
    if lat:
        lat.sort()
        out.update(median_ms=round(statistics.median(lat), 2),
                   p99_ms=round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2),
                   max_ms=round(lat[-1], 2))
    return out


def main():
    binaries, scenario, rest = sys.argv[1].split(","), sys.argv[2], sys.argv[3:]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for binary in binaries:
        extra = ["--echo"] if scenario == "parked" else []
        if scenario == "fanout":
            extra = ["--jwt-secret", SECRET]
        node, port, admin = start(binary, extra)
        try:
            if scenario == "parked":
                res = asyncio.run(parked(port, node.pid, int(rest[0]), int(rest[1])))
            elif scenario == "fanout":
                res = asyncio.run(fanout(binary, port, node.pid, int(rest[0])))
            else:
                res = admin_latency(admin, float(rest[0]))
        finally:
            stop(node)
        print(json.dumps({"binary": binary, "scenario": scenario, **res}), flush=True)
        time.sleep(2)


if __name__ == "__main__":
    main()
