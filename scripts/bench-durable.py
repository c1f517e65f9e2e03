#!/usr/bin/env python3
"""Durable delivery benchmarks (docs/benchmarks.md, "Durable delivery"), beside the ephemeral
path in the same run.

  throughput [DEVICES] [MESSAGES] [REPS]
      One node (2 shards, --durable), one nats-server with JetStream (file store), DEVICES
      connected devices (Python websockets, one process). Ephemeral: a backend publishes
      MESSAGES core-NATS pushes round-robin to tether.dev.<device>; time until every device
      received its share. Durable: the same number as JetStream publishes to
      tether.mbox.<device> (500 in flight), devices acknowledge every 10th and the last; time
      until a receipt came for every message (publish -> store -> deliver -> ack -> purge ->
      receipt). Alternates the two, REPS times each; prints median, min, max in msg/s.
  replay [DEVICES] [PER_DEVICE]
      DEVICES devices offline while PER_DEVICE durable messages each are stored; then all
      connect at once (at most 500 handshakes in flight) and each receives its messages and
      acknowledges the last. Baseline in the same run: the same number of devices with nothing
      waiting (connect + hello only), and an ephemeral push of PER_DEVICE to each once connected.

Needs the release binary (TETHER_BIN or $CARGO_TARGET_DIR/release/tether) and nats-server.
"""
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "messaging"))
from conftest import SECRET, Node, mint, nats_server_bin  # noqa: E402
import nats  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tether-bench-js-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [nats_server_bin(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        self.url = f"nats://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def start(devices_window=64):
    server = Server()
    node = Node("--shards", "2", "--nats", server.url, "--node-id", "bench", "--durable",
                "--durable-window", str(devices_window))
    deadline = time.time() + 20
    while node.metric("tether_mailbox_stream_ready") != 1:
        assert time.time() < deadline, "mailbox stream never ready"
        time.sleep(0.1)
    return server, node


class Dev:
    """A device that counts what it receives and acknowledges durable messages."""

    def __init__(self, ws, name, expect_durable_last=None):
        self.ws, self.name = ws, name
        self.ephemeral = 0
        self.durable = 0
        self.task = asyncio.ensure_future(self.run())

    async def run(self):
        unacked = 0
        async for raw in self.ws:
            m = json.loads(raw)
            if m["op"] != "msg":
                continue
            if "seq" in m:
                self.durable += 1
                unacked += 1
                if unacked >= 10 or m["data"].get("last"):
                    await self.ws.send(json.dumps({"op": "ack", "seq": m["seq"]}))
                    unacked = 0
            else:
                self.ephemeral += 1


async def open_devices(url, names, gate=500):
    sem = asyncio.Semaphore(gate)

    async def one(name):
        async with sem:
            ws = await connect(url, subprotocols=["tether.v1"], compression=None, max_queue=None,
                               additional_headers={"Authorization": "Bearer " + mint(name, ttl_s=7200)},
                               open_timeout=60)
            hello = json.loads(await ws.recv())
            assert hello["op"] == "hello", hello
            return ws

    socks = await asyncio.gather(*(one(n) for n in names))
    return socks


async def js_publish_all(nc, subjects_bodies, in_flight=500):
    js = nc.jetstream(timeout=30)
    seqs = []
    for i in range(0, len(subjects_bodies), in_flight):
        chunk = subjects_bodies[i:i + in_flight]
        acks = await asyncio.gather(*(js.publish(s, b) for s, b in chunk))
        seqs += [a.seq for a in acks]
    return seqs


async def wait_until(pred, timeout=300):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await asyncio.sleep(0.005)


def summary(rates):
    return {"median": round(statistics.median(rates)), "min": round(min(rates)), "max": round(max(rates)), "runs": [round(r) for r in rates]}


async def throughput(devices, messages, reps):
    server, node = start()
    try:
        names = [f"thr-{i}" for i in range(devices)]
        socks = await open_devices(node.url(), names)
        devs = [Dev(ws, n) for ws, n in zip(socks, names)]
        nc = await nats.connect(server.url)
        receipts = 0

        async def on_receipt(_msg):
            nonlocal receipts
            receipts += 1

        await nc.subscribe("tether.receipt.>", cb=on_receipt)
        eph, dur = [], []
        per = messages // devices
        for _ in range(reps):
            # Ephemeral: core NATS push.
            base = sum(d.ephemeral for d in devs)
            t0 = time.monotonic()
            for k in range(per):
                for n in names:
                    await nc.publish(f"tether.dev.{n}", b'{"from":"svc:bench","data":{"k":1}}')
            await nc.flush()
            await wait_until(lambda: sum(d.ephemeral for d in devs) - base >= per * devices)
            eph.append(per * devices / (time.monotonic() - t0))
            # Durable: JetStream publish, delivery, ack, receipt.
            base_r = receipts
            bodies = []
            for k in range(per):
                last = k == per - 1
                for n in names:
                    bodies.append((f"tether.mbox.{n}", json.dumps({"from": "svc:bench", "data": {"k": k, "last": last}}).encode()))
            t0 = time.monotonic()
            await js_publish_all(nc, bodies)
            await wait_until(lambda: receipts - base_r >= per * devices)
            dur.append(per * devices / (time.monotonic() - t0))
        await nc.close()
        for ws in socks:
            ws.transport.abort()
        return {"devices": devices, "messages_per_run": per * devices,
                "ephemeral_msgs_per_s": summary(eph), "durable_msgs_per_s": summary(dur)}
    finally:
        node.stop()
        server.stop()


async def replay(devices, per_device):
    server, node = start()
    try:
        nc = await nats.connect(server.url)
        # Baseline 1: connect + hello with nothing waiting.
        names0 = [f"rb-{i}" for i in range(devices)]
        t0 = time.monotonic()
        socks0 = await open_devices(node.url(), names0)
        connect_only_s = time.monotonic() - t0
        devs0 = [Dev(ws, n) for ws, n in zip(socks0, names0)]
        # Baseline 2: ephemeral push of per_device to each connected device.
        t0 = time.monotonic()
        for k in range(per_device):
            for n in names0:
                await nc.publish(f"tether.dev.{n}", b'{"from":"svc:bench","data":{"k":1}}')
        await nc.flush()
        await wait_until(lambda: sum(d.ephemeral for d in devs0) >= devices * per_device)
        eph_s = time.monotonic() - t0
        for ws in socks0:
            ws.transport.abort()
        # Durable: store per_device for each offline device, then all connect at once.
        names = [f"rp-{i}" for i in range(devices)]
        bodies = []
        for k in range(per_device):
            for n in names:
                bodies.append((f"tether.mbox.{n}", json.dumps({"from": "svc:bench", "data": {"k": k, "last": k == per_device - 1}}).encode()))
        t0 = time.monotonic()
        await js_publish_all(nc, bodies)
        store_s = time.monotonic() - t0
        receipts = 0

        async def on_receipt(_msg):
            nonlocal receipts
            receipts += 1

        await nc.subscribe("tether.receipt.>", cb=on_receipt)
        t0 = time.monotonic()
        socks = await open_devices(node.url(), names)
        devs = [Dev(ws, n) for ws, n in zip(socks, names)]
        await wait_until(lambda: sum(d.durable for d in devs) >= devices * per_device)
        replay_s = time.monotonic() - t0
        await wait_until(lambda: receipts >= devices * per_device)
        acked_s = time.monotonic() - t0
        await nc.close()
        for ws in socks:
            ws.transport.abort()
        total = devices * per_device
        return {
            "devices": devices, "per_device": per_device,
            "baseline_connect_hello_s": round(connect_only_s, 2),
            "baseline_ephemeral_push_s": round(eph_s, 2),
            "baseline_ephemeral_msgs_per_s": round(total / eph_s),
            "durable_store_s": round(store_s, 2),
            "durable_store_msgs_per_s": round(total / store_s),
            "replay_connect_to_all_delivered_s": round(replay_s, 2),
            "replay_msgs_per_s": round(total / replay_s),
            "replay_to_all_receipts_s": round(acked_s, 2),
        }
    finally:
        node.stop()
        server.stop()


def main():
    mode = sys.argv[1]
    args = [int(a) for a in sys.argv[2:]]
    if mode == "throughput":
        out = asyncio.run(throughput(*(args or [100, 20000, 3])))
    elif mode == "replay":
        out = asyncio.run(replay(*(args or [10000, 10])))
    else:
        sys.exit(__doc__)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
