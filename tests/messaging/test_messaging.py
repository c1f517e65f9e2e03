"""Device messaging end to end: real tether nodes, a real nats-server, real clients.

Each routing test runs twice (the `cluster` fixture): two nodes joined by NATS, and one node
with two shards on the embedded bus, with the two devices on different nodes / shards.
Backend features (push from NATS, upstream, requests, presence, backend authorisation) exist
only with NATS and run against the two-node cluster.
"""

import asyncio
import json
import time

import nats
import pytest
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from conftest import ALL_TOPICS, SECRET, Device, Node, mint, run, status_of


def test_device_to_device_across_the_route(cluster):
    async def body():
        a, b = await cluster.pair("phone-alice", "tv-livingroom")
        if cluster.mode == "nats":
            assert a.node == "node1" and b.node == "node2"
        else:
            assert a.shard != b.shard
        await a.send(op="send", to="tv-livingroom", data={"key": "volume_up"}, id="m1", ack=True)
        got = await b.recv()
        assert got == {"op": "msg", "from": "phone-alice", "ack_id": got["ack_id"], "data": {"key": "volume_up"}}
        # Delivered means acknowledged by the receiver, not queued to it.
        await a.nothing()
        await b.send(op="ack", ack_id=got["ack_id"])
        assert await a.recv() == {"op": "ack", "id": "m1", "delivered": True}
        # And back, without ack; binary data as base64.
        await b.send(op="send", to="phone-alice", b64="AAECAw==")
        assert await a.recv() == {"op": "msg", "from": "tv-livingroom", "b64": "AAECAw=="}
        await b.nothing()
        await a.close()
        await b.close()

    run(body())


def test_every_session_of_a_device_receives_and_no_other_device(cluster):
    async def body():
        a, b = await cluster.pair("remote", "stb-1")
        b_again = await Device.connect(cluster.a_url, mint("stb-1"))
        other = await Device.connect(cluster.b_url, mint("stb-2"))
        await a.send(op="send", to="stb-1", data=[1, 2, 3])
        for s in (b, b_again):
            assert await s.recv() == {"op": "msg", "from": "remote", "data": [1, 2, 3]}
        await other.nothing()
        await a.nothing()
        for d in (a, b, b_again, other):
            await d.close()

    run(body())


def test_sender_cannot_spoof_its_identity(cluster):
    async def body():
        a, b = await cluster.pair("mallory", "victim")
        await a.send(op="send", to="victim", **{"from": "bank"}, data="trust me")
        got = await b.recv()
        assert got["from"] == "mallory", got
        await a.send(op="pub", topic="alerts", **{"from": "bank"}, data=1)
        await a.nothing()
        await a.close()
        await b.close()

    run(body())


def test_topic_fan_out_follows_claims(cluster):
    async def body():
        sub_claims = {"topics_sub": ["news.*"]}
        pub_claims = {"topics_pub": ["news.sports"], "topics_sub": []}
        pub, s1 = await cluster.pair("editor", "reader-1", a_claims=pub_claims, b_claims=sub_claims)
        s2 = await Device.connect(cluster.a_url, mint("reader-2", **sub_claims))
        s3 = await Device.connect(cluster.b_url, mint("reader-3", **sub_claims))
        for i, s in enumerate((s1, s2)):
            await s.send(op="sub", topic="news.sports", id=f"s{i}")
            assert await s.recv() == {"op": "ack", "id": f"s{i}"}
        await s3.send(op="sub", topic="news.weather", id="w")
        assert await s3.recv() == {"op": "ack", "id": "w"}
        await s3.send(op="sub", topic="sport.all", id="x")
        assert (await s3.recv())["code"] == "forbidden"
        await pub.send(op="pub", topic="news.sports", data={"score": "2-1"}, id="p1")
        assert await pub.recv() == {"op": "ack", "id": "p1"}
        for s in (s1, s2):
            assert await s.recv() == {"op": "msg", "from": "editor", "topic": "news.sports", "data": {"score": "2-1"}}
        await s3.nothing()
        await pub.send(op="pub", topic="news.weather", data=1, id="p2")
        assert (await pub.recv())["code"] == "forbidden"
        await s3.nothing()
        # Unsubscribed: no more deliveries.
        await s1.send(op="unsub", topic="news.sports", id="u")
        assert await s1.recv() == {"op": "ack", "id": "u"}
        await pub.send(op="pub", topic="news.sports", data=2)
        assert (await s2.recv())["data"] == 2
        await s1.nothing()
        for d in (pub, s1, s2, s3):
            await d.close()

    run(body())


def test_errors_have_stable_codes(cluster):
    async def body():
        a = await Device.connect(cluster.a_url, mint("dev-e"))
        cases = [
            ("not json", None, "bad_json"),
            (json.dumps({"op": "teleport", "id": "1"}), "1", "bad_op"),
            (json.dumps({"op": "send", "to": "a.b", "data": 1, "id": "2"}), "2", "bad_field"),
            (json.dumps({"op": "reply", "rid": "999", "data": 1, "id": "3"}), "3", "unknown_request"),
            (json.dumps({"op": "sub", "topic": "x", "id": "4"}), "4", "forbidden"),
        ]
        for text, id_, code in cases:
            await a.ws.send(text)
            got = await a.recv()
            assert got["op"] == "error" and got["code"] == code and got.get("id") == id_, (text, got)
        await a.ws.send(b"\x00\x01")
        assert (await a.recv())["code"] == "binary_unsupported"
        await a.send(op="send", to="nobody-home", data=1, id="5", ack=True)
        assert await a.recv(timeout=5) == {"op": "ack", "id": "5", "delivered": False, "reason": "offline"}
        await a.send(op="ack", ack_id="12345", id="7")
        got = await a.recv()
        assert got["code"] == "unknown_ack" and got["id"] == "7", got
        await a.send(op="ping", id="k")
        assert await a.recv() == {"op": "pong", "id": "k"}
        if cluster.mode == "embedded":
            await a.send(op="up", service="billing", data=1, id="6")
            assert (await a.recv())["code"] == "no_backend"
        await a.close()

    run(body())


def test_missing_invalid_and_expired_tokens_get_401(cluster):
    async def body():
        url = cluster.a_url
        assert await status_of(url, subprotocols=["tether.v1"]) == (401, "token missing")
        bad_sig = mint("dev-x", secret="another-secret-entirely-0123456789")
        for token, body_text in [
            (bad_sig, "token invalid"),
            ("not.a.jwt", "token invalid"),
            (mint("dev-x", ttl_s=-30), "token expired"),
            (mint("bad.device.id"), "token invalid"),
        ]:
            headers = {"Authorization": f"Bearer {token}"}
            got = await status_of(url, subprotocols=["tether.v1"], additional_headers=headers)
            assert got == (401, body_text), (token, got)
            assert (await status_of(url + "?token=" + token))[0] == 401
            assert (await status_of(url, subprotocols=["tether.v1", "tether.token." + token]))[0] == 401
        assert (await status_of(url, subprotocols=["mqtt"], additional_headers={"Authorization": "Bearer " + mint("d")}))[0] == 400
        # The three ways in.
        for via in ("header", "query", "subprotocol"):
            d = await Device.connect(url, mint(f"dev-{via}"), via=via)
            assert d.id == f"dev-{via}"
            await d.close()
        node = cluster.nodes[0]
        assert node.metric("tether_handshakes_total") > 0

    run(body())


def test_interest_is_gone_after_disconnect(cluster):
    async def body():
        a, b = await cluster.pair("leaver-a", "leaver-b")
        await b.send(op="sub", topic="room.7", id="s")
        assert await b.recv() == {"op": "ack", "id": "s"}
        if cluster.nats:
            subjects = cluster.nats.subjects()
            # One wildcard subscription covers tether.dev/req/presence.leaver-b.
            for s in ("tether.*.leaver-b", "tether.topic.room.7"):
                assert s in subjects, (s, subjects)
        await a.close()
        await b.close()
        deadline = time.time() + 5
        while True:
            held = sum(n.metric("tether_bus_subscriptions") for n in cluster.nodes)
            # Each shard connection's own inboxes (receipts, request answers) stay for its lifetime.
            node_own = ("tether.inbox.", "_INBOX.")
            leaked = [s for s in cluster.nats.subjects() if not s.startswith(node_own)] if cluster.nats else []
            if held == 0 and not leaked:
                break
            assert time.time() < deadline, f"interest left after disconnect: gauge {held}, subjects {leaked}"
            await asyncio.sleep(0.05)

    run(body())


# ---- backends (NATS only) ------------------------------------------------------------------


def test_backend_push_reaches_only_the_addressed_device(nats_cluster):
    async def body():
        c = nats_cluster
        target = await Device.connect(c.b_url, mint("stb-7"))
        bystander = await Device.connect(c.a_url, mint("stb-8", **ALL_TOPICS))
        nc = await nats.connect(c.nats.url)
        await nc.publish("tether.dev.stb-7", json.dumps({"from": "svc:epg", "data": {"channel": 5}}).encode())
        assert await target.recv() == {"op": "msg", "from": "svc:epg", "data": {"channel": 5}}
        await bystander.nothing()
        # As a request: answered once the device acknowledged it; offline = no responders.
        pending = asyncio.ensure_future(nc.request("tether.dev.stb-7", b'{"data":1}', timeout=5))
        got = await target.recv()
        assert got["data"] == 1 and got["ack_id"], got
        assert not pending.done()
        await target.send(op="ack", ack_id=got["ack_id"])
        assert json.loads((await pending).data) == {"delivered": 1}
        with pytest.raises(NoRespondersError):
            await nc.request("tether.dev.stb-offline", b'{"data":1}', timeout=5)
        # Topics from a backend reach subscribers only.
        await bystander.send(op="sub", topic="promo.all", id="s")
        assert await bystander.recv() == {"op": "ack", "id": "s"}
        await nc.publish("tether.topic.promo.all", b'{"from":"svc:promo","data":"sale"}')
        assert await bystander.recv() == {"op": "msg", "from": "svc:promo", "topic": "promo.all", "data": "sale"}
        await target.nothing()
        await bystander.close()
        await nc.close()
        await target.close()

    run(body())


def test_upstream_carries_the_server_set_device_id(nats_cluster):
    async def body():
        c = nats_cluster
        nc = await nats.connect(c.nats.url)
        sub = await nc.subscribe("tether.up.billing", queue="billing")
        await nc.flush()
        d = await Device.connect(c.b_url, mint("stb-9"))
        await d.send(op="up", service="billing", **{"from": "someone-else"}, data={"sku": "film-1"}, id="u1")
        assert await d.recv() == {"op": "ack", "id": "u1"}
        msg = await sub.next_msg(timeout=5)
        got = json.loads(msg.data)
        assert got["from"] == "stb-9"
        assert got["data"] == {"sku": "film-1"}
        assert got["node"] == "node2" and got["shard"] == d.shard
        limited = await Device.connect(c.a_url, mint("stb-10", services=["epg"]))
        await limited.send(op="up", service="billing", data=1, id="u2")
        assert (await limited.recv())["code"] == "forbidden"
        await nc.close()
        await d.close()
        await limited.close()

    run(body())


def test_request_reply_round_trip_and_timeout(nats_cluster):
    async def body():
        c = nats_cluster
        d = await Device.connect(c.a_url, mint("stb-11"))
        nc = await nats.connect(c.nats.url)

        async def answer():
            req = await d.recv()
            assert req["op"] == "request" and req["from"] == "svc:diag" and req["data"] == {"q": "battery"}
            await d.send(op="reply", rid=req["rid"], data={"battery": 87}, id="r1")
            assert await d.recv() == {"op": "ack", "id": "r1"}
            return req["rid"]

        answering = asyncio.create_task(answer())
        reply = await nc.request("tether.req.stb-11", json.dumps({"from": "svc:diag", "data": {"q": "battery"}}).encode(), timeout=5)
        assert json.loads(reply.data) == {"from": "stb-11", "data": {"battery": 87}}
        rid = await answering
        # Answered already: a second reply is refused.
        await d.send(op="reply", rid=rid, data=0, id="r2")
        assert (await d.recv())["code"] == "unknown_request"
        # The device stays silent: the backend's timeout applies.
        started = time.monotonic()
        with pytest.raises(NatsTimeout):
            await nc.request("tether.req.stb-11", b'{"data":"ping"}', timeout=0.5)
        assert 0.4 < time.monotonic() - started < 3
        assert (await d.recv())["op"] == "request"
        with pytest.raises(NoRespondersError):
            await nc.request("tether.req.nobody", b"{}", timeout=5)
        # Presence, answered with node and shard.
        p = json.loads((await nc.request("tether.presence.stb-11", b"", timeout=5)).data)
        assert p == {"device": "stb-11", "node": "node1", "shard": d.shard, "sessions": 1}
        await nc.close()
        await d.close()

    run(body())


def test_backend_authorisation_subject():
    async def body():
        from conftest import NatsServer

        server = NatsServer()
        node = Node("--shards", "1", "--nats", server.url, "--auth-subject", "tether.auth", "--auth-timeout", "500ms")
        try:
            # No authoriser at all: 503.
            token = "Bearer " + mint("dev-a")
            got = await status_of(node.url(), subprotocols=["tether.v1"], additional_headers={"Authorization": token})
            assert got == (503, "authorisation unavailable")
            nc = await nats.connect(server.url)
            seen = []

            async def authorise(msg):
                req = json.loads(msg.data)
                seen.append(req)
                if req["device"] == "dev-slow":
                    return
                allow = req["device"] != "dev-banned"
                await msg.respond(json.dumps({"allow": allow, "reason": "banned"}).encode())

            await nc.subscribe("tether.auth", cb=authorise)
            await nc.flush()
            d = await Device.connect(node.url(), mint("dev-a"))
            assert seen[-1]["device"] == "dev-a" and seen[-1]["claims"]["sub"] == "dev-a"
            await d.close()
            got = await status_of(node.url(), additional_headers={"Authorization": "Bearer " + mint("dev-banned")})
            assert got == (403, "denied: banned")
            started = time.monotonic()
            got = await status_of(node.url(), additional_headers={"Authorization": "Bearer " + mint("dev-slow")})
            assert got == (503, "authorisation unavailable")
            assert time.monotonic() - started < 3
            await nc.close()
        finally:
            node.stop()
            server.stop()

    run(body())


def test_insecure_mode_is_explicit_and_loud():
    async def body():
        node = Node("--shards", "1", "--insecure-no-auth", secret=None)
        try:
            assert "insecure" in node.log().lower()
            d = await Device.connect(node.url("device=open-1"), "ignored", via="none")
            assert d.id == "open-1"
            await d.close()
            assert (await status_of(node.url()))[0] == 400
        finally:
            node.stop()

    run(body())


def test_without_auth_configuration_there_is_no_device_endpoint():
    """Authentication is on by default: with no secret, key or --insecure-no-auth the node
    serves no /ws at all (404, logged); asking for NATS without a secret refuses to start."""
    import os
    import subprocess

    from conftest import tether_bin

    node = Node("--shards", "1", secret=None)
    try:
        assert run(status_of(node.url(), additional_headers={"Authorization": "Bearer " + mint("d")}))[0] == 404
        assert "/ws is off" in node.log()
    finally:
        node.stop()
    env = {k: v for k, v in os.environ.items() if k != "TETHER_JWT_SECRET"}
    out = subprocess.run(
        [tether_bin(), "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--nats", "nats://127.0.0.1:1"],
        env=env, capture_output=True, text=True, timeout=20,
    )
    assert out.returncode != 0
    assert "--jwt-secret" in out.stderr and "--insecure-no-auth" in out.stderr


def test_tether_token_mints_a_working_token(cluster):
    import subprocess

    from conftest import tether_bin

    out = subprocess.run(
        [tether_bin(), "token", "--sub", "cli-dev", "--ttl", "1h", "--topics-sub", "news.*", "--jwt-secret", SECRET],
        capture_output=True, text=True, timeout=20, check=True,
    )
    token = out.stdout.strip()

    async def body():
        d = await Device.connect(cluster.a_url, token)
        assert d.id == "cli-dev"
        await d.send(op="sub", topic="news.x", id="s")
        assert await d.recv() == {"op": "ack", "id": "s"}
        await d.close()

    run(body())

