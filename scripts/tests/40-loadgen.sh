#!/usr/bin/env bash
# tether-loadgen at scale, with the release binaries: 25,000 clients (more than one process's
# open-files limit of 20,000) at 5,000 connects/s against two tether nodes (two --url), held 5 s.
# Passes when connected_peak is 25000, handshake_errors_total 0, and the run used >= 2 workers.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN="${CARGO_TARGET_DIR:-target}/release"
for b in tether tether-loadgen; do
    if [ ! -x "$BIN/$b" ]; then
        echo "40-loadgen: $BIN/$b is missing; build with: cargo build --release --workspace --bins" >&2
        exit 1
    fi
done

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Starts a node on free ports; sets NODE_PID and NODE_PORT.
start_node() {
    local log="$WORK/node$1.log"
    "$BIN/tether" serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --shards 2 --echo \
        --backlog 8192 2>"$log" >/dev/null &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    for _ in $(seq 1 300); do
        if grep -q "tether serving" "$log"; then
            NODE_PORT="$(grep -m1 "tether serving" "$log" | sed -E 's/.* listen=[^0-9]*[0-9.]+:([0-9]+).*/\1/')"
            return 0
        fi
        sleep 0.1
    done
    echo "40-loadgen: tether node $1 did not start:" >&2
    cat "$log" >&2
    exit 1
}

start_node 1; P1=$NODE_PORT; N1=$NODE_PID
start_node 2; P2=$NODE_PORT; N2=$NODE_PID
echo "40-loadgen: tether nodes on ports $P1 (pid $N1) and $P2 (pid $N2)"

set -x
"$BIN/tether-loadgen" --url "ws://127.0.0.1:$P1/echo" --url "ws://127.0.0.1:$P2/echo" \
    --clients 25000 --rate 5000 --hold 5s --json "$WORK/out.json" \
    --server-pid "$N1" --server-pid "$N2"
set +x

python3 - "$WORK/out.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({k: r.get(k) for k in (
    "clients_target", "connected_peak", "handshakes_ok", "handshake_errors_total",
    "handshake_errors", "workers", "connect_rate_achieved_per_s", "handshake_latency_us",
    "duration_s", "loadgen_cpu_us_per_connection", "server_cpu_us_per_connection")}, indent=1))
problems = []
if r["connected_peak"] != 25000:
    problems.append(f"connected_peak {r['connected_peak']} != 25000")
if r["handshake_errors_total"] != 0:
    problems.append(f"handshake_errors_total {r['handshake_errors_total']} != 0: {r['handshake_errors']}")
if r["workers"] < 2:
    problems.append(f"workers {r['workers']} < 2")
if r["handshake_latency_us"]["count"] != 25000:
    problems.append(f"handshake latency count {r['handshake_latency_us']['count']} != 25000")
if problems:
    sys.exit("40-loadgen: FAILED: " + "; ".join(problems))
print("40-loadgen: ok")
PY

# An impossible plan is refused before anything connects.
if "$BIN/tether-loadgen" --url "ws://127.0.0.1:$P1/echo" --clients 100000 --rate 1000 2>"$WORK/refusal.txt"; then
    echo "40-loadgen: a plan beyond the port range was not refused" >&2
    exit 1
fi
grep -q "refused:" "$WORK/refusal.txt"
cat "$WORK/refusal.txt"
echo "40-loadgen: all passed"
