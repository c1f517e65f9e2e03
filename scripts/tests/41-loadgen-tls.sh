#!/usr/bin/env bash
# tether-loadgen over wss:// against a real node (release binaries) with a test CA made for the
# run by scripts/test-pki.sh:
#   1. 200 clients with --ca-file, echo messages over TLS, then a reconnect storm of all of them
#      with resumption on: 200 full handshakes, then 200 resumed ones (each client resumes its
#      own session), echoes answered (but those in flight when the storm dropped them);
#   2. the same storm with --tls-resumption off: 400 full handshakes, none resumed;
#   3. --insecure against the same node: connects without the CA;
#   4. a CA that did not sign the node's certificate (same CA name, other key): every connect
#      fails with tls_invalid_certificate_bad_signature (the certificate really is checked).
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN="${CARGO_TARGET_DIR:-target}/release"
for b in tether tether-loadgen; do
    if [ ! -x "$BIN/$b" ]; then
        echo "41-loadgen-tls: $BIN/$b is missing; build with: cargo build --release --workspace --bins" >&2
        exit 1
    fi
done

WORK="$(mktemp -d)"
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

bash scripts/test-pki.sh "$WORK/pki"
bash scripts/test-pki.sh "$WORK/other-pki"
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port="$(free_port)"
tls_port="$(free_port)"
"$BIN/tether" serve --shards 2 --echo --listen "127.0.0.1:$port" --admin 127.0.0.1:0 \
    --tls-listen "127.0.0.1:$tls_port" --tls-cert "$WORK/pki/cert.pem" \
    --tls-key "$WORK/pki/key.pem" >"$WORK/node.log" 2>&1 &
pid=$!
for _ in $(seq 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "41-loadgen-tls: tether exited during start-up:" >&2
        cat "$WORK/node.log" >&2
        exit 1
    fi
    if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$tls_port" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
URL="wss://localhost:$tls_port/echo"
STORM=(--clients 200 --rate 400 --hold 1s --msg-rate 2 --msg-size 64 --storm-drop 100%
    --storm-backoff 200ms --quiet)

set -x
"$BIN/tether-loadgen" --url "$URL" "${STORM[@]}" --ca-file "$WORK/pki/ca.pem" \
    --json "$WORK/on.json"
"$BIN/tether-loadgen" --url "$URL" "${STORM[@]}" --ca-file "$WORK/pki/ca.pem" \
    --tls-resumption off --json "$WORK/off.json"
"$BIN/tether-loadgen" --url "$URL" --clients 50 --rate 200 --hold 0s --insecure --quiet \
    --json "$WORK/insecure.json"
"$BIN/tether-loadgen" --url "$URL" --clients 20 --rate 200 --hold 0s --quiet \
    --ca-file "$WORK/other-pki/ca.pem" --json "$WORK/wrong-ca.json" || true
set +x

python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
load = lambda name: json.load(open(f"{work}/{name}.json"))
problems = []
def expect(name, what, got, want):
    if got != want:
        problems.append(f"{name}: {what} is {got!r}, expected {want!r}")
for name, tls in (("on", {"full": 200, "resumed": 200}), ("off", {"full": 400, "resumed": 0})):
    r = load(name)
    print(name, json.dumps({k: r.get(k) for k in (
        "connected_peak", "handshakes_ok", "handshake_errors", "tls", "storm", "messages")}))
    # All 200 connected at once: the storm drops only connected clients (the sampled
    # connected_peak can miss a short moment on a loaded machine).
    expect(name, "storm.dropped", r["storm"]["dropped"], 200)
    expect(name, "handshakes_ok", r["handshakes_ok"], 400)
    expect(name, "handshake_errors_total", r["handshake_errors_total"], 0)
    expect(name, "tls", r["tls"], tls)
    expect(name, "storm.reconnected", r["storm"]["reconnected"], 200)
    m = r["messages"]
    # The storm drops connections without a close: an echo in flight then is lost (<= 1 each).
    if m["sent"] < 400 or m["received"] < m["sent"] - 200 or m["gaps"] or m["foreign"]:
        problems.append(f"{name}: echoes over TLS: {m}")
r = load("insecure")
expect("insecure", "handshakes_ok", r["handshakes_ok"], 50)
expect("insecure", "tls.full", r["tls"]["full"], 50)
r = load("wrong-ca")
print("wrong-ca", json.dumps(r["handshake_errors"]))
expect("wrong-ca", "handshakes_ok", r["handshakes_ok"], 0)
expect("wrong-ca", "handshake_errors", r["handshake_errors"],
       {"tls_invalid_certificate_bad_signature": 20})
if problems:
    sys.exit("41-loadgen-tls: FAILED: " + "; ".join(problems))
print("41-loadgen-tls: ok")
PY
