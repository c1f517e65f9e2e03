"""Live delivery guarantees (issue 11, part A), end to end against real tether nodes, a real
nats-server, Python `websockets` devices and a `nats-py` backend:

- routable means routable: a push right after `hello`, a topic publish right after the `sub`
  ack, 10,000 times each over two nodes, none lost;
- a `send` with `ack` is `delivered: true` only once the receiver acknowledged it, and a
  receiver closed as a slow consumer leaves every other message answered `delivered: false`,
  none of which arrives later;
- a NATS outage during a stream of sends with `ack`: nothing answered `delivered: false`
  arrives afterwards;
- a topic named like the device arrives once;
- connection events and node heartbeats, and a SIGKILLed node detected within 3 s;
- a shard whose own NATS connection is cut re-announces its sessions, the other shard does not;
- a drained node publishes every session's `disconnect` (400 sessions, 2 shards) before it exits.
"""

import asyncio
import base64
import collections
import json
import os
import signal
import time

import nats
import pytest

from conftest import ALL_TOPICS, TIMEOUT_S, Device, NatsServer, Node, mint, run

ROUNDS = 10_000
WORKERS = 100
NOISE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "noise.py")


def start_noise(url, token, seconds):
    """A separate process that keeps a node's NATS connection busy (device `pub`s to a topic
    nobody holds), so that the server has bytes to parse ahead of every SUB: a barrier that
    only waited for the SUB to leave the node (the old `flush`) loses that race."""
    import subprocess, sys
    return subprocess.Popen([sys.executable, NOISE, url, token, str(seconds)])


async def raw_connect(host, port, token):
    """A bare RFC 6455 client handshake (the `websockets` library costs too much CPU per
    connection for 10,000 of them in one test)."""
    r, w = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    w.write((f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
             f"Sec-WebSocket-Protocol: tether.v1\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), TIMEOUT_S)
    assert head.startswith(b"HTTP/1.1 101"), head
    return r, w


async def read_text(r):
    """The next text message from the server (unmasked, unfragmented: what tether sends)."""
    while True:
        b0, b1 = await r.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await r.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await r.readexactly(8), "big")
        payload = await r.readexactly(n)
        if b0 & 0x0F == 1:
            return payload.decode()


def test_push_after_hello_and_publish_after_sub_ack_are_never_lost(nats_cluster):
    c = nats_cluster
    urls = [n.url() for n in c.nodes]

    async def body():
        nc = await nats.connect(c.nats.url)
        lost_hello, lost_sub = [], []
        noise = [start_noise(u, mint(f"noise{i}", **ALL_TOPICS), 120) for i, u in enumerate(urls)]

        async def hello_worker(w):
            host, port = c.nodes[w % 2].listen.rsplit(":", 1)
            for i in range(ROUNDS // WORKERS):
                device = f"h{w}-{i}"
                r, wr = await raw_connect(host, int(port), mint(device))
                hello = json.loads(await read_text(r))
                assert hello["op"] == "hello" and hello["device"] == device, hello
                # The instant hello arrives, a backend pushes.
                await nc.publish(f"tether.dev.{device}", b'{"from":"svc:t","data":1}')
                try:
                    got = json.loads(await asyncio.wait_for(read_text(r), 5))
                    assert got == {"op": "msg", "from": "svc:t", "data": 1}, got
                except asyncio.TimeoutError:
                    lost_hello.append(device)
                wr.transport.abort()

        async def sub_worker(w):
            d = await Device.connect(urls[w % 2], mint(f"s{w}", **ALL_TOPICS))
            for i in range(ROUNDS // WORKERS):
                topic = f"t{w}-{i}"
                await d.send(op="sub", topic=topic, id="s")
                assert await d.recv() == {"op": "ack", "id": "s"}
                # The instant the ack arrives, a backend publishes on the topic.
                await nc.publish(f"tether.topic.{topic}", b'{"data":2}')
                try:
                    got = await d.recv(timeout=5)
                    assert got == {"op": "msg", "from": "backend", "topic": topic, "data": 2}, got
                except asyncio.TimeoutError:
                    lost_sub.append(topic)
                await d.send(op="unsub", topic=topic)
            await d.close()

        started = time.monotonic()
        await asyncio.gather(*(hello_worker(w) for w in range(WORKERS)))
        hello_s = time.monotonic() - started
        started = time.monotonic()
        await asyncio.gather(*(sub_worker(w) for w in range(WORKERS)))
        sub_s = time.monotonic() - started
        for p in noise:
            p.kill()
            p.wait()
        await nc.close()
        print(f"hello: {ROUNDS} in {hello_s:.1f}s, {len(lost_hello)} lost; "
              f"sub: {ROUNDS} in {sub_s:.1f}s, {len(lost_sub)} lost")
        assert not lost_hello, f"{len(lost_hello)} of {ROUNDS} pushes right after hello lost: {lost_hello[:5]}"
        assert not lost_sub, f"{len(lost_sub)} of {ROUNDS} publishes right after the sub ack lost: {lost_sub[:5]}"

    run(body(), timeout=180)


# ---- receipts between devices --------------------------------------------------------------

PAD = "p" * 16_384  # 1,000 of these are far more than socket buffers hold


async def slow_receiver(url, token):
    """A device whose socket buffers are small, so that when it stops reading the node's
    outbound queue fills quickly."""
    import socket
    from websockets.asyncio.client import connect

    host, port = url.split("/")[2].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect((host, int(port)))
    ws = await connect(url, sock=sock, subprotocols=["tether.v1"], max_queue=4,
                       additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=TIMEOUT_S)
    hello = json.loads(await ws.recv())
    assert hello["op"] == "hello"
    return Device(ws, hello)


@pytest.mark.parametrize("mode", ["nats", "embedded"])
def test_receiver_closed_as_slow_consumer_halfway(mode):
    from conftest import Cluster
    from websockets.exceptions import ConnectionClosed

    # The ack timeout is 5 s rather than the default 2 s: the receiver (Python, on a machine
    # that may be loaded) must answer each of its first 500 messages within it, and an ack that
    # comes later makes the message delivered:false (correct, but not what this test is about).
    c = Cluster(mode, "--outbound-bytes-max", "262144", "--ack-timeout", "5s")
    total, acked_wanted = 1_000, 500

    async def body():
        a = await Device.connect(c.a_url, mint("sc-sender"))
        for _ in range(40):
            b = await slow_receiver(c.b_url, mint("sc-receiver"))
            if mode == "nats" or b.shard != a.shard:
                break
            await b.close()
        outcomes = {}  # id -> (delivered, reason)
        received, acked = [], []
        # While the receiver keeps up, at most 4 messages (64 KiB) are on their way to it, far
        # below its 256 KiB outbound limit; from the second half on, 200 (3.2 MiB, still below the
        # 256 sends a connection may have waiting), which a receiver that stopped reading
        # cannot absorb.
        window = asyncio.Semaphore(4)
        stopped_reading = asyncio.Event()

        async def sender():
            for i in range(total):
                if i == acked_wanted:
                    await stopped_reading.wait()
                    for _ in range(196):
                        window.release()
                await window.acquire()
                await a.send(op="send", to="sc-receiver", data={"i": i, "pad": PAD}, id=str(i), ack=True)

        async def sender_answers():
            while len(outcomes) < total:
                got = await a.recv(timeout=30)
                assert got["op"] == "ack", got
                outcomes[got["id"]] = (got["delivered"], got.get("reason"))
                window.release()

        late_acks = []

        def message(got):
            """The msg, or None for the answer to an ack that reached the node after its
            message's deadline (unknown_ack: that message was answered delivered:false)."""
            if got["op"] == "error" and got["code"] == "unknown_ack":
                late_acks.append(got)
                return None
            assert got["op"] == "msg", got
            return got

        async def receiver():
            while len(acked) < acked_wanted:
                got = message(json.loads(await b.ws.recv()))
                if got is None:
                    continue
                received.append(got["data"]["i"])
                await b.send(op="ack", ack_id=got["ack_id"])
                acked.append(got["data"]["i"])
            # Stop reading: the node closes this session as a slow consumer. What the client
            # library had already buffered is still read (received, never acknowledged).
            stopped_reading.set()
            await asyncio.sleep(1)
            try:
                while True:
                    got = message(json.loads(await b.ws.recv()))
                    if got is not None:
                        received.append(got["data"]["i"])
            except ConnectionClosed:
                pass
            return b.ws.close_code

        close_code, _, _ = await asyncio.gather(receiver(), sender(), sender_answers())
        assert close_code == 1008, close_code
        delivered = sorted(int(i) for i, (ok, _) in outcomes.items() if ok)
        # Delivered means acknowledged: an ack the client wrote after the node had started
        # closing it never reached the node, and its message is answered delivered:false.
        assert set(delivered) <= set(acked) <= set(received)
        assert acked_wanted - 50 <= len(delivered) <= acked_wanted, len(delivered)
        reasons = {r for ok, r in outcomes.values() if not ok}
        assert reasons <= {"closed", "timeout", "offline"}, reasons
        assert len(outcomes) == total
        # None of those answered delivered:false arrives later, not even to a new session.
        b2 = await Device.connect(c.b_url, mint("sc-receiver"))
        await b2.nothing(timeout=2.5)
        await a.close()
        await b2.close()
        print(f"{mode}: {len(delivered)} delivered, {total - len(delivered)} not delivered "
              f"({sorted(reasons)}), {len(received)} received by the closed receiver, "
              f"{len(late_acks)} acks after the deadline")

    try:
        run(body(), timeout=150)
    finally:
        c.stop()


# ---- NATS outage ---------------------------------------------------------------------------


def test_nats_outage_nothing_answered_not_delivered_arrives_later(nats_cluster):
    c = nats_cluster

    async def body():
        a, b = await c.pair("out-sender", "out-receiver")
        answered = {}  # id -> (monotonic time, delivered)
        refused = set()  # not sent at all (the node knew NATS was down)
        arrived = {}  # id -> monotonic time
        sent = 0
        done_sending = asyncio.Event()

        async def sender():
            nonlocal sent
            loop = asyncio.get_running_loop()
            end = loop.time() + 14
            while loop.time() < end:
                if sent - len(answered) - len(refused) < 200:
                    await a.send(op="send", to="out-receiver", data={"i": sent}, id=str(sent), ack=True)
                    sent += 1
                await asyncio.sleep(0.005)
            done_sending.set()

        async def answers():
            deadline = time.monotonic() + 60
            while not done_sending.is_set() or len(answered) + len(refused) < sent:
                assert time.monotonic() < deadline, f"{sent - len(answered) - len(refused)} sends unanswered"
                try:
                    got = await a.recv(timeout=0.5)
                except asyncio.TimeoutError:
                    continue
                if got["op"] == "ack":
                    answered[got["id"]] = (time.monotonic(), got["delivered"])
                else:
                    assert got["code"] == "bus_unavailable", got
                    refused.add(got["id"])

        async def receiver():
            while True:
                got = await b.recv(timeout=60)
                arrived[str(got["data"]["i"])] = time.monotonic()
                await b.send(op="ack", ack_id=got["ack_id"])

        async def outage():
            await asyncio.sleep(2)
            c.nats.stop()
            await asyncio.sleep(5)
            c.nats.restart()

        recv_task = asyncio.ensure_future(receiver())
        await asyncio.gather(sender(), answers(), outage())
        # Let every node reconnect and flush what its NATS client buffered.
        deadline = time.monotonic() + 20
        while any(n.metric("tether_bus_connected") != 1 for n in c.nodes):
            assert time.monotonic() < deadline, "a node did not reconnect"
            await asyncio.sleep(0.1)
        await asyncio.sleep(3)
        recv_task.cancel()
        late = [i for i, (t, ok) in answered.items() if not ok and i in arrived and arrived[i] > t]
        never_sent = [i for i in refused if i in arrived]
        missing = [i for i, (_, ok) in answered.items() if ok and i not in arrived]
        not_delivered = sum(1 for _, ok in answered.values() if not ok)
        print(f"outage: {sent} sent, {sum(ok for _, ok in answered.values())} delivered, "
              f"{not_delivered} not delivered, {len(refused)} refused while disconnected, "
              f"{len(arrived)} arrived; expired on arrival: "
              f"{sum(n.metric('tether_device_deliveries_expired_total') for n in c.nodes):.0f}")
        assert not late, f"{len(late)} answered delivered:false arrived afterwards: {late[:5]}"
        assert not never_sent, f"refused sends arrived: {never_sent[:5]}"
        assert not missing, f"delivered:true but never arrived: {missing[:5]}"
        assert not_delivered + len(refused) > 0, "the outage did not touch the stream"
        await a.close()
        await b.close()

    try:
        run(body(), timeout=150)
    except BaseException:
        for n in c.nodes:
            print(n.log()[-6000:])
        raise


# ---- duplicates ----------------------------------------------------------------------------


def test_a_topic_named_like_the_device_arrives_once(nats_cluster):
    c = nats_cluster

    async def body():
        d = await Device.connect(c.b_url, mint("dup-7", **ALL_TOPICS))
        await d.send(op="sub", topic="dup-7", id="s")
        assert await d.recv() == {"op": "ack", "id": "s"}
        nc = await nats.connect(c.nats.url)
        await nc.publish("tether.topic.dup-7", b'{"data":1}')
        await nc.publish("tether.dev.dup-7", b'{"data":2}')
        await nc.flush()
        got = [await d.recv(), await d.recv()]
        assert sorted(json.dumps(g, sort_keys=True) for g in got) == sorted(
            json.dumps(g, sort_keys=True) for g in [
                {"op": "msg", "from": "backend", "topic": "dup-7", "data": 1},
                {"op": "msg", "from": "backend", "data": 2},
            ]
        )
        await d.nothing()
        await nc.close()
        await d.close()

    run(body())


# ---- connection events and heartbeats ------------------------------------------------------


def load_backend_example():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "examples", "backend.py")
    spec = importlib.util.spec_from_file_location("backend_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_connection_events_heartbeats_and_a_killed_node():
    from conftest import Cluster

    c = Cluster("nats", "--drain-time", "500ms")
    Presence = load_backend_example().Presence

    async def body():
        loop = asyncio.get_running_loop()
        nc = await nats.connect(c.nats.url)
        events, beats = [], []
        presence = Presence()

        async def on_event(msg):
            e = json.loads(msg.data)
            assert msg.subject == f"tether.event.{e['device']}"
            events.append(e)
            presence.on_event(e)

        async def on_beat(msg):
            h = json.loads(msg.data)
            assert msg.subject == f"tether.node.{h['node']}"
            beats.append(h)
            presence.on_heartbeat(h, loop.time())

        await nc.subscribe("tether.event.>", cb=on_event)
        await nc.subscribe("tether.node.>", cb=on_beat)
        await nc.flush()

        async def until(what, pred, timeout=5):
            end = loop.time() + timeout
            while not pred():
                assert loop.time() < end, f"timed out waiting for {what}: events={events[-5:]} beats={beats[-3:]}"
                await asyncio.sleep(0.02)

        await until("heartbeats from both nodes", lambda: {b["node"] for b in beats} == {"node1", "node2"})
        stays = await Device.connect(c.a_url, mint("ev-stays"))
        leaves = await Device.connect(c.a_url, mint("ev-leaves"))
        doomed = [await Device.connect(c.b_url, mint(f"ev-doomed-{i}")) for i in range(3)]
        await until("connect events", lambda: len(events) >= 5)
        first = next(e for e in events if e["device"] == "ev-stays")
        assert first["event"] == "connect" and first["reason"] == "hello"
        assert first["node"] == "node1" and first["shard"] == stays.shard
        assert isinstance(first["at"], int) and abs(first["at"] / 1000 - time.time()) < 5
        assert first["node_started_at"] <= first["at"]
        await leaves.close()
        await until("a disconnect event", lambda: any(e["event"] == "disconnect" for e in events))
        gone = next(e for e in events if e["event"] == "disconnect")
        left = next(e for e in events if e["device"] == "ev-leaves")
        assert gone["device"] == "ev-leaves" and gone["session"] == left["session"]
        assert gone["code"] == 1000 and gone["reason"] == "normal"
        await until("sessions in a heartbeat", lambda: any(
            b["node"] == "node2" and b["sessions"] == 3 for b in beats))
        node2 = [b for b in beats if b["node"] == "node2"]
        assert [b["seq"] for b in node2] == list(range(node2[0]["seq"], node2[0]["seq"] + len(node2)))
        assert node2[-1]["interval_ms"] == 1000 and node2[-1]["dead_after_ms"] == 2500
        assert presence.online() == ["ev-doomed-0", "ev-doomed-1", "ev-doomed-2", "ev-stays"]

        # node2 dies without a word.
        c.nodes[1].proc.send_signal(signal.SIGKILL)
        killed_at = loop.time()
        detected_at = None
        while detected_at is None:
            if "node2" in presence.expire(loop.time()):
                detected_at = loop.time()
            assert loop.time() - killed_at < 10, "node2 never declared dead"
            await asyncio.sleep(0.05)
        print(f"killed node detected after {detected_at - killed_at:.2f}s")
        assert detected_at - killed_at <= 3.0
        assert presence.online() == ["ev-stays"]
        assert not any(e["event"] == "disconnect" and e["node"] == "node2" for e in events)
        # node1 stops normally (SIGTERM, drain): its device's disconnect reaches the backend.
        c.nodes[0].proc.send_signal(signal.SIGTERM)
        await until("the drained device's disconnect", lambda: presence.online() == [], timeout=10)
        bye = [e for e in events if e["device"] == "ev-stays" and e["event"] == "disconnect"]
        assert len(bye) == 1 and bye[0]["code"] == 1001 and bye[0]["reason"] == "going_away", bye
        for d in doomed:
            await d.ws.close()
        await nc.close()

    try:
        run(body())
    finally:
        c.stop()


async def event_listener(url):
    """A backend subscribed to every connection event: its NATS connection and the list the
    events are appended to as they arrive."""
    nc = await nats.connect(url)
    events = []

    async def on_event(msg):
        events.append(json.loads(msg.data))

    await nc.subscribe("tether.event.>", cb=on_event)
    await nc.flush()
    return nc, events


class CuttingProxy:
    """A TCP proxy in front of a nats-server that can cut one named client connection (the
    name from the client's `CONNECT`), leaving the others up: each shard of a node has its own
    connection, named `tether node <node> shard <i>`."""

    def __init__(self, upstream_port):
        import socket
        import threading

        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.named = []  # (name, client socket, upstream socket), live connections
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def _accept(self):
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(client, upstream, b""), daemon=True).start()

    def _pump(self, src, dst, first_line):
        """Copies src to dst; on the client side, reads the `CONNECT` line's name first."""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if first_line is not None and b"\r\n" not in first_line:
                    first_line += data
                    if b"\r\n" in first_line:
                        line = first_line.split(b"\r\n", 1)[0].decode()
                        if line.startswith("CONNECT "):
                            name = json.loads(line[len("CONNECT "):]).get("name", "")
                            with self.lock:
                                self.named.append((name, src, dst))
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(2)
            except OSError:
                pass

    def cut(self, name_suffix):
        """Cuts the live connection whose name ends with `name_suffix`; returns its name."""
        with self.lock:
            found = [c for c in self.named if c[0].endswith(name_suffix)]
            assert len(found) == 1, [c[0] for c in self.named]
            self.named.remove(found[0])
        name, client, upstream = found[0]
        for s in (client, upstream):
            try:
                s.shutdown(2)
            except OSError:
                pass  # the pumps saw the first shutdown and closed the other side already
        return name

    def close(self):
        self.listener.close()


def test_a_shard_whose_connection_is_cut_resyncs_only_its_own_sessions():
    """docs/protocol.md section 8: after a shard's own NATS connection logs in again, the node
    re-announces (`connect`, reason `resync`) every session of that shard, and only those: the
    other shard's connection stayed up and lost nothing."""
    server = NatsServer()
    proxy = CuttingProxy(server.port)
    node = Node("--shards", "2", "--nats", proxy.url)

    async def body():
        loop = asyncio.get_running_loop()
        nc, events = await event_listener(server.url)

        async def until(what, pred, timeout=TIMEOUT_S):
            end = loop.time() + timeout
            while not pred():
                assert loop.time() < end, f"timed out waiting for {what}: events={events[-5:]}"
                await asyncio.sleep(0.02)

        # Devices on both shards (the kernel spreads connections over the shards' listeners).
        devices = []
        for i in range(64):
            devices.append(await Device.connect(node.url(), mint(f"cut-{i}")))
            if len(devices) >= 4 and {d.shard for d in devices} == {0, 1}:
                break
        on = {s: {d.id for d in devices if d.shard == s} for s in (0, 1)}
        assert on[0] and on[1], on
        await until("every hello's connect event", lambda: {
            e["device"] for e in events if e["reason"] == "hello"} == {d.id for d in devices})

        name = proxy.cut(" shard 1")
        cut_at = loop.time()
        await until("shard 1's reconnect", lambda: node.metric("tether_bus_reconnects_total") >= 1
                    and node.metric("tether_bus_connected") == 1)
        resynced = lambda: {e["device"] for e in events if e["reason"] == "resync"}
        await until("shard 1's sessions re-announced", lambda: resynced() >= on[1])
        # The hub looks at its shard's connection every 100 ms: shard 0 would have answered by
        # now; give it 1 s more to be sure.
        await asyncio.sleep(1.0)
        assert resynced() == on[1], (name, resynced(), on)
        again = [e for e in events if e["reason"] == "resync"]
        assert all(e["node"] == devices[0].node and e["shard"] == 1 for e in again), again
        assert not any(e["event"] == "disconnect" for e in events), events
        for d in devices:
            assert d.ws.state.name == "OPEN", d.id
        print(f"{name} cut; {len(on[1])} sessions resynced after {loop.time() - cut_at:.2f}s, "
              f"{len(on[0])} on shard 0 not")
        for d in devices:
            await d.close()
        await nc.close()

    try:
        run(body())
    finally:
        node.stop()
        proxy.close()
        server.stop()


def test_a_drained_node_publishes_every_sessions_disconnect_before_it_exits():
    """docs/protocol.md section 8: a node that stops normally (SIGTERM, drain) closes its
    sessions first and publishes what it queued before it disconnects, so a backend gets a
    `disconnect` (1001, `going_away`) for every session, from every shard's connection."""
    sessions = 400
    server = NatsServer()
    node = Node("--shards", "2", "--nats", server.url, "--drain-time", "500ms")

    async def body():
        loop = asyncio.get_running_loop()
        nc, events = await event_listener(server.url)
        host, port = node.listen.rsplit(":", 1)
        held = []
        for i in range(sessions):
            r, w = await raw_connect(host, int(port), mint(f"drain-{i}"))
            assert json.loads(await asyncio.wait_for(read_text(r), TIMEOUT_S))["op"] == "hello"
            held.append((r, w))

        async def until(what, pred, timeout=TIMEOUT_S):
            end = loop.time() + timeout
            while not pred():
                assert loop.time() < end, \
                    f"timed out waiting for {what}: {len(events)} events " \
                    f"{collections.Counter((e['event'], e['shard']) for e in events)}; node log:\n{node.log()[-3000:]}"
                await asyncio.sleep(0.02)

        connects = lambda: [e for e in events if e["event"] == "connect"]
        await until("every connect event", lambda: len(connects()) == sessions)
        assert {e["shard"] for e in connects()} == {0, 1}
        node.proc.send_signal(signal.SIGTERM)
        # The node is gone before the backend looks: what it published is all there is.
        await loop.run_in_executor(None, node.proc.wait, TIMEOUT_S)
        assert node.proc.returncode == 0, node.log()
        bye = lambda: [e for e in events if e["event"] == "disconnect"]
        await until("every session's disconnect", lambda: len(bye()) == sessions)
        assert {e["device"] for e in bye()} == {f"drain-{i}" for i in range(sessions)}
        assert all(e["code"] == 1001 and e["reason"] == "going_away" for e in bye()), bye()[:3]
        assert {e["shard"] for e in bye()} == {0, 1}
        for _, w in held:
            w.close()
        await nc.close()

    try:
        run(body())
    finally:
        node.stop()
        server.stop()
