#!/usr/bin/env python3
"""A backend service for tether, written from docs/protocol.md (section 8) with nats-py.

It talks to devices only through NATS subjects:

  push DEVICE JSON          publish {"from": "svc:NAME", "data": JSON} on tether.dev.DEVICE
                            as a request, and report how many sessions received it
  topic TOPIC JSON          publish on tether.topic.TOPIC
  listen SERVICE [-n N]     receive upstream messages on tether.up.SERVICE (queue group SERVICE),
                            print one JSON line each; stop after N messages
  request DEVICE JSON       ask the device (tether.req.DEVICE) and wait for its reply
  presence DEVICE           ask who holds DEVICE: every answering node and shard

Examples:
  python3 examples/backend.py --nats nats://127.0.0.1:4222 push tv-livingroom '{"channel": 5}'
  python3 examples/backend.py --nats nats://127.0.0.1:4222 request tv-livingroom '{"q": "battery"}'

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
        return fail(f"no confirmation from {args.device} within {args.timeout}s")
    return {"pushed": args.device, **json.loads(reply.data)}


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
    c = sub.add_parser("topic")
    c.add_argument("topic")
    c.add_argument("json")
    c = sub.add_parser("listen")
    c.add_argument("service")
    c.add_argument("-n", "--count", type=int, default=0)
    c = sub.add_parser("request")
    c.add_argument("device")
    c.add_argument("json")
    c = sub.add_parser("presence")
    c.add_argument("device")
    c.add_argument("--wait", type=float, default=0.5, help="seconds to collect answers")
    args = p.parse_args()

    nc = await nats.connect(args.nats, name=f"tether backend example ({args.name})")
    try:
        handler = {"push": push, "topic": topic, "listen": listen, "request": request, "presence": presence}[args.command]
        result = await handler(nc, args)
        print(json.dumps(result), flush=True)
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
