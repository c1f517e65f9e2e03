#!/usr/bin/env python3
"""A backend service for tether, written from docs/protocol.md (section 8) with nats-py.

It talks to devices only through NATS subjects:

  push DEVICE JSON          publish {"from": "svc:NAME", "data": JSON} on tether.dev.DEVICE
                            as a request: answered once a session of the device acknowledged it
  events [-n N] [--for S]   follow tether.event.> and tether.node.>: print each connection event
                            and keep who is online, declaring a node dead (and every device whose
                            last event was a connect on it gone) after its heartbeat's
                            dead_after_ms of silence
  durable DEVICE JSON       durable push (nodes with --durable): a JetStream publish on
                            tether.mbox.DEVICE (--key K: collapse key, --ttl 30s: expiry);
                            prints the stored seq, then waits for the device's receipt on
                            tether.receipt.DEVICE (--no-wait: do not wait)
  topic TOPIC JSON          publish on tether.topic.TOPIC
  listen SERVICE [-n N]     receive upstream messages on tether.up.SERVICE (queue group SERVICE),
                            print one JSON line each; stop after N messages
  request DEVICE JSON       ask the device (tether.req.DEVICE) and wait for its reply
  presence DEVICE           ask who holds DEVICE: every answering node and shard

Examples:
  python3 examples/backend.py --nats nats://127.0.0.1:4222 push tv-livingroom '{"channel": 5}'
  python3 examples/backend.py --nats nats://127.0.0.1:4222 request tv-livingroom '{"q": "battery"}'
  python3 examples/backend.py --nats nats://127.0.0.1:4222 durable tv-livingroom '{"badge": 3}' --key badge

Each command prints a JSON result on stdout and exits 0, or exits 1 with a reason on stderr
(device offline, timeout).
"""

import argparse
import asyncio
import json
import sys

import nats
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout


def envelope(name, data):
    return json.dumps({"from": f"svc:{name}", "data": data}).encode()


async def push(nc, args):
    try:
        reply = await nc.request(f"tether.dev.{args.device}", envelope(args.name, json.loads(args.json)), timeout=args.timeout)
    except NoRespondersError:
        return fail(f"{args.device} is offline (no session anywhere)")
    except NatsTimeout:
        return fail(f"no acknowledgement from {args.device} within {args.timeout}s")
    receipt = json.loads(reply.data)
    if not receipt.get("delivered"):
        # e.g. {"delivered": 0, "reason": "closed"}: the session closed before acknowledging.
        return fail(f"not delivered to {args.device}: {receipt.get('reason')}")
    return {"pushed": args.device, **receipt}


async def durable(nc, args):
    subject = f"tether.mbox.{args.device}" + (f".{args.key}" if args.key else "")
    headers = {}
    if args.key:
        headers["Nats-Rollup"] = "sub"  # collapse: replaces the unread message with this key
    if args.ttl:
        headers["Nats-TTL"] = args.ttl  # expires unread after this long
    # Subscribe to receipts before publishing, so that a receipt cannot come before we listen.
    receipts = await nc.subscribe(f"tether.receipt.{args.device}")
    ack = await nc.jetstream().publish(subject, envelope(args.name, json.loads(args.json)), headers=headers or None)
    print(json.dumps({"stored": args.device, "stream": ack.stream, "seq": ack.seq}), flush=True)
    if args.no_wait:
        return {"seq": ack.seq, "receipt": None}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    while True:
        left = deadline - loop.time()
        try:
            msg = await receipts.next_msg(timeout=max(left, 0.001))
        except NatsTimeout:
            return fail(
                f"stored as seq {ack.seq}; no receipt within {args.timeout}s "
                f"({args.device} gets it when it connects, within the stream's max age)"
            )
        receipt = json.loads(msg.data)
        # Acks are cumulative: one ack can produce receipts for several seqs.
        if receipt["seq"] == ack.seq:
            return {"seq": ack.seq, "receipt": receipt}


async def topic(nc, args):
    await nc.publish(f"tether.topic.{args.topic}", envelope(args.name, json.loads(args.json)))
    await nc.flush()
    return {"published": args.topic}


async def listen(nc, args):
    done = asyncio.Event()
    count = 0

    async def on_message(msg):
        nonlocal count
        body = json.loads(msg.data)
        # `from` is the device id the node authenticated: the device cannot choose it.
        print(json.dumps({"service": args.service, **body}), flush=True)
        count += 1
        if args.count and count >= args.count:
            done.set()

    await nc.subscribe(f"tether.up.{args.service}", queue=args.service, cb=on_message)
    await nc.flush()
    print(json.dumps({"listening": f"tether.up.{args.service}"}), flush=True)
    try:
        await asyncio.wait_for(done.wait(), args.timeout if args.count else None)
    except asyncio.TimeoutError:
        return fail(f"only {count} of {args.count} upstream messages within {args.timeout}s")
    return {"received": count}


async def request(nc, args):
    try:
        reply = await nc.request(f"tether.req.{args.device}", envelope(args.name, json.loads(args.json)), timeout=args.timeout)
    except NoRespondersError:
        return fail(f"{args.device} is offline")
    except NatsTimeout:
        return fail(f"{args.device} did not reply within {args.timeout}s")
    return json.loads(reply.data)


async def presence(nc, args):
    """Every shard holding a session answers once; collect answers for a short while."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(f"tether.presence.{args.device}", b"{}", reply=inbox)
    sessions = []
    try:
        while True:
            msg = await sub.next_msg(timeout=args.wait)
            if not msg.data or (msg.headers and msg.headers.get("Status") == "503"):
                break  # no responders: offline
            sessions.append(json.loads(msg.data))
    except NatsTimeout:
        pass
    await sub.unsubscribe()
    return {"device": args.device, "online": bool(sessions), "sessions": sessions}


class Presence:
    """Who is online, from connection events and node heartbeats (docs/protocol.md, section 8).

    A device is online while its last event on some node is a connect (a session id per node);
    a node that stays silent for its heartbeat's dead_after_ms is dead, and so is every session
    whose last event was a connect on it; a new started_at means the node restarted, so its
    older sessions are gone as well."""

    def __init__(self):
        self.sessions = {}  # (node, session) -> device
        self.nodes = {}  # node -> {"started_at", "seen" (monotonic s), "dead_after_s"}

    def on_event(self, e):
        key = (e["node"], e["session"])
        if e["event"] == "connect":
            self.sessions[key] = e["device"]
        else:
            self.sessions.pop(key, None)

    def on_heartbeat(self, h, now):
        known = self.nodes.get(h["node"])
        if known and known["started_at"] != h["started_at"]:
            self.forget(h["node"])
        self.nodes[h["node"]] = {"started_at": h["started_at"], "seen": now, "dead_after_s": h["dead_after_ms"] / 1000}

    def forget(self, node):
        for key in [k for k in self.sessions if k[0] == node]:
            del self.sessions[key]

    def expire(self, now):
        """Declares silent nodes dead; returns their names."""
        dead = [n for n, s in self.nodes.items() if now - s["seen"] > s["dead_after_s"]]
        for node in dead:
            del self.nodes[node]
            self.forget(node)
        return dead

    def online(self):
        return sorted(set(self.sessions.values()))


async def events(nc, args):
    presence = Presence()
    loop = asyncio.get_running_loop()
    seen = 0

    async def on_event(msg):
        nonlocal seen
        e = json.loads(msg.data)
        presence.on_event(e)
        print(json.dumps({**e, "online": presence.online()}), flush=True)
        seen += 1

    async def on_heartbeat(msg):
        presence.on_heartbeat(json.loads(msg.data), loop.time())

    await nc.subscribe("tether.event.>", cb=on_event)
    await nc.subscribe("tether.node.>", cb=on_heartbeat)
    await nc.flush()
    print(json.dumps({"listening": ["tether.event.>", "tether.node.>"]}), flush=True)
    end = loop.time() + args.duration if args.duration else None
    while (not args.count or seen < args.count) and (end is None or loop.time() < end):
        await asyncio.sleep(0.1)
        for node in presence.expire(loop.time()):
            print(json.dumps({"node_dead": node, "online": presence.online()}), flush=True)
    return {"events": seen, "online": presence.online()}


def fail(reason):
    print(reason, file=sys.stderr)
    sys.exit(1)


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    p.add_argument("--name", default="example", help="service name shown to devices as svc:NAME")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for answers")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("push")
    c.add_argument("device")
    c.add_argument("json")
    c = sub.add_parser("durable")
    c.add_argument("device")
    c.add_argument("json")
    c.add_argument("--key", help="collapse key (one token): only the latest unread one is kept")
    c.add_argument("--ttl", help="time to live, e.g. 30s, 10m (JetStream Nats-TTL)")
    c.add_argument("--no-wait", action="store_true", help="do not wait for the receipt")
    c = sub.add_parser("topic")
    c.add_argument("topic")
    c.add_argument("json")
    c = sub.add_parser("listen")
    c.add_argument("service")
    c.add_argument("-n", "--count", type=int, default=0)
    c = sub.add_parser("request")
    c.add_argument("device")
    c.add_argument("json")
    c = sub.add_parser("events")
    c.add_argument("-n", "--count", type=int, default=0, help="stop after N events")
    c.add_argument("--for", dest="duration", type=float, default=0, help="stop after S seconds")
    c = sub.add_parser("presence")
    c.add_argument("device")
    c.add_argument("--wait", type=float, default=0.5, help="seconds to collect answers")
    args = p.parse_args()

    nc = await nats.connect(args.nats, name=f"tether backend example ({args.name})")
    try:
        handler = {"push": push, "durable": durable, "topic": topic, "listen": listen, "request": request, "presence": presence,
                   "events": events}[args.command]
        result = await handler(nc, args)
        print(json.dumps(result), flush=True)
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
