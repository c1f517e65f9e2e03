#!/usr/bin/env bash
# The README's server command, taken verbatim from the README's quickstart block, starts a node
# that serves: /readyz on the admin port answers 200, /ws refuses a request without a token with
# 401 (the JWT secret was accepted), and a WebSocket client gets its message echoed on /echo.
# (It once named a secret the node refuses as too short; nothing caught it.) Needs ports 8080
# and 9090 free, as the command documents them.
set -euo pipefail
cd "$(dirname "$0")/../.."

cmd=$(sed -n '/^## Quickstart/,/^```$/p' README.md | grep -m1 'cargo run' | sed 's/ *#.*$//')
[ -n "$cmd" ] || { echo "readme: no 'cargo run' line in the README's quickstart" >&2; exit 1; }
echo "readme: $cmd"
log=$(mktemp -t tether-readme.XXXXXX.log)
setsid bash -c "$cmd" >"$log" 2>&1 &
pid=$!
stop() {
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$log"
}
trap stop EXIT

ready() {
    python3 -c 'import urllib.request, sys; sys.exit(urllib.request.urlopen("http://127.0.0.1:9090/readyz", timeout=2).status != 200)' 2>/dev/null
}
# `cargo run --release` may compile first (the suites run after the release build, so normally not).
for _ in $(seq 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "readme: the command exited:" >&2; cat "$log" >&2; exit 1
    fi
    ready && break
    sleep 0.5
done
ready || { echo "readme: not ready after 300 s" >&2; cat "$log" >&2; exit 1; }

python3 - <<'EOF'
import asyncio, socket, sys
import websockets

# A real upgrade request without a token (urllib would rewrite the Connection header).
s = socket.create_connection(("127.0.0.1", 8080), timeout=5)
s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: Upgrade\r\n"
          b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: tether.v1\r\n\r\n")
status_line = s.recv(4096).split(b"\r\n", 1)[0].decode()
s.close()
if status_line.split()[1:2] != ["401"]:
    sys.exit(f"readme: /ws without a token answered {status_line!r}, expected 401")

async def echo():
    async with websockets.connect("ws://127.0.0.1:8080/echo") as ws:
        await ws.send("hello from the README")
        reply = await asyncio.wait_for(ws.recv(), 5)
        if reply != "hello from the README":
            sys.exit(f"readme: /echo answered {reply!r}")
asyncio.run(echo())
print("readme: the quickstart server is ready, /ws needs a token (401), /echo echoes")
EOF
