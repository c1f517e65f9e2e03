#!/usr/bin/env bash
# Metrics an operator graphs, against real processes (release binaries): two tether nodes joined
# by a real nats-server, a tether-loadgen d2d run on /ws, refused handshakes of each kind, and a
# send with ack from a device on one node to a device on the other. Then /metrics of both nodes
# must show the latency histograms with non-empty buckets (delivery across nodes included),
# rejection reasons split by cause, process_* and tether_build_info; and every metric that the
# dashboard (deploy/grafana) or the alert rules (deploy/prometheus) name must be exported.
set -euo pipefail
cd "$(dirname "$0")/../.."
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
BIN="${CARGO_TARGET_DIR:-target}/release"
for b in tether tether-loadgen; do
    if [ ! -x "$BIN/$b" ]; then
        echo "70-metrics: $BIN/$b is missing; build with: cargo build --release --workspace --bins" >&2
        exit 1
    fi
done
exec python3 - "$BIN" <<'PY'
import base64, hashlib, hmac, json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time

BIN = sys.argv[1]
WORK = tempfile.mkdtemp(prefix="tether-70-metrics-")
SECRET = "metrics-suite-secret-of-32-bytes!"
procs = []


def fail(msg):
    print(f"70-metrics: FAIL: {msg}", file=sys.stderr)
    for name in sorted(os.listdir(WORK)):
        if name.endswith(".log"):
            print(f"--- {name}", file=sys.stderr)
            print(open(os.path.join(WORK, name)).read()[-3000:], file=sys.stderr)
    sys.exit(1)


def wait_for(what, pred, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    fail(f"timed out waiting for {what}")


def start(name, args):
    log = open(os.path.join(WORK, f"{name}.log"), "w")
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    procs.append(p)
    return p, os.path.join(WORK, f"{name}.log")


def jwt(claims):
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = enc(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = enc(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{enc(sig)}"


def upgrade_status(port, path, headers=()):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: tether.v1\r\n")
    for h in headers:
        req += h + "\r\n"
    s.sendall((req + "\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    return int(data.split(b" ", 2)[1])


def scrape(admin):
    s = socket.create_connection(("127.0.0.1", admin), timeout=10)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.split(b"\r\n\r\n", 1)[1].decode()


def samples(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, value = line.rsplit(" ", 1)
        out[key] = float(value)
    return out


try:
    # nats-server on a free port (it picks one with -p -1 and logs it).
    nats, nats_log = start("nats", ["nats-server", "-a", "127.0.0.1", "-p", "-1"])
    line = wait_for("nats-server", lambda: re.search(r"Listening for client connections on [^:]+:(\d+)", open(nats_log).read()))
    nats_url = f"nats://127.0.0.1:{line.group(1)}"
    secret_file = os.path.join(WORK, "jwt-secret")
    open(secret_file, "w").write(SECRET + "\n")
    nodes = []
    for i in (1, 2):
        p, log = start(f"node{i}", [f"{BIN}/tether", "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                                    "--shards", "2", "--jwt-secret-file", secret_file, "--nats", nats_url,
                                    "--node-id", f"metrics-{i}"])
        line = wait_for(f"node {i}", lambda: re.search(r"tether serving.*", open(log).read())).group(0)
        port = re.search(r" listen=\S+:(\d+)", line).group(1)
        admin = re.search(r" admin=\S+:(\d+)", line).group(1)
        nodes.append({"pid": p.pid, "port": int(port), "admin": int(admin)})
    n1, n2 = nodes
    print(f"70-metrics: nats {nats_url}, nodes {n1}, {n2}")

    # Load: 200 devices on node 1 sending to each other for 3 s.
    run = subprocess.run([f"{BIN}/tether-loadgen", "--url", f"ws://127.0.0.1:{n1['port']}/ws", "--workload", "d2d",
                          "--clients", "200", "--rate", "1000", "--hold", "3s", "--msg-rate", "5",
                          "--device-jwt-secret", SECRET, "--quiet", "--json", os.path.join(WORK, "loadgen.json"),
                          "--threshold", "errors==0"], capture_output=True, text=True, timeout=120)
    print(run.stdout[-1500:])
    if run.returncode != 0:
        fail(f"tether-loadgen exited {run.returncode}: {run.stderr[-2000:]}")

    # Refusals of each kind, counted under their own result.
    now = int(time.time())
    refusals = {
        "missing_token": ([], 3, 401),
        "invalid_token": ([f"Authorization: Bearer {jwt({'sub': 'd1', 'exp': now + 600})}x"], 2, 401),
        "expired": ([f"Authorization: Bearer {jwt({'sub': 'd1', 'exp': now - 3600})}"], 4, 401),
        "ambiguous_credentials": (["Authorization: Bearer a", "Authorization: Bearer b"], 1, 400),
    }
    for label, (headers, count, status) in refusals.items():
        for _ in range(count):
            got = upgrade_status(n1["port"], "/ws", headers)
            if got != status:
                fail(f"{label}: status {got}, expected {status}")

    # A send with ack from a device on node 1 to a device on node 2 (through NATS).
    import asyncio
    import websockets

    async def cross_node():
        tok = lambda sub: jwt({"sub": sub, "exp": now + 600})
        async with websockets.connect(f"ws://127.0.0.1:{n2['port']}/ws", subprotocols=["tether.v1"],
                                      additional_headers={"Authorization": "Bearer " + tok("rx-1")}) as rx, \
                   websockets.connect(f"ws://127.0.0.1:{n1['port']}/ws", subprotocols=["tether.v1"],
                                      additional_headers={"Authorization": "Bearer " + tok("tx-1")}) as tx:
            for ws in (rx, tx):
                hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert hello["op"] == "hello", hello
            for i in range(5):
                await tx.send(json.dumps({"op": "send", "to": "rx-1", "data": {"n": i}, "id": f"m{i}", "ack": True}))
                got = json.loads(await asyncio.wait_for(rx.recv(), 10))
                assert got["op"] == "msg" and "ack_id" in got, got
                await rx.send(json.dumps({"op": "ack", "ack_id": got["ack_id"]}))
                ack = json.loads(await asyncio.wait_for(tx.recv(), 10))
                assert (ack.get("op"), ack.get("id"), ack.get("delivered")) == ("ack", f"m{i}", True), ack

    asyncio.run(cross_node())

    m1, m2 = samples(scrape(n1["admin"])), samples(scrape(n2["admin"]))

    def histogram(m, name, at_least):
        count = m.get(f"{name}_count")
        if count is None or count < at_least:
            fail(f"{name}_count is {count}, expected >= {at_least}")
        finite = [v for k, v in m.items() if k.startswith(f"{name}_bucket{{") and 'le="+Inf"' not in k]
        if not finite or max(finite) == 0:
            fail(f"{name}: every finite bucket is empty")
        if m.get(f'{name}_bucket{{le="+Inf"}}') != count:
            fail(f"{name}: +Inf bucket differs from _count")
        print(f"70-metrics: {name}: count {int(count)}, sum {m[name + '_sum']:.6f} s")

    histogram(m1, "tether_handshake_duration_seconds", 201)
    histogram(m1, "tether_delivery_latency_seconds", 200)
    histogram(m1, "tether_bus_round_trip_seconds", 200)
    histogram(m1, "tether_ack_wait_seconds", 5)
    histogram(m2, "tether_delivery_latency_seconds", 5)  # arrived at node 1, delivered on node 2
    for label, (_, count, _) in refusals.items():
        got = m1.get(f'tether_handshakes_total{{result="{label}"}}')
        if got != count:
            fail(f'tether_handshakes_total{{result="{label}"}} is {got}, expected {count}')
    if m1.get('tether_handshakes_total{result="rejected"}') != 0:
        fail("refusals with a known cause were counted as rejected")
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_max_fds", "process_start_time_seconds"):
        if not m1.get(name):
            fail(f"{name} missing or 0")
    if m1["process_open_fds"] > m1["process_max_fds"]:
        fail("process_open_fds > process_max_fds")
    if not any(k.startswith("tether_build_info{version=") for k in m1):
        fail("tether_build_info missing")
    print("70-metrics: refusals by cause:", {k: m1[f'tether_handshakes_total{{result="{k}"}}'] for k in refusals})

    # Every metric the dashboard and the alert rules name is exported.
    exported = {re.sub(r"\{.*", "", k) for k in m1}
    named = set()
    sources = []
    for d in ("deploy/grafana", "deploy/prometheus"):
        for f in sorted(os.listdir(d)):
            if f.endswith((".json", ".yml", ".yaml")):
                sources.append(os.path.join(d, f))
    if not sources:
        fail("no dashboard or rule files under deploy/")
    for path in sources:
        if path.endswith(".json"):
            exprs = [t.get("expr", "") for p in json.load(open(path))["panels"] for t in p.get("targets", [])]
        else:
            import yaml
            doc = yaml.safe_load(open(path))
            if "groups" not in doc:
                continue  # the scrape configuration
            exprs = [r["expr"] for g in doc["groups"] for r in g["rules"]]
        if not exprs:
            fail(f"{path}: no queries found")
        for e in exprs:
            named |= set(re.findall(r"\b((?:tether|process)_[a-z_]+)", e))
    missing = sorted(n for n in named if n not in exported)
    if missing:
        fail(f"named by the dashboard or alert rules but not exported: {missing}")
    print(f"70-metrics: {len(named)} metric names in {len(sources)} dashboard/rule files, all exported")
    print("70-metrics: OK")
finally:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
    shutil.rmtree(WORK, ignore_errors=True)
PY
