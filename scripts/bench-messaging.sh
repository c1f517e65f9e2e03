#!/usr/bin/env bash
# Messaging benchmark: routed device-to-device messages per second and latency percentiles,
# embedded bus vs NATS on one node, and across two nodes joined by NATS.
# Open loop (examples/msgbench.rs): latency from each message's intended send time.
# Usage: scripts/bench-messaging.sh [RATES] [REPS] [SECS]   (default "5000 10000 20000 40000" 3 5)
# Prints a markdown table (medians, min-max over REPS) and keeps raw JSON lines in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
TARGET="${CARGO_TARGET_DIR:-target}"
RATES="${1:-5000 10000 20000 40000}"
REPS="${2:-3}"
SECS="${3:-5}"
PAIRS="${PAIRS:-20}"
OUT="${OUT:-$(mktemp -t tether-msgbench-XXXX.jsonl)}"
TETHER="${TETHER_BIN:-$TARGET/release/tether}"
BENCH="${MSGBENCH_BIN:-$TARGET/release/examples/msgbench}"
[ -x "$TETHER" ] && [ -x "$BENCH" ] || cargo build --release -p tether --bin tether --example msgbench
export TETHER_JWT_SECRET="bench-secret-$(head -c8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
LOGDIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_node NAME ARGS... -> sets $LISTEN
start_node() {
    local name=$1; shift
    "$TETHER" serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 "$@" >/dev/null 2>"$LOGDIR/$name.log" &
    PIDS+=($!)
    for _ in $(seq 100); do
        LISTEN=$(grep -ao 'listen=[0-9.:]*' "$LOGDIR/$name.log" | head -1 | cut -d= -f2 || true)
        [ -n "$LISTEN" ] && return 0
        sleep 0.1
    done
    echo "node $name did not start:"; cat "$LOGDIR/$name.log"; exit 1
}

run_case() { # CASE SEND_URL RECV_URL
    for rate in $RATES; do
        for rep in $(seq "$REPS"); do
            line=$("$BENCH" --send-url "$2" --recv-url "$3" --pairs "$PAIRS" --rate "$rate" --secs "$SECS")
            echo "{\"case\":\"$1\",\"rep\":$rep,${line#\{}" | tee -a "$OUT" >&2
        done
    done
}

# 1. embedded bus: one node, two shards.
start_node embedded --shards 2
run_case "embedded, 1 node x 2 shards" "ws://$LISTEN/ws" "ws://$LISTEN/ws"
cleanup; PIDS=()

# 2. NATS: one node, two shards.
NP=$(free_port); MP=$(free_port)
nats-server -a 127.0.0.1 -p "$NP" -m "$MP" >/dev/null 2>&1 & PIDS+=($!)
sleep 0.5
start_node nats1 --shards 2 --nats "nats://127.0.0.1:$NP"
run_case "NATS, 1 node x 2 shards" "ws://$LISTEN/ws" "ws://$LISTEN/ws"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'

# 3. NATS: two nodes, one shard each (same total shards), sender on node 1, receiver on node 2.
start_node nodeA --shards 1 --cpus 0 --nats "nats://127.0.0.1:$NP" --node-id nodeA
A=$LISTEN
start_node nodeB --shards 1 --cpus 1 --nats "nats://127.0.0.1:$NP" --node-id nodeB
run_case "NATS, 2 nodes x 1 shard (A->B)" "ws://$A/ws" "ws://$LISTEN/ws"

python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cases = []
for r in rows:
    if r["case"] not in cases:
        cases.append(r["case"])
print("| path | offered msg/s | achieved msg/s (median, min-max) | lost | p50 µs | p99 µs (median, min-max) | p99.9 µs | max µs |")
print("|---|---|---|---|---|---|---|---|")
for c in cases:
    for rate in sorted({r["offered_msgs_per_s"] for r in rows if r["case"] == c}):
        rs = [r for r in rows if r["case"] == c and r["offered_msgs_per_s"] == rate]
        med = lambda k: statistics.median(r[k] for r in rs)
        rng = lambda k: f"{min(r[k] for r in rs):.0f}-{max(r[k] for r in rs):.0f}"
        print(f"| {c} | {rate} | {med('achieved_msgs_per_s'):.0f} ({rng('achieved_msgs_per_s')}) | {sum(r['lost'] for r in rs)} "
              f"| {med('latency_us_p50'):.0f} | {med('latency_us_p99'):.0f} ({rng('latency_us_p99')}) | {med('latency_us_p999'):.0f} | {max(r['latency_us_max'] for r in rs)} |")
PY
echo "raw results: $OUT" >&2
