"""Durable delivery on JetStream end to end (issue 11, must-show 4, 5 and 7, with the
device-to-device half of 7), and the browser example's acknowledgements and reconnects.

Real nats-servers with JetStream and a file store (`-js -sd`), real tether nodes started with
`--durable`, devices on Python `websockets`, backends on `nats-py` publishing to
`tether.mbox.<device>` as ordinary JetStream publishes. Every wait has a deadline.
"""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import nats
import pytest

from conftest import ALL_TOPICS, Device, Node, TIMEOUT_S, http_get, mint, nats_server_bin, run

STREAM = "TETHER_MBOX"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JsServer:
    """A nats-server with JetStream and a file store; restartable on the same ports and store,
    optionally one of a cluster (routes to the others)."""

    def __init__(self, store_dir, name="s1", cluster_port=None, routes=(), wait=True):
        self.store_dir = store_dir
        self.name = name
        self.port, self.monitor_port = free_port(), free_port()
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.proc = None
        self.conf = os.path.join(store_dir, f"{name}.conf")
        os.makedirs(store_dir, exist_ok=True)
        self.start(wait)

    def write_conf(self):
        lines = [
            f'server_name: "{self.name}"',
            "listen: 127.0.0.1:%d" % self.port,
            "http: 127.0.0.1:%d" % self.monitor_port,
            # sync_interval always: a SIGKILLed server loses nothing it acknowledged.
            'jetstream { store_dir: "%s", sync_interval: always }' % os.path.join(self.store_dir, self.name),
        ]
        if self.cluster_port:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines.append(
                'cluster { name: "tether", listen: 127.0.0.1:%d, routes: [%s] }' % (self.cluster_port, routes)
            )
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, wait=True):
        self.write_conf()
        self.proc = subprocess.Popen(
            [nats_server_bin(), "-c", self.conf], stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.store_dir, f"{self.name}.log"), "a")
        )
        if wait:
            self.wait_up()

    def wait_up(self, path="/healthz"):
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"nats-server {self.name} exited")
            try:
                http_get(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"nats-server {self.name} did not come up")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self):
        """A clean stop (SIGTERM): the server writes its stream state before it exits."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pytest.fail(f"nats-server {self.name} did not stop on SIGTERM")

    def connz(self):
        return json.loads(http_get(f"http://127.0.0.1:{self.monitor_port}/connz?limit=1000"))

    def client_names(self):
        try:
            return [c.get("name", "") for c in self.connz().get("connections") or []]
        except OSError:
            return []

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"


def wait_for(pred, what, timeout=TIMEOUT_S * 2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def durable_node(urls, node_id, *extra, listen="127.0.0.1:0"):
    node = Node("--shards", "2", "--nats", ",".join(urls), "--node-id", node_id, "--durable", *extra, listen=listen)
    wait_for(lambda: node.metric("tether_mailbox_stream_ready") == 1, f"{node_id}: mailbox stream ready")
    return node


async def push(js, device, data, key=None, ttl=None):
    """A backend's durable push; returns the publish acknowledgement's seq."""
    headers = {}
    subject = f"tether.mbox.{device}"
    if key:
        subject += "." + key
        headers["Nats-Rollup"] = "sub"
    if ttl:
        headers["Nats-TTL"] = ttl
    ack = await js.publish(subject, json.dumps({"from": "svc:test", "data": data}).encode(), headers=headers or None)
    assert ack.stream == STREAM
    return ack.seq


async def recv_durable(dev, n, timeout=TIMEOUT_S):
    """The next `n` frames, which must all be durable msgs; returns [(seq, data)]."""
    got = []
    for _ in range(n):
        m = await dev.recv(timeout)
        assert m["op"] == "msg" and "seq" in m, m
        got.append((m["seq"], m["data"]))
    return got


async def receipts_until(sub, want, timeout=TIMEOUT_S):
    seen = []
    deadline = time.time() + timeout
    while set(want) - set(seen):
        left = deadline - time.time()
        assert left > 0, f"receipts missing: {sorted(set(want) - set(seen))}"
        msg = await sub.next_msg(timeout=left)
        body = json.loads(msg.data)
        seen.append(body["seq"])
    return seen


@pytest.fixture
def store():
    d = tempfile.mkdtemp(prefix="tether-js-")
    yield d
    if not os.environ.get("TETHER_KEEP_STORE"):
        shutil.rmtree(d, ignore_errors=True)


def test_offline_device_gets_unexpired_uncollapsed_in_order_then_the_other_half_on_the_other_node(store):
    server = JsServer(store)
    # A window above 72 so that the whole replay arrives before the first ack.
    a = durable_node([server.url], "node1", "--durable-window", "100")
    b = durable_node([server.url], "node2", "--durable-window", "100")

    async def body():
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        receipts = await nc.subscribe("tether.receipt.stb-7")
        expected = {}  # seq -> data
        latest = {}  # collapse key -> (seq, data)
        # 100 durable messages while the device is offline: plain ones, two collapse keys
        # (only the latest of each survives) and short TTLs that expire before it connects.
        for i in range(100):
            if i % 10 == 3:
                seq = await push(js, "stb-7", {"i": i, "badge": i}, key="badge")
                latest["badge"] = (seq, {"i": i, "badge": i})
            elif i % 10 == 6:
                seq = await push(js, "stb-7", {"i": i, "score": i}, key="score")
                latest["score"] = (seq, {"i": i, "score": i})
            elif i % 10 == 8:
                await push(js, "stb-7", {"i": i, "expires": True}, ttl="1s")
            elif i % 10 == 9:
                seq = await push(js, "stb-7", {"i": i, "ttl": "1h"}, ttl="1h")
                expected[seq] = {"i": i, "ttl": "1h"}
            else:
                seq = await push(js, "stb-7", {"i": i})
                expected[seq] = {"i": i}
        # Another device's message is not this one's.
        await push(js, "stb-8", {"other": True})
        for seq, data in latest.values():
            expected[seq] = data
        want = sorted(expected.items())
        assert len(want) == 72
        # Wait (with a deadline) until the stream itself dropped the expired ones.
        deadline = time.time() + 10
        while True:
            info = await js.stream_info(STREAM)
            if info.state.messages == len(want) + 1:
                break
            assert time.time() < deadline, f"stream holds {info.state.messages}"
            await asyncio.sleep(0.1)

        d = await Device.connect(a.url(), mint("stb-7"))
        got = await recv_durable(d, len(want))
        assert got == want, "exactly the unexpired, uncollapsed ones, in stream order, with the publish acks' seqs"
        await d.nothing()
        # An ack beyond what was delivered is refused; the half ack is confirmed.
        await d.send(op="ack", seq=want[-1][0] + 1000, id="bad")
        err = await d.recv()
        assert err["op"] == "error" and err["code"] == "bad_field" and err["id"] == "bad"
        # 0, or at or below an earlier ack: a no-op, answered at once.
        await d.send(op="ack", seq=0, id="zero")
        assert await d.recv() == {"op": "ack", "id": "zero"}
        half = want[35][0]
        await d.send(op="ack", seq=half, id="a1")
        assert await d.recv() == {"op": "ack", "id": "a1"}
        first_half = [s for s, _ in want[:36]]
        assert sorted(await receipts_until(receipts, first_half)) == first_half
        await d.close()

        # The other node: exactly the other half, then live ones after it, no gap.
        d = await Device.connect(b.url(), mint("stb-7"))
        assert d.node == "node2"
        got = await recv_durable(d, len(want) - 36)
        assert got == want[36:]
        live = [await push(js, "stb-7", {"live": n}) for n in range(3)]
        got = await recv_durable(d, 3)
        assert [s for s, _ in got] == live and live[0] > want[-1][0]
        await d.nothing()
        await d.send(op="ack", seq=live[-1], id="a2")
        assert await d.recv() == {"op": "ack", "id": "a2"}
        rest = [s for s, _ in want[36:]] + live
        assert sorted(await receipts_until(receipts, rest)) == rest
        await d.close()

        # Everything acknowledged: a third session gets nothing; the stream kept only stb-8's.
        d = await Device.connect(a.url(), mint("stb-7"))
        await d.nothing()
        await d.close()
        info = await js.stream_info(STREAM)
        assert info.state.messages == 1
        # last_seq: a device that already processed some says so and skips them.
        s1 = await push(js, "stb-7", {"n": 1})
        s2 = await push(js, "stb-7", {"n": 2})
        d = await Device.connect(b.url("last_seq=%d" % s1), mint("stb-7"))
        assert await recv_durable(d, 1) == [(s2, {"n": 2})]
        assert sorted(await receipts_until(receipts, [s1])) == [s1]
        await d.close()
        # What a device presented with last_seq it may acknowledge, even when this session
        # never received it; one seq beyond is refused.
        s3 = await push(js, "stb-7", {"n": 3})
        d = await Device.connect(a.url("last_seq=%d" % (s3 + 5)), mint("stb-7"))
        # s2 was received unacknowledged in the session before: skipped now, with s3 (the acks
        # below come after the session's read got there).
        assert sorted(await receipts_until(receipts, [s2, s3])) == [s2, s3]
        await d.send(op="ack", seq=s3 + 6, id="beyond")
        err = await d.recv()
        assert err["code"] == "bad_field" and err["id"] == "beyond", err
        await d.send(op="ack", seq=s3 + 5, id="presented")
        assert await d.recv() == {"op": "ack", "id": "presented"}
        await d.nothing()
        await d.close()
        await nc.close()

    try:
        run(body(), timeout=90)
        assert a.metric("tether_mailbox_remove_failures_total") == 0
    finally:
        a.stop()
        b.stop()
        server.kill()


def test_durable_upstream_is_acknowledged_once_stored(store):
    server = JsServer(store)
    node = durable_node([server.url], "node1")

    async def body():
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="ORDERS", subjects=["tether.up.orders"])
        plain = await nc.subscribe("tether.up.chat")
        d = await Device.connect(node.url(), mint("phone-1"))
        await d.send(op="up", service="orders", data={"sku": 1}, id="u1")
        ack = await d.recv()
        assert ack["op"] == "ack" and ack["id"] == "u1" and ack["seq"] == 1, ack
        stored = await js.get_msg("ORDERS", 1)
        assert json.loads(stored.data)["data"] == {"sku": 1}
        # Not captured by any stream: as before, acknowledged when handed to NATS.
        await d.send(op="up", service="chat", data="hi", id="u2")
        assert await d.recv() == {"op": "ack", "id": "u2"}
        assert json.loads((await plain.next_msg(timeout=TIMEOUT_S)).data)["data"] == "hi"
        await d.close()
        await nc.close()

    try:
        run(body())
    finally:
        node.stop()
        server.kill()


def test_embedded_bus_answers_durable_operations_with_a_clear_error():
    node = Node("--shards", "1")
    try:

        async def body():
            d = await Device.connect(node.url("last_seq=5"), mint("tv-1"))
            err = await d.recv()
            assert err["op"] == "error" and err["code"] == "durable_unavailable"
            await d.send(op="ack", seq=3, id="k")
            err = await d.recv()
            assert err["code"] == "durable_unavailable" and err["id"] == "k"
            await d.close()

        run(body())
    finally:
        node.stop()
    refused = subprocess.run(
        [node.proc.args[0], "serve", "--listen", "127.0.0.1:0", "--durable"],
        env=dict(os.environ, TETHER_JWT_SECRET="x" * 32),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode != 0 and "give nats too" in refused.stderr


async def drain(dev, count, ack_every=10):
    """Receives `count` durable msgs, acknowledging every `ack_every` (window permitting)."""
    got = []
    while len(got) < count:
        m = await dev.recv()
        assert m["op"] in ("msg", "ack"), m
        if m["op"] == "msg":
            got.append(m["seq"])
            if len(got) % ack_every == 0 or len(got) == count:
                await dev.send(op="ack", seq=m["seq"])
    return got


def test_node_killed_mid_replay_and_nats_restarted_nothing_acked_again_nothing_unacked_lost(store):
    server = JsServer(store)
    a = durable_node([server.url], "node1", "--durable-window", "16")

    async def before_kill():
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        seqs = [await push(js, "stb-9", {"n": n}) for n in range(300)]
        await nc.close()
        d = await Device.connect(a.url(), mint("stb-9"))
        received, confirmed, sent = [], 0, 0
        # Receive, and every 10 acknowledge with an id (answered once the stream applied it),
        # until 120 are confirmed; the replay is still running when the node dies.
        while confirmed < seqs[119]:
            m = await d.recv()
            if m["op"] == "msg":
                received.append(m["seq"])
                if len(received) % 10 == 0:
                    await d.send(op="ack", seq=m["seq"], id=str(m["seq"]))
                    sent = m["seq"]
            else:
                assert m["op"] == "ack", m
                confirmed = max(confirmed, int(m["id"]))
        assert received == seqs[: len(received)]
        return seqs, confirmed, sent

    try:
        seqs, confirmed, sent = run(before_kill(), timeout=60)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        # The nats-server restarts (a clean restart: after a SIGKILL of a single server the
        # last purges may be undone, see docs/operations.md; that is redelivery, not loss).
        server.terminate()
        server.start()
        b = durable_node([server.url], "node2")
    except BaseException:
        a.stop()
        server.kill()
        raise

    async def after():
        d = await Device.connect(b.url(), mint("stb-9"))
        # The first redelivered seq tells where the stream stands: right after an ack the
        # device sent, at the latest after the last one it saw confirmed.
        first = await d.recv()
        assert first["op"] == "msg", first
        start = first["seq"]
        assert seqs.index(start) in [seqs.index(s) + 1 for s in seqs if confirmed <= s <= sent], (start, confirmed, sent)
        want = [s for s in seqs if s >= start]
        got = [start] + await drain(d, len(want) - 1)
        await d.nothing()
        await d.close()
        return want, got

    try:
        want, got = run(after(), timeout=60)
        assert got == want, "nothing acknowledged again, nothing unacknowledged lost, in order"
    finally:
        b.stop()
        server.kill()


class DeviceLoop:
    """A device that receives durable messages and acknowledges them (with an id, so each ack
    is confirmed by the stream) as they come, until stopped."""

    def __init__(self, dev):
        self.dev = dev
        self.seqs = []
        self.confirmed = 0
        self.errors = []
        self.task = asyncio.ensure_future(self.run())

    async def run(self):
        unacked = 0
        while True:
            m = json.loads(await self.dev.ws.recv())
            if m["op"] == "msg":
                self.seqs.append(m["seq"])
                unacked += 1
                if unacked >= 5:
                    await self.dev.send(op="ack", seq=m["seq"], id=str(m["seq"]))
                    unacked = 0
            elif m["op"] == "ack":
                self.confirmed = max(self.confirmed, int(m["id"]))
            else:
                self.errors.append(m)

    async def finish(self, want_last):
        """Acknowledges everything up to `want_last` once received; stops the loop."""
        deadline = time.time() + TIMEOUT_S * 3
        while want_last not in self.seqs:
            assert time.time() < deadline, f"{self.dev.id}: {want_last} never arrived"
            await asyncio.sleep(0.05)
        await self.dev.send(op="ack", seq=want_last, id=str(want_last))
        while self.confirmed < want_last:
            assert time.time() < deadline, f"{self.dev.id}: ack {want_last} never confirmed"
            await asyncio.sleep(0.05)
        self.task.cancel()


class PeerLoop:
    """A device that sends `send`s with `ack` to a device on the other node while it receives
    and acknowledges (by `ack_id`) what its peer sends it. Records when each answer and each
    arrival happened (monotonic clock of this process), to tell a late arrival from an early one."""

    def __init__(self, dev, to):
        self.dev = dev
        self.to = to
        self.sent = 0
        self.answers = {}  # id -> (time, delivered, reason)
        self.refused = {}  # id -> time: error bus_unavailable, nothing published
        self.arrived = {}  # id (of the peer's send) -> time
        self.errors = []
        self.reader = asyncio.ensure_future(self.read())

    async def read(self):
        while True:
            m = json.loads(await self.dev.ws.recv())
            now = time.monotonic()
            if m["op"] == "msg" and "ack_id" in m:
                self.arrived.setdefault(m["data"]["i"], now)
                await self.dev.send(op="ack", ack_id=m["ack_id"])
            elif m["op"] == "ack" and "delivered" in m:
                self.answers[m["id"]] = (now, m["delivered"], m.get("reason"))
            elif m["op"] == "error" and m.get("code") == "bus_unavailable":
                self.refused[m["id"]] = now
            elif not (m["op"] == "error" and m.get("code") == "unknown_ack"):
                # unknown_ack: an ack that reached the node after the message's deadline
                # (its sender was answered delivered:false); anything else is a defect.
                self.errors.append(m)

    def outstanding(self):
        return self.sent - len(self.answers) - len(self.refused)

    async def send_until(self, stop):
        """One `send` with `ack` every 10 ms (at most 50 unanswered) until `stop` is set."""
        while not stop.is_set():
            if self.outstanding() < 50:
                i = f"{self.dev.id}-{self.sent}"
                await self.dev.send(op="send", to=self.to, data={"i": i}, id=i, ack=True)
                self.sent += 1
            await asyncio.sleep(0.01)

    async def all_answered(self):
        deadline = time.monotonic() + TIMEOUT_S * 3
        while self.outstanding() > 0:
            assert time.monotonic() < deadline, f"{self.dev.id}: {self.outstanding()} sends unanswered"
            await asyncio.sleep(0.05)


def check_peer_outcomes(sender, receiver):
    """Every `delivered: true` arrived; nothing answered `delivered: false` arrived after the
    answer; nothing refused with `bus_unavailable` arrived at all. Returns the counts."""
    delivered = [i for i, (_, ok, _) in sender.answers.items() if ok]
    missing = [i for i in delivered if i not in receiver.arrived]
    late = [i for i, (t, ok, _) in sender.answers.items() if not ok and i in receiver.arrived and receiver.arrived[i] > t]
    refused_arrived = [i for i in sender.refused if i in receiver.arrived]
    assert not missing, f"{sender.dev.id}: delivered:true but never arrived: {missing[:5]}"
    assert not late, f"{sender.dev.id}: answered delivered:false, arrived afterwards: {late[:5]}"
    assert not refused_arrived, f"{sender.dev.id}: refused (bus_unavailable) but arrived: {refused_arrived[:5]}"
    assert not sender.errors, sender.errors
    reasons = sorted({r for _, ok, r in sender.answers.values() if not ok})
    # offline: the receiver's node was between NATS servers (docs/protocol.md, section 4).
    assert set(reasons) <= {"offline", "timeout", "closed"}, reasons
    return len(delivered), len(sender.answers) - len(delivered), len(sender.refused), reasons


def node_connections(servers, node_id):
    """The servers holding node_id's connections, one entry per connection (each shard has
    its own, named `tether node <node> shard <i>`)."""
    prefix = f"tether node {node_id} shard "
    return [s for s in servers for name in s.client_names() if name.startswith(prefix)]


def test_cluster_failover_keeps_devices_connected_and_loses_nothing_acknowledged(store):
    cluster_ports = [free_port() for _ in range(3)]
    servers = [
        JsServer(store, name=f"s{i}", cluster_port=cluster_ports[i],
                 routes=[p for j, p in enumerate(cluster_ports) if j != i], wait=False)
        for i in range(3)
    ]
    urls = [s.url for s in servers]
    nodes = []
    try:
        for s in servers:
            s.wait_up("/healthz?js-enabled-only=true")
        a = durable_node(urls, "node1", "--durable-replicas", "3")
        nodes.append(a)
        wait_for(lambda: len(node_connections(servers, "node1")) == 2, "node1's two shards connected")
        # The victim holds a connection of node1 and none of node2 (every connection has every
        # URL and starts at a random one).
        for attempt in range(10):
            b = durable_node(urls, f"node2", "--durable-replicas", "3")
            wait_for(lambda: len(node_connections(servers, "node2")) == 2, "node2's two shards connected")
            node2_servers = node_connections(servers, "node2")
            victims = [s for s in node_connections(servers, "node1") if s not in node2_servers]
            if victims:
                break
            b.stop()
        else:
            pytest.fail("node2 always held a connection on each of node1's servers")
        nodes.append(b)
        victim = victims[0]
        survivors = [s for s in servers if s is not victim]
        # The shards of node1 whose connection is on the victim: they reconnect, and only their
        # sessions are announced again (docs/protocol.md, section 8).
        prefix = "tether node node1 shard "
        victim_shards = {int(n[len(prefix):]) for n in victim.client_names() if n.startswith(prefix)}
        assert victim_shards, victim.client_names()

        async def body():
            nc = await nats.connect([s.url for s in survivors], max_reconnect_attempts=-1)
            js = nc.jetstream(timeout=2)
            events = await nc.subscribe("tether.event.>")
            d1 = await Device.connect(a.url(), mint("stb-c1"))
            d2 = await Device.connect(b.url(), mint("stb-c2"))
            loops = {"stb-c1": DeviceLoop(d1), "stb-c2": DeviceLoop(d2)}
            # Device-to-device sends with ack across the two nodes, both ways, all along.
            p1 = await Device.connect(a.url(), mint("ph-c1"))
            p2 = await Device.connect(b.url(), mint("ph-c2"))
            # Idle sessions on node1 until its every shard holds one (the kernel spreads
            # connections over the shards' listeners).
            idle = []
            while {d.shard for d in (d1, p1, *idle)} != {0, 1}:
                assert len(idle) < 64, "node1's connections all went to one shard"
                idle.append(await Device.connect(a.url(), mint(f"idle-c{len(idle)}")))
            peers = [PeerLoop(p1, "ph-c2"), PeerLoop(p2, "ph-c1")]
            stop_sending = asyncio.Event()
            senders = [asyncio.ensure_future(p.send_until(stop_sending)) for p in peers]
            published = {"stb-c1": [], "stb-c2": []}
            killed_at = None
            for i in range(200):
                device = "stb-c1" if i % 2 == 0 else "stb-c2"
                if i == 60:
                    victim.kill()
                    killed_at = time.monotonic()
                # A backend retries until JetStream acknowledges; the message id makes a retry
                # of a publish that was stored return the same seq.
                deadline = time.time() + 30
                while True:
                    try:
                        ack = await js.publish(
                            f"tether.mbox.{device}",
                            json.dumps({"data": i}).encode(),
                            headers={"Nats-Msg-Id": f"c-{i}"},
                        )
                        break
                    except Exception:
                        assert time.time() < deadline, "JetStream never came back"
                        await asyncio.sleep(0.2)
                if ack.seq not in published[device]:
                    published[device].append(ack.seq)
                await asyncio.sleep(0.01)
            # node1 is back on a surviving server; the sends go on until each way has had
            # 20 more acknowledged after that.
            deadline = time.monotonic() + TIMEOUT_S * 3
            while a.metric("tether_bus_reconnects_total") < 1 or a.metric("tether_bus_connected") != 1:
                assert time.monotonic() < deadline, "node1 did not reconnect"
                await asyncio.sleep(0.05)
            back_at = time.monotonic()
            while any(sum(1 for t, ok, _ in p.answers.values() if ok and t > back_at) < 20 for p in peers):
                assert time.monotonic() < deadline, "device-to-device sends not acknowledged after the failover"
                await asyncio.sleep(0.05)
            stop_sending.set()
            await asyncio.gather(*senders)
            for p in peers:
                await p.all_answered()
                before = sum(1 for t, ok, _ in p.answers.values() if ok and t < killed_at)
                assert before > 0, f"{p.dev.id}: nothing acknowledged before the kill"
            for device, loop in loops.items():
                await loop.finish(published[device][-1])
                # At least once, in order: every stored message arrived, duplicates only by seq.
                assert sorted(set(loop.seqs)) == sorted(published[device]), device
                assert loop.seqs == sorted(loop.seqs), f"{device}: out of order"
                assert not loop.errors, loop.errors
            # A message answered delivered:false would arrive within its deadline (the ack
            # timeout, 2 s, at most when it is answered) plus the transit: watch until 3 s after
            # the last such answer (usually long past: they come during the failover).
            last_false = max((t for p in peers for t, ok, _ in p.answers.values() if not ok), default=0)
            last_refused = max((t for p in peers for t in p.refused.values()), default=0)
            await asyncio.sleep(max(0.0, max(last_false, last_refused) + 3 - time.monotonic()))
            for p in peers:
                p.reader.cancel()
            for sender, receiver in ((peers[0], peers[1]), (peers[1], peers[0])):
                ok, not_ok, refused, reasons = check_peer_outcomes(sender, receiver)
                print(f"{sender.dev.id} -> {receiver.dev.id}: {sender.sent} sent, {ok} delivered, "
                      f"{not_ok} not delivered {reasons}, {refused} refused (bus_unavailable)")
            # Every device stayed connected the whole time (a closed socket ends the loops), and
            # node1 announced its sessions again after its reconnect (docs/protocol.md, section 8).
            for d in (d1, d2, p1, p2, *idle):
                assert d.ws.state.name == "OPEN", d.id
            resynced, disconnects = set(), []
            while True:
                try:
                    e = json.loads((await events.next_msg(timeout=0.5)).data)
                except nats.errors.TimeoutError:
                    break
                if e["event"] == "connect" and e["reason"] == "resync":
                    resynced.add((e["node"], e["device"]))
                if e["event"] == "disconnect":
                    disconnects.append(e)
            node1_sessions = (d1, p1, *idle)
            expected = {("node1", d.id) for d in node1_sessions if d.shard in victim_shards}
            assert expected, (victim_shards, [(d.id, d.shard) for d in node1_sessions])
            assert {r for r in resynced if r[0] == "node1"} == expected, (resynced, victim_shards)
            assert not disconnects, disconnects
            for d in (d1, d2, p1, p2, *idle):
                await d.close()
            # Nothing acknowledged comes back, on either node.
            for node, device in ((b, "stb-c1"), (a, "stb-c2")):
                d = await Device.connect(node.url(), mint(device))
                await d.nothing(1.0)
                await d.close()
            await nc.close()

        run(body(), timeout=120)
        # node1's shard(s) on the victim failed over to a surviving server.
        assert a.metric("tether_bus_reconnects_total") >= 1
        assert len(node_connections(survivors, "node1")) == 2
    finally:
        for n in nodes:
            n.stop()
        for s in servers:
            s.kill()


def test_backend_example_durable_push_waits_for_the_receipt(store):
    server = JsServer(store)
    node = durable_node([server.url], "node1")
    backend = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples", "backend.py")

    async def body():
        # Pushed while the device is offline; the example waits for the device's receipt.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, backend, "--nats", server.url, "--name", "demo", "--timeout", "20",
            "durable", "tv-ex", '{"badge": 3}', "--key", "badge",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        stored = json.loads(await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S))
        assert stored["stored"] == "tv-ex" and stored["stream"] == STREAM
        d = await Device.connect(node.url(), mint("tv-ex"))
        m = await d.recv()
        assert m == {"op": "msg", "from": "svc:demo", "data": {"badge": 3}, "seq": stored["seq"]}
        await d.send(op="ack", seq=m["seq"])
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
        assert proc.returncode == 0, err
        result = json.loads(out)
        assert result["seq"] == stored["seq"]
        assert result["receipt"]["device"] == "tv-ex" and result["receipt"]["seq"] == stored["seq"]
        await d.close()

    try:
        run(body())
    finally:
        node.stop()
        server.kill()


class BrowserPage:
    """examples/browser/index.html in headless Chromium, driven line by line
    (tests/messaging/browser_durable.mjs)."""

    @classmethod
    async def open(cls, ws_url, device):
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        page = "file://" + os.path.join(root, "examples", "browser", "index.html")
        self = cls()
        self.proc = await asyncio.create_subprocess_exec(
            "node", os.path.join(root, "tests", "messaging", "browser_durable.mjs"), page, ws_url, mint(device), device,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        return self

    async def ask(self, **cmd):
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line:
            err = await self.proc.stderr.read()
            raise AssertionError(f"browser driver exited: {err.decode()[-2000:]}")
        got = json.loads(line)
        if got.get("ok") is False:
            state = await self.ask(dump=True)
            raise AssertionError(f"{cmd}: {got['error']}; page: {state}")
        return got

    async def close(self):
        if self.proc.returncode is None:
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def test_browser_page_acknowledges_and_reconnects_by_itself(store):
    """examples/browser against a real node: a durable push while the page is connected is
    acknowledged (a receipt), a backend's push made as a request is acknowledged by `ack_id`;
    the node restarts and the page comes back by itself with `?last_seq=`, receives what was
    published meanwhile and acknowledges it; nothing is acknowledged twice."""
    server = JsServer(store)
    listen = f"127.0.0.1:{free_port()}"
    nodes = [durable_node([server.url], "node1", "--drain-time", "500ms", listen=listen)]

    async def body():
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        receipts = await nc.subscribe("tether.receipt.tv-page")
        page = await BrowserPage.open(nodes[0].url(), "tv-page")
        try:
            await page.ask(ready=True)
            s1 = await push(js, "tv-page", {"n": 1})
            await page.ask(wait=f"(durable #{s1})")
            assert await receipts_until(receipts, [s1]) == [s1]
            # An ephemeral push with a receipt: answered once the page acknowledged its ack_id.
            reply = await nc.request("tether.dev.tv-page", json.dumps({"from": "svc:test", "data": "eph"}).encode(), timeout=TIMEOUT_S)
            assert json.loads(reply.data) == {"delivered": 1}

            # The node restarts (drain: close 1001); meanwhile the backend pushes two more.
            nodes[0].stop()
            s2 = await push(js, "tv-page", {"n": 2})
            s3 = await push(js, "tv-page", {"n": 3})
            nodes.append(durable_node([server.url], "node1", "--drain-time", "500ms", listen=listen))
            await page.ask(wait=f"(durable #{s3})")
            await page.ask(ready=True)
            assert sorted(await receipts_until(receipts, [s2, s3])) == [s2, s3]
            # Nothing acknowledged twice: no further receipt, and the page saw each seq once.
            try:
                extra = await receipts.next_msg(timeout=1.5)
                raise AssertionError(f"a second receipt: {extra.data}")
            except nats.errors.TimeoutError:
                pass
            state = await page.ask(dump=True)
            for seq in (s1, s2, s3):
                assert state["log"].count(f"(durable #{seq})") == 1, state["log"]
            assert "svc:test: \"eph\"" in state["log"], state["log"]
            assert state["lastSeq"] == str(s3)
            assert len(state["sockets"]) >= 2, state["sockets"]
            assert "last_seq" not in state["sockets"][0]
            # Every reconnect attempt presented what the page had processed.
            assert all(u.endswith(f"/ws?last_seq={s1}") for u in state["sockets"][1:]), state["sockets"]
            assert nodes[-1].metric("tether_device_durable_deliveries_total") == 2
        finally:
            await page.close()
            await nc.close()

    try:
        run(body(), timeout=120)
    finally:
        for n in nodes:
            n.stop()
        server.kill()
