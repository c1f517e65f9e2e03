#!/usr/bin/env python3
"""Helpers of scripts/prove-300k.sh: sampling, the messaging check, and the summary.

Subcommands (all paths are inside one run directory written by prove-300k.sh):

  snapshot RUN LABEL      one sample of every process and of the kernel, appended to
                          RUN/snapshots.jsonl with LABEL (baseline, peak, ...)
  sample RUN              one sample per second into RUN/samples.jsonl until RUN/stop exists
  devices RUN             the messaging check: connects RUN's sample devices to /ws (tokens
                          signed here with HS256), writes RUN/devices.ready, waits for
                          RUN/devices.go, then pushes through NATS to every sample device and
                          sends device-to-device messages across nodes, counts what arrives,
                          writes RUN/messaging.json and disconnects
  summary RUN             reads everything above plus loadgen.json and writes RUN/summary.json

RUN/nodes.json (written by the shell script) lists the processes:
  {"nodes":[{"name":"node-0","pid":..,"listen":"127.0.0.1:P","admin":"127.0.0.1:A","cpus":"0"}],
   "nats":{"pid":..,"url":"nats://127.0.0.1:N"}, "config":{...}}

Only the standard library is used except in `devices` (websockets, nats-py).
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- sampling


def read_status(pid):
    """VmRSS and VmHWM of a process in KiB (None when it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val = line.split(":", 1)
                    out[key] = int(val.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return {"rss_kib": out.get("VmRSS", 0), "hwm_kib": out.get("VmHWM", 0)}


def read_stat(pid):
    """(pgrp, utime+stime in clock ticks) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): pgrp is field 5, utime 14, stime 15.
    return int(fields[2]), int(fields[11]) + int(fields[12])


def group_members(pgid):
    """PIDs whose process group is pgid."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = read_stat(int(name))
        if st and st[0] == pgid:
            pids.append(int(name))
    return pids


def scrape(admin, timeout_s=2.0):
    """Parses the Prometheus text of one node into {connections, handshaking, counters}."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=timeout_s) as r:
        text = r.read().decode()
    m = {"connections": 0, "handshaking": 0, "handshakes": {}, "closes": {}, "other": {}}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            v = float(value)
        except ValueError:
            continue
        if name.startswith("tether_connections{"):
            m["connections"] += int(v)
        elif name.startswith("tether_handshaking{"):
            m["handshaking"] += int(v)
        elif name.startswith("tether_handshakes_total{"):
            m["handshakes"][name.split('"')[1]] = int(v)
        elif name.startswith("tether_closes_total{"):
            m["closes"][name.split('"')[1]] = int(v)
        elif "{" not in name:
            m["other"][name] = v
    return m


def kernel():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, val = line.split(":", 1)
            if key in ("Slab", "SUnreclaim", "SReclaimable", "MemAvailable", "MemFree"):
                out[key + "_kib"] = int(val.split()[0])
    with open("/proc/net/sockstat") as f:
        for line in f:
            proto, _, rest = line.partition(":")
            parts = rest.split()
            vals = dict(zip(parts[0::2], parts[1::2]))
            if proto == "sockets":
                out["sockets_used"] = int(vals["used"])
            elif proto == "TCP":
                out["tcp_inuse"] = int(vals["inuse"])
                out["tcp_orphan"] = int(vals["orphan"])
                out["tcp_tw"] = int(vals["tw"])
                out["tcp_alloc"] = int(vals["alloc"])
                out["tcp_mem_pages"] = int(vals["mem"])
    with open("/proc/stat") as f:
        cpu = f.readline().split()[1:]
    ticks = [int(x) for x in cpu]
    # user nice system idle iowait irq softirq steal ...
    out["cpu_busy_ticks"] = sum(ticks) - ticks[3] - ticks[4]
    out["cpu_total_ticks"] = sum(ticks)
    return out


def load_nodes(run):
    with open(os.path.join(run, "nodes.json")) as f:
        return json.load(f)


def loadgen_pgid(run):
    try:
        with open(os.path.join(run, "loadgen.pid")) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def take(run, label, cfg=None):
    cfg = cfg or load_nodes(run)
    snap = {"t": time.time(), "label": label, "nodes": [], "conn_sum": 0}
    for n in cfg["nodes"]:
        entry = {"name": n["name"], "pid": n["pid"]}
        st = read_status(n["pid"])
        cpu = read_stat(n["pid"])
        if st:
            entry.update(st)
        if cpu:
            entry["cpu_ticks"] = cpu[1]
        try:
            m = scrape(n["admin"])
            entry["connections"] = m["connections"]
            entry["handshaking"] = m["handshaking"]
            entry["handshakes"] = m["handshakes"]
            entry["closes"] = m["closes"]
            entry["accept_errors"] = int(m["other"].get("tether_accept_errors_total", 0))
            snap["conn_sum"] += m["connections"]
        except OSError as e:
            entry["scrape_error"] = str(e)
        snap["nodes"].append(entry)
    nats_pid = cfg["nats"]["pid"]
    snap["nats"] = {**(read_status(nats_pid) or {}), "cpu_ticks": (read_stat(nats_pid) or (0, 0))[1]}
    pg = loadgen_pgid(run)
    if pg:
        members = group_members(pg)
        rss = 0
        ticks = 0
        for p in members:
            s = read_status(p)
            c = read_stat(p)
            rss += s["rss_kib"] if s else 0
            ticks += c[1] if c else 0
        snap["loadgen"] = {"procs": len(members), "rss_kib": rss, "cpu_ticks": ticks}
    dev_pid = cfg.get("devices_pid")
    if dev_pid:
        snap["devices"] = {**(read_status(dev_pid) or {}), "cpu_ticks": (read_stat(dev_pid) or (0, 0))[1]}
    snap["kernel"] = kernel()
    return snap


def cmd_snapshot(run, label):
    snap = take(run, label)
    with open(os.path.join(run, "snapshots.jsonl"), "a") as f:
        f.write(json.dumps(snap) + "\n")
    print(f"snapshot {label}: {snap['conn_sum']} connections on the nodes")


def cmd_sample(run):
    cfg = load_nodes(run)
    stop = os.path.join(run, "stop")
    # Loadgen's CPU is summed over its live workers; keep the last seen ticks per PID so that
    # workers that exit before the final snapshot still count.
    seen_ticks = {}
    with open(os.path.join(run, "samples.jsonl"), "a") as out:
        while not os.path.exists(stop):
            t0 = time.monotonic()
            cfg = load_nodes(run)
            snap = take(run, "tick", cfg)
            pg = loadgen_pgid(run)
            if pg:
                for p in group_members(pg):
                    c = read_stat(p)
                    if c:
                        seen_ticks[p] = c[1]
                snap["loadgen_cpu_ticks_cumulative"] = sum(seen_ticks.values())
            out.write(json.dumps(snap) + "\n")
            out.flush()
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))


# ---------------------------------------------------------------- messaging check


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hs256_token(secret, sub, ttl_s=3600):
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(
        json.dumps({"sub": sub, "exp": int(time.time()) + ttl_s}, separators=(",", ":")).encode()
    )
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def percentile(sorted_vals, q):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


async def devices_main(run):
    import nats
    from websockets.asyncio.client import connect

    cfg = load_nodes(run)
    c = cfg["config"]
    count = int(c["sample_devices"])
    per_device = int(c["messages_per_device"])
    secret = c["jwt_secret"]
    nodes = cfg["nodes"]
    result = {
        "sample_devices": count,
        "sample_connected": 0,
        "sample_connect_errors": {},
        "pushes_sent": 0,
        "pushes_delivered": 0,
        "d2d_sent": 0,
        "d2d_delivered": 0,
        "d2d_cross_node": 0,
        "wrong_sender": 0,
        "duplicates": 0,
        "unexpected": 0,
        "send_errors": [],
    }
    conns = {}
    hello = {}
    received = {}  # device -> set of message keys
    latencies_us = []
    sem = asyncio.Semaphore(64)

    def device_name(i):
        return f"prove-{i:06d}"

    async def reader(name, ws):
        try:
            async for raw in ws:
                msg = json.loads(raw)
                op = msg.get("op")
                if op == "hello":
                    hello[name].set_result(msg)
                elif op == "msg":
                    data = msg.get("data") or {}
                    key = data.get("key")
                    expect_from = data.get("from_expected")
                    if key is None:
                        result["unexpected"] += 1
                        continue
                    if msg.get("from") != expect_from:
                        result["wrong_sender"] += 1
                    got = received.setdefault(name, set())
                    if key in got:
                        result["duplicates"] += 1
                        continue
                    got.add(key)
                    latencies_us.append(int((time.time() - data.get("t", time.time())) * 1e6))
                    if key.startswith("push"):
                        result["pushes_delivered"] += 1
                    else:
                        result["d2d_delivered"] += 1
                elif op == "error":
                    result["send_errors"].append(msg)
        except Exception:  # connection closed: the counts tell
            pass

    readers = []

    async def open_one(i):
        name = device_name(i)
        node = nodes[i % len(nodes)]
        url = f"ws://{node['listen']}/ws"
        hello[name] = asyncio.get_running_loop().create_future()
        async with sem:
            try:
                ws = await connect(
                    url,
                    additional_headers={"Authorization": "Bearer " + hs256_token(secret, name)},
                    subprotocols=["tether.v1"],
                    open_timeout=30,
                    ping_interval=None,
                    max_queue=256,
                )
            except Exception as e:  # counted by cause
                cause = type(e).__name__
                result["sample_connect_errors"][cause] = result["sample_connect_errors"].get(cause, 0) + 1
                hello[name].cancel()
                return
            conns[name] = (ws, i % len(nodes))
            readers.append(asyncio.create_task(reader(name, ws)))
            try:
                await asyncio.wait_for(asyncio.shield(hello[name]), 30)
                result["sample_connected"] += 1
            except (asyncio.TimeoutError, asyncio.CancelledError):
                result["sample_connect_errors"]["no_hello"] = result["sample_connect_errors"].get("no_hello", 0) + 1

    await asyncio.gather(*(open_one(i) for i in range(count)))
    ready = [n for n, f in hello.items() if f.done() and not f.cancelled()]
    with open(os.path.join(run, "devices.ready"), "w") as f:
        f.write(f"{len(ready)}\n")
    print(f"devices: {len(ready)} of {count} sample devices connected and routable", flush=True)

    go = os.path.join(run, "devices.go")
    while not os.path.exists(go):
        await asyncio.sleep(0.2)

    nc = await nats.connect(cfg["nats"]["url"])
    expected = {n: set() for n in ready}
    t_start = time.time()
    # Pushes from a backend through NATS to every sample device.
    for k in range(per_device):
        for n in ready:
            key = f"push-{k}"
            payload = {"from": "svc:prove", "data": {"key": key, "from_expected": "svc:prove", "t": time.time()}}
            await nc.publish(f"tether.dev.{n}", json.dumps(payload).encode())
            expected[n].add(key)
            result["pushes_sent"] += 1
    await nc.flush()
    # Device to device: device i sends to the next ready device, which sits on the next node.
    order = sorted(ready)
    for k in range(per_device):
        for idx, src in enumerate(order):
            dst = order[(idx + 1) % len(order)]
            ws, src_node = conns[src]
            if conns[dst][1] != src_node:
                result["d2d_cross_node"] += 1
            key = f"d2d-{src}-{k}"
            env = {"op": "send", "to": dst, "data": {"key": key, "from_expected": src, "t": time.time()}}
            try:
                await ws.send(json.dumps(env))
                expected[dst].add(key)
                result["d2d_sent"] += 1
            except Exception as e:
                result["send_errors"].append(str(e))
        await asyncio.sleep(0)
    # Wait for the deliveries (bounded).
    deadline = time.time() + float(c.get("delivery_wait_s", 15))
    total_expected = sum(len(v) for v in expected.values())
    while time.time() < deadline:
        got = sum(len(received.get(n, set()) & expected[n]) for n in expected)
        if got >= total_expected:
            break
        await asyncio.sleep(0.1)
    result["exchange_s"] = round(time.time() - t_start, 3)
    delivered = sum(len(received.get(n, set()) & expected[n]) for n in expected)
    result["messages_sent"] = total_expected
    result["messages_delivered"] = delivered
    result["messages_lost"] = total_expected - delivered
    lat = sorted(latencies_us)
    result["delivery_latency_us"] = {
        "p50": percentile(lat, 0.5),
        "p99": percentile(lat, 0.99),
        "max": lat[-1] if lat else None,
    }
    result["send_errors"] = result["send_errors"][:20]
    await nc.close()
    with open(os.path.join(run, "messaging.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(
        f"messaging: {delivered} of {total_expected} delivered "
        f"({result['pushes_delivered']}/{result['pushes_sent']} NATS pushes, "
        f"{result['d2d_delivered']}/{result['d2d_sent']} device-to-device, "
        f"{result['d2d_cross_node']} of those across nodes), wrong sender {result['wrong_sender']}",
        flush=True,
    )
    # Stay connected until the shell script says the hold is over, then close cleanly.
    done = os.path.join(run, "devices.done")
    while not os.path.exists(done):
        await asyncio.sleep(0.2)
    await asyncio.gather(*(ws.close() for ws, _ in conns.values()), return_exceptions=True)
    for t in readers:
        t.cancel()


# ---------------------------------------------------------------- summary


def read_jsonl(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def cmd_summary(run):
    cfg = load_nodes(run)
    c = cfg["config"]
    snaps = {s["label"]: s for s in read_jsonl(os.path.join(run, "snapshots.jsonl"))}
    samples = read_jsonl(os.path.join(run, "samples.jsonl"))
    try:
        with open(os.path.join(run, "loadgen.json")) as f:
            lg = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        lg = {}
    try:
        with open(os.path.join(run, "messaging.json")) as f:
            msg = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        msg = None
    base = snaps.get("baseline")
    peak = snaps.get("peak")
    end = snaps.get("end")
    sampled_peak = max((s["conn_sum"] for s in samples), default=0)
    # Memory is read where the most connections were held: the hold snapshot, or the
    # once-per-second sample with more connections when the hold ended before that snapshot.
    if samples and (peak is None or sampled_peak > peak["conn_sum"]):
        peak = max(samples, key=lambda s: (s["conn_sum"], -s["t"]))
    peak_conn = max(sampled_peak, peak["conn_sum"] if peak else 0)

    per_node = []
    rss_delta_kib = 0
    for i, n in enumerate(cfg["nodes"]):
        b = base["nodes"][i] if base else {}
        p = peak["nodes"][i] if peak else {}
        e = end["nodes"][i] if end else {}
        hwm = max(p.get("hwm_kib", 0), e.get("hwm_kib", 0), max((s["nodes"][i].get("hwm_kib", 0) for s in samples), default=0))
        node_peak_conn = max([p.get("connections", 0)] + [s["nodes"][i].get("connections", 0) for s in samples])
        cpu_s = (e.get("cpu_ticks", p.get("cpu_ticks", 0)) - b.get("cpu_ticks", 0)) / CLK_TCK
        rss_delta_kib += p.get("rss_kib", 0) - b.get("rss_kib", 0)
        per_node.append(
            {
                "name": n["name"],
                "cpus": n.get("cpus"),
                "connections_peak": node_peak_conn,
                "rss_baseline_kib": b.get("rss_kib"),
                "rss_at_peak_kib": p.get("rss_kib"),
                "vm_hwm_kib": hwm,
                "cpu_s": round(cpu_s, 2),
                "handshakes": (e or p).get("handshakes"),
                "accept_errors": (e or p).get("accept_errors"),
            }
        )
    peak_snap_conn = peak["conn_sum"] if peak else 0
    base_conn = base["conn_sum"] if base else 0
    held = max(1, peak_snap_conn - base_conn)
    kb = base["kernel"] if base else {}
    kp = peak["kernel"] if peak else {}
    slab_delta = (kp.get("Slab_kib", 0) - kb.get("Slab_kib", 0)) * 1024
    sunreclaim_delta = (kp.get("SUnreclaim_kib", 0) - kb.get("SUnreclaim_kib", 0)) * 1024
    tcp_mem_delta = (kp.get("tcp_mem_pages", 0) - kb.get("tcp_mem_pages", 0)) * PAGE_BYTES

    def cpu(key):
        b = (base or {}).get(key, {}).get("cpu_ticks", 0)
        e = (end or peak or {}).get(key, {}).get("cpu_ticks", 0)
        return round((e - b) / CLK_TCK, 2)

    lg_cpu_ticks = max((s.get("loadgen_cpu_ticks_cumulative", 0) for s in samples), default=0)
    box_busy = (
        ((end or peak)["kernel"]["cpu_busy_ticks"] - base["kernel"]["cpu_busy_ticks"]) / CLK_TCK
        if base and (end or peak)
        else None
    )
    wall = ((end or peak)["t"] - base["t"]) if base and (end or peak) else None
    nodes_cpu = sum(n["cpu_s"] for n in per_node)
    lg_lat = lg.get("handshake_latency_us") or {}
    errors_lg = lg.get("handshake_errors_total")
    sample_errs = sum((msg or {}).get("sample_connect_errors", {}).values()) if msg else 0
    handshake_errors_total = (errors_lg if errors_lg is not None else 0) + sample_errs
    loadgen_connected_peak = lg.get("connected_peak")
    summary = {
        "clients_target": c["clients"],
        "concurrent_clients_peak": peak_conn,
        "concurrent_clients_at_hold_snapshot": peak_snap_conn,
        "loadgen_connected_peak": loadgen_connected_peak,
        "sample_devices_connected": (msg or {}).get("sample_connected"),
        "handshake_errors_total": handshake_errors_total,
        "handshake_errors": lg.get("handshake_errors"),
        "rate_target_per_s": c["rate"],
        "connect_rate_per_s": lg.get("connect_rate_achieved_per_s"),
        "handshake_latency_us": {k: lg_lat.get(k) for k in ("p50", "p90", "p99", "p999", "max")},
        "nodes": len(cfg["nodes"]),
        "shards_per_node": c["shards"],
        "endpoint": c["endpoint"],
        "loadgen_workers": lg.get("workers"),
        "user_rss_bytes_per_connection": round(rss_delta_kib * 1024 / held),
        "node_rss_delta_kib_total": rss_delta_kib,
        "kernel_bytes_per_connection": round(slab_delta / held),
        "kernel_note": "Slab growth between the baseline and the hold snapshot divided by the "
        "connections held; both ends of each loopback connection are on this machine, so one "
        "socket costs about half",
        "kernel": {
            "slab_delta_bytes": slab_delta,
            "sunreclaim_delta_bytes": sunreclaim_delta,
            "tcp_mem_delta_bytes": tcp_mem_delta,
            "sockstat_tcp_inuse_peak": kp.get("tcp_inuse"),
            "sockstat_tcp_alloc_peak": kp.get("tcp_alloc"),
            "sockstat_tcp_mem_pages_peak": kp.get("tcp_mem_pages"),
            "slab_baseline_kib": kb.get("Slab_kib"),
            "slab_peak_kib": kp.get("Slab_kib"),
            "mem_available_peak_kib": kp.get("MemAvailable_kib"),
        },
        "messages_sent": (msg or {}).get("messages_sent", 0) if msg else 0,
        "messages_delivered": (msg or {}).get("messages_delivered", 0) if msg else 0,
        "messages_lost": (msg or {}).get("messages_lost", 0) if msg else 0,
        "messaging": msg if msg else "not run (see messaging_skipped)",
        "cpu_s": {
            "nodes": round(nodes_cpu, 2),
            "loadgen": round(lg_cpu_ticks / CLK_TCK, 2),
            "nats_server": cpu("nats"),
            "sample_devices": cpu("devices"),
            "box_busy": round(box_busy, 2) if box_busy is not None else None,
            "wall_s": round(wall, 1) if wall is not None else None,
        },
        "node_cpu_us_per_handshake": round(nodes_cpu * 1e6 / held) if held > 1 else None,
        "nats_rss_peak_kib": max((s.get("nats", {}).get("hwm_kib", 0) for s in samples + ([peak] if peak else [])), default=0),
        "loadgen_rss_peak_kib": max((s.get("loadgen", {}).get("rss_kib", 0) for s in samples), default=0),
        "per_node": per_node,
        "loadgen_duration_s": lg.get("duration_s"),
        "loadgen_schedule_lag": {
            "events": lg.get("schedule_lag_events"),
            "max_us": lg.get("schedule_lag_max_us"),
        },
        "loadgen_cpu_us_per_connection": lg.get("loadgen_cpu_us_per_connection"),
        "loadgen_tcp_connect_latency_us": {
            k: (lg.get("tcp_connect_latency_us") or {}).get(k) for k in ("p50", "p99", "max")
        },
        "loadgen_closes": lg.get("closes"),
        "loadgen_disconnects": lg.get("disconnects"),
    }
    if c.get("messaging_skipped"):
        summary["messaging_skipped"] = c["messaging_skipped"]
    # The run's verdict: every client held, no failed handshake, no lost message.
    problems = []
    if peak_conn < c["clients"]:
        problems.append(f"held {peak_conn} of {c['clients']}")
    if handshake_errors_total != 0:
        problems.append(f"{handshake_errors_total} handshake errors")
    if summary["messages_lost"]:
        problems.append(f"{summary['messages_lost']} messages lost")
    if not lg:
        problems.append("no loadgen report")
    summary["verdict"] = {"passed": not problems, "problems": problems}
    with open(os.path.join(run, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    s = summary
    lat = s["handshake_latency_us"]
    print(
        f"\n== {run}\n"
        f"clients: peak {s['concurrent_clients_peak']} on {s['nodes']} nodes x {s['shards_per_node']} shard(s) "
        f"(target {s['clients_target']}; loadgen peak {s['loadgen_connected_peak']}, sample devices {s['sample_devices_connected']})\n"
        f"handshakes: errors {s['handshake_errors_total']}, rate {s['connect_rate_per_s']}/s (target {s['rate_target_per_s']}), "
        f"latency p50 {lat.get('p50')} us p99 {lat.get('p99')} us\n"
        f"memory: user RSS {s['user_rss_bytes_per_connection']} B/connection, kernel slab {s['kernel_bytes_per_connection']} B/connection "
        f"(both ends), nats-server peak RSS {s['nats_rss_peak_kib']} KiB\n"
        f"messages: {s['messages_delivered']} delivered, {s['messages_lost']} lost of {s['messages_sent']}\n"
        f"cpu: nodes {s['cpu_s']['nodes']} s, loadgen {s['cpu_s']['loadgen']} s, nats {s['cpu_s']['nats_server']} s "
        f"over {s['cpu_s']['wall_s']} s wall\n"
        f"verdict: {'passed' if s['verdict']['passed'] else 'FAILED: ' + '; '.join(s['verdict']['problems'])}\n"
    )


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, run = sys.argv[1], sys.argv[2]
    if cmd == "snapshot":
        cmd_snapshot(run, sys.argv[3])
    elif cmd == "sample":
        cmd_sample(run)
    elif cmd == "devices":
        asyncio.run(devices_main(run))
    elif cmd == "summary":
        cmd_summary(run)
    elif cmd == "token":
        print(hs256_token(sys.argv[3], run))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
