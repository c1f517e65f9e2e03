"""The examples, exercised: examples/backend.py against a running two-node cluster, and the
browser demo page (examples/browser) in headless Chromium."""

import asyncio
import json
import os
import subprocess
import sys

from conftest import ALL_TOPICS, ROOT, Device, mint, run

BACKEND = os.path.join(ROOT, "examples", "backend.py")


def backend(cluster, *args, timeout=20):
    return subprocess.run(
        [sys.executable, BACKEND, "--nats", cluster.nats.url, "--name", "demo", *args],
        capture_output=True, text=True, timeout=timeout,
    )


async def backend_async(cluster, *args):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, BACKEND, "--nats", cluster.nats.url, "--name", "demo", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    return proc


def test_backend_example(nats_cluster):
    c = nats_cluster

    async def body():
        tv = await Device.connect(c.b_url, mint("tv-demo", **ALL_TOPICS))
        phone = await Device.connect(c.a_url, mint("phone-demo"))
        # push: delivered to the device, confirmed once the device acknowledged it.
        pusher = await backend_async(c, "push", "tv-demo", '{"channel": 5}')
        got = await tv.recv()
        assert got == {"op": "msg", "from": "svc:demo", "ack_id": got["ack_id"], "data": {"channel": 5}}
        await tv.send(op="ack", ack_id=got["ack_id"])
        out, err = await asyncio.wait_for(pusher.communicate(), 10)
        assert pusher.returncode == 0, err
        assert json.loads(out) == {"pushed": "tv-demo", "delivered": 1}
        await phone.nothing()
        out = await asyncio.to_thread(backend, c, "push", "tv-nobody", "1")
        assert out.returncode == 1 and "offline" in out.stderr
        # topic
        await tv.send(op="sub", topic="epg.updates", id="s")
        assert await tv.recv() == {"op": "ack", "id": "s"}
        out = await asyncio.to_thread(backend, c, "topic", "epg.updates", '{"rev": 2}')
        assert out.returncode == 0, out.stderr
        assert await tv.recv() == {"op": "msg", "from": "svc:demo", "topic": "epg.updates", "data": {"rev": 2}}
        # listen: upstream with the server-set device id.
        listener = await backend_async(c, "listen", "billing", "-n", "1")
        first = json.loads(await asyncio.wait_for(listener.stdout.readline(), 10))
        assert first == {"listening": "tether.up.billing"}
        await phone.send(op="up", service="billing", **{"from": "tv-demo"}, data={"sku": "film-9"})
        line = json.loads(await asyncio.wait_for(listener.stdout.readline(), 10))
        assert line["from"] == "phone-demo" and line["data"] == {"sku": "film-9"} and line["node"] == "node1"
        assert await asyncio.wait_for(listener.wait(), 10) == 0
        # request: the device answers.
        requester = await backend_async(c, "request", "tv-demo", '{"q": "uptime"}')
        req = await tv.recv()
        assert req["op"] == "request" and req["data"] == {"q": "uptime"} and req["from"] == "svc:demo"
        await tv.send(op="reply", rid=req["rid"], data={"uptime_s": 42})
        out, err = await asyncio.wait_for(requester.communicate(), 10)
        assert requester.returncode == 0, err
        assert json.loads(out) == {"from": "tv-demo", "data": {"uptime_s": 42}}
        # request timeout: the device stays silent.
        out = await asyncio.to_thread(backend, c, "--timeout", "0.5", "request", "tv-demo", "{}")
        assert out.returncode == 1 and "did not reply" in out.stderr
        assert (await tv.recv())["op"] == "request"
        # presence: every session across the cluster, with node and shard.
        tv2 = await Device.connect(c.a_url, mint("tv-demo"))
        out = await asyncio.to_thread(backend, c, "presence", "tv-demo")
        got = json.loads(out.stdout)
        assert got["online"] is True
        assert sorted((s["node"], s["shard"]) for s in got["sessions"]) == sorted([("node1", tv2.shard), ("node2", tv.shard)])
        out = await asyncio.to_thread(backend, c, "presence", "tv-gone")
        assert json.loads(out.stdout) == {"device": "tv-gone", "online": False, "sessions": []}
        # events: the connection events a backend follows, with who is online.
        follower = await backend_async(c, "events", "-n", "1")
        first = json.loads(await asyncio.wait_for(follower.stdout.readline(), 10))
        assert first == {"listening": ["tether.event.>", "tether.node.>"]}
        tv3 = await Device.connect(c.b_url, mint("tv-events"))
        line = json.loads(await asyncio.wait_for(follower.stdout.readline(), 10))
        assert line["event"] == "connect" and line["device"] == "tv-events" and line["node"] == "node2", line
        assert "tv-events" in line["online"]
        assert await asyncio.wait_for(follower.wait(), 10) == 0
        for d in (tv, tv2, tv3, phone):
            await d.close()

    run(body())


def test_browser_remote_in_headless_chromium(cluster, tmp_path):
    """The phone-as-remote page, twice, in a real browser; token as a subprotocol entry."""
    page = "file://" + os.path.join(ROOT, "examples", "browser", "index.html")
    shot = str(tmp_path / "tv.png")
    out = subprocess.run(
        ["node", os.path.join(ROOT, "tests", "messaging", "browser_remote.mjs"), page, cluster.a_url,
         mint("tv-browser"), mint("phone-browser"), shot],
        capture_output=True, text=True, timeout=90,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["tvStatus"].startswith("ready as tv-browser"), got
    assert got["phoneStatus"].startswith("ready as phone-browser"), got
    assert "phone-browser pressed volume_up" in got["tvLog"], got
    assert "delivered (k1)" in got["phoneLog"], got
    assert os.path.getsize(shot) > 0
