#!/usr/bin/env bash
# Independent clients against tether's /echo: Python `websockets` (pytest) and Node's `ws` and
# built-in WebSocket (node --test), over ws:// and then over wss:// (a test CA made for the run
# by scripts/test-pki.sh, trusted by the clients through SSL_CERT_FILE and NODE_EXTRA_CA_CERTS;
# each client verifies the certificate and the host name), and headless Chromium over wss://
# (tests/interop/browser_tls.mjs, trusting the test certificate by its public key). Starts one tether node (release
# binary) with both listeners on free loopback ports and stops it on exit. Fails, never skips,
# when the binary or a client is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin="${CARGO_TARGET_DIR:-target}/release/tether"
if [ ! -x "$bin" ]; then
    echo "interop: $bin not found: run 'cargo build --release' first" >&2
    exit 1
fi
if [ ! -d tests/node/node_modules/ws ]; then
    echo "interop: tests/node/node_modules missing: run scripts/setup.sh (npm ci)" >&2
    exit 1
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port="$(free_port)"
tls_port="$(free_port)"
admin="$(free_port)"
log="$(mktemp -t tether-interop.XXXXXX.log)"
pki="$(mktemp -d -t tether-interop-pki.XXXXXX)"
bash scripts/test-pki.sh "$pki"

"$bin" serve --shards 2 --echo --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin" \
    --tls-listen "127.0.0.1:$tls_port" --tls-cert "$pki/cert.pem" --tls-key "$pki/key.pem" \
    >"$log" 2>&1 &
pid=$!
stop() {
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf --one-file-system "$pki"
}
trap stop EXIT

for _ in $(seq 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "interop: tether exited during start-up; its log:" >&2
        cat "$log" >&2
        exit 1
    fi
    if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$port" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
export TETHER_ECHO_URL="ws://127.0.0.1:$port/echo"
echo "interop: tether pid $pid at $TETHER_ECHO_URL (log: $log)"

status=0
started=$(date +%s)
python3 -m pytest -q tests/interop || status=1
(cd tests/node && node --experimental-websocket --test echo.test.mjs) || status=1
# The same suites over wss://; the clients trust only the system CAs plus the test CA.
echo "interop: over wss://localhost:$tls_port/echo"
TETHER_ECHO_URL="wss://localhost:$tls_port/echo" SSL_CERT_FILE="$pki/ca.pem" \
    python3 -m pytest -q tests/interop || status=1
(cd tests/node && TETHER_ECHO_URL="wss://localhost:$tls_port/echo" \
    NODE_EXTRA_CA_CERTS="$pki/ca.pem" node --experimental-websocket --test echo.test.mjs) || status=1
# Headless Chromium over wss://, trusting the test certificate by its public key's SHA-256.
spki="$(openssl x509 -in "$pki/cert.pem" -pubkey -noout | openssl pkey -pubin -outform der |
    openssl dgst -sha256 -binary | base64)"
node tests/interop/browser_tls.mjs "wss://localhost:$tls_port/echo" "$spki" || status=1
if ! kill -0 "$pid" 2>/dev/null; then
    echo "interop: tether died during the tests; its log:" >&2
    tail -50 "$log" >&2
    status=1
fi
echo "interop: done in $(($(date +%s) - started)) s"
exit "$status"
