#!/usr/bin/env bash
# Deployment files under deploy/, checked with the real tools (release binary):
# - the systemd unit passes `systemd-analyze verify` with no complaint (run in a private mount
#   namespace where /usr/local/bin/tether is the release binary, as on an installed host);
# - the container's seccomp profile is valid Docker-format JSON that allows io_uring, and a
#   node started under it (applied with libseccomp, as a container runtime does: docker cannot
#   run on this machine) serves /echo and drains to exit 0 on SIGTERM; the same profile without
#   the three io_uring calls (what Docker's default profile does) makes the node exit 1 at once
#   with a message naming seccomp and the profile to use.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${CARGO_TARGET_DIR:-target}/release/tether"
if [ ! -x "$BIN" ]; then
    echo "65-deploy: $BIN is missing; build with: cargo build --release --workspace --bins" >&2
    exit 1
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/tether"

echo "65-deploy: systemd-analyze verify deploy/systemd/tether.service"
out="$(unshare -m sh -c "mount -t tmpfs tmpfs /usr/local/bin && cp '$BIN' /usr/local/bin/tether \
    && systemd-analyze verify deploy/systemd/tether.service" 2>&1)" || {
    echo "65-deploy: FAIL: systemd-analyze verify exited non-zero: $out" >&2; exit 1; }
if [ -n "$out" ]; then
    echo "65-deploy: FAIL: systemd-analyze verify complained: $out" >&2
    exit 1
fi
# The stop timeout must cover the default drain (drain_delay 0 s + drain_time 30 s).
grep -q '^TimeoutStopSec=45$' deploy/systemd/tether.service
grep -q '^Type=notify$' deploy/systemd/tether.service

exec python3 - "$BIN" <<'PY'
import json, os, re, signal, socket, subprocess, sys, tempfile, time

BIN = sys.argv[1]
PROFILE = "deploy/container/seccomp-tether.json"
EXEC = "deploy/container/seccomp-exec.py"
profile = json.load(open(PROFILE))
allowed = {n for g in profile["syscalls"] if g["action"] == "SCMP_ACT_ALLOW" for n in g["names"]}
for name in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
    assert name in allowed, f"{PROFILE} does not allow {name}"
assert profile["defaultAction"] == "SCMP_ACT_ERRNO", "the profile must be an allow-list"
assert PROFILE.split("/")[-1] in open("deploy/container/Containerfile").read()

work = tempfile.mkdtemp(prefix="tether-65-deploy-")
log_path = os.path.join(work, "node.log")
log = open(log_path, "w")
node = subprocess.Popen([sys.executable, EXEC, PROFILE, "--", BIN, "serve", "--listen", "127.0.0.1:0",
                         "--admin", "127.0.0.1:0", "--shards", "1", "--echo", "--drain-time", "2s"],
                        stdout=subprocess.DEVNULL, stderr=log)
try:
    deadline = time.monotonic() + 30
    m = None
    while time.monotonic() < deadline and m is None and node.poll() is None:
        m = re.search(r"tether serving.* listen=\S+:(\d+)", open(log_path).read())
        time.sleep(0.05)
    if m is None:
        sys.exit(f"65-deploy: FAIL: node did not start under {PROFILE}:\n{open(log_path).read()}")
    port = int(m.group(1))
    import asyncio, websockets

    async def echo():
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo") as ws:
            await ws.send("under seccomp")
            assert await asyncio.wait_for(ws.recv(), 10) == "under seccomp"

    asyncio.run(echo())
    node.send_signal(signal.SIGTERM)
    rc = node.wait(timeout=30)
    if rc != 0:
        sys.exit(f"65-deploy: FAIL: node under the profile exited {rc} after SIGTERM:\n{open(log_path).read()}")
    print(f"65-deploy: a node under {PROFILE} ({len(allowed)} system calls) served /echo and drained to exit 0")
finally:
    if node.poll() is None:
        node.kill()
        node.wait()

drop = []
for name in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
    drop += ["--drop", name]
started = time.monotonic()
refused = subprocess.run([sys.executable, EXEC, PROFILE, *drop, "--", BIN, "serve", "--listen", "127.0.0.1:0",
                          "--admin", "127.0.0.1:0", "--shards", "1"], capture_output=True, text=True, timeout=60)
took = time.monotonic() - started
if refused.returncode != 1 or "io_uring is not available" not in refused.stderr or "seccomp" not in refused.stderr:
    sys.exit(f"65-deploy: FAIL: without io_uring: exit {refused.returncode}, stderr:\n{refused.stderr}")
if "panicked" in refused.stderr or took > 10:
    sys.exit(f"65-deploy: FAIL: without io_uring the node should fail at once with one message ({took:.1f} s):\n{refused.stderr}")
print(f"65-deploy: without io_uring the node exits 1 in {took:.2f} s: "
      + refused.stderr.strip().splitlines()[-1])
print("65-deploy: OK")
PY
