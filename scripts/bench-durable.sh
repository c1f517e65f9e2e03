#!/usr/bin/env bash
# Durable delivery benchmarks (docs/benchmarks.md, "Durable delivery"): the set-up (nats-server
# with JetStream, tether nodes) around tether-loadgen, which does every measurement (its
# durable workload, its backend publisher, its server RSS samples). Each mode measures the
# ephemeral path in the same invocation, alternating, and prints one JSON line per run, then a
# median/min/max table.
#
#   scripts/bench-durable.sh delivery [DEVICES] [PER_DEVICE] [REPS]     [10000 10 3]
#       One node (2 shards, --durable, JWT auth), one nats-server (-js, file store). Per rep:
#       ephemeral   DEVICES devices connect, then PER_DEVICE core-NATS pushes each (--burst):
#                   time from the burst until the last device has all of them;
#       durable     the same with JetStream publishes to tether.mbox.<device>; each device
#                   acknowledges every 10th and its last (confirmed): time until the last
#                   device's last ack was confirmed;
#       replay      PER_DEVICE durable messages each stored while the devices are offline
#                   (--preload), then all connect at once presenting ?last_seq=, replay and
#                   acknowledge: time from the first connect until the last device's last ack
#                   was confirmed.
#   scripts/bench-durable.sh memory [DEVICES] [NODES] [REPS]            [100000 7 1]
#       DEVICES idle devices on NODES single-shard nodes joined by one nats-server (-js), held
#       15 s; without and with --durable (fresh nats-server and nodes each, alternating):
#       tether and nats-server RSS before the first connect and 1 s before the end of the
#       hold, the difference divided by the devices connected then.
#
# DRAIN (default 300s): how long a delivery run waits for its devices to complete; RATE
# (default 5000): connects per second of a memory run.
# Needs release binaries ($CARGO_TARGET_DIR/release/{tether,tether-loadgen}) and nats-server.
# Run heavy modes under the machine-wide lock: flock /work/bench.lock scripts/bench-durable.sh ...
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_DIR=${CARGO_TARGET_DIR:-target}
TETHER_BIN=${TETHER_BIN:-$TARGET_DIR/release/tether}
LOADGEN_BIN=${LOADGEN_BIN:-$TARGET_DIR/release/tether-loadgen}
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
NATS_BIN=$(command -v nats-server) || { echo "nats-server not found" >&2; exit 1; }
SECRET=bench-durable-secret-0123456789abcdef
SOURCES=127.0.0.2-127.0.0.40
OUT=${OUT:-$TARGET_DIR/bench-durable}
mkdir -p "$OUT"

pgids=()
cleanup() {
    for g in "${pgids[@]+"${pgids[@]}"}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
    sleep 1
    for g in "${pgids[@]+"${pgids[@]}"}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
    pgids=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start LOG CMD...: in its own process group; sets $started_pid.
start() {
    local logf=$1
    shift
    setsid "$@" >"$logf" 2>&1 </dev/null &
    started_pid=$!
    pgids+=("$started_pid")
}

wait_for_line() { # file pattern timeout_s
    for _ in $(seq $(( $3 * 10 ))); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1: $(tail -3 "$1")" >&2
    return 1
}

# up DIR NODES SHARDS [serve args...]: nats-server with JetStream and NODES tether nodes;
# sets $nats_url, $urls (loadgen --url list) and $pids (loadgen --server-pid list).
up() {
    local dir=$1 nodes=$2 shards=$3
    shift 3
    rm -rf "$dir" && mkdir -p "$dir/js"
    start "$dir/nats.log" "$NATS_BIN" -a 127.0.0.1 -p -1 -js -sd "$dir/js" --ports_file_dir "$dir"
    pids=(--server-pid "$started_pid")
    wait_for_line "$dir/nats.log" "Server is ready" 20
    nats_url="nats://127.0.0.1:$(sed -nE 's/.*Listening for client connections on [0-9.]+:([0-9]+).*/\1/p' "$dir/nats.log" | head -1)"
    urls=()
    local i cpus
    for i in $(seq 0 $(( nodes - 1 ))); do
        cpus=()
        [ "$shards" = 1 ] && cpus=(--cpus $(( i % 2 )))
        start "$dir/node-$i.log" env TETHER_LOG=warn,tether=info "$TETHER_BIN" serve \
            --shards "$shards" "${cpus[@]+"${cpus[@]}"}" --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
            --nats "$nats_url" --node-id "bench-$i" --jwt-secret "$SECRET" "$@"
        pids+=(--server-pid "$started_pid")
        wait_for_line "$dir/node-$i.log" "tether serving" 30
        urls+=(--url "ws://$(sed -nE 's/.* listen=([^ ]+) .*/\1/p' "$dir/node-$i.log" | head -1)/ws")
        if [[ " $* " == *" --durable "* ]]; then
            local admin
            admin=$(sed -nE 's/.* admin=([^ ]+) .*/\1/p' "$dir/node-$i.log" | head -1)
            for _ in $(seq 200); do
                curl -s "http://$admin/metrics" | grep -q '^tether_mailbox_stream_ready 1' && break
                sleep 0.1
            done
        fi
    done
}

# loadgen LABEL ARGS...: one run; its JSON report lands in $OUT/LABEL.json.
loadgen() {
    local label=$1
    shift
    "$LOADGEN_BIN" --quiet --device-jwt-secret "$SECRET" --source "$SOURCES" \
        --json "$OUT/$label.json" "$@" >"$OUT/$label.log" 2>&1 \
        || { echo "loadgen $label failed:" >&2; tail -20 "$OUT/$label.log" >&2; exit 1; }
}

# table FIELD LABEL...: median, min, max of FIELD over the runs LABEL-1..REPS.
table() {
    local field=$1
    shift
    for label in "$@"; do
        jq -s --arg l "$label" --arg f "$field" \
            '[.[] | getpath($f | split("."))] | sort | {run: $l, field: $f,
              median: .[(length - 1) / 2 | floor], min: .[0], max: .[-1], all: .}' -c \
            "$OUT/$label"-*.json
    done
}

mode=${1:-}
case "$mode" in
delivery)
    devices=${2:-10000} per=${3:-10} reps=${4:-3}
    up "$OUT/delivery" 1 2 --durable --durable-window 64
    common=(--clients "$devices" --rate 20000 --connect-timeout 30s --handshake-timeout 30s
        --drain-timeout ${DRAIN:-300s} --nats "$nats_url" "${urls[@]}" "${pids[@]}")
    for r in $(seq "$reps"); do
        loadgen "ephemeral-$r" "${common[@]}" --workload push --burst "$per" --hold 0s \
            --device-prefix "eph$r-"
        loadgen "durable-$r" "${common[@]}" --workload durable --burst "$per" --hold 0s \
            --device-prefix "dur$r-"
        loadgen "replay-$r" "${common[@]}" --workload durable --preload "$per" --hold 0s \
            --device-prefix "rep$r-"
        for l in ephemeral durable replay; do
            jq -c --arg l "$l-$r" '{run: $l, handshakes_ok, errors: .handshake_errors_total,
                connect_s: (.connect_rate_achieved_per_s as $a | if $a > 0 then .handshakes_ok / $a else null end),
                delivery: .delivery | del(.preload), preload: .delivery.preload,
                messages, complete_ms_p50: (.complete_us.p50 / 1000), complete_ms_max: (.complete_us.max / 1000),
                tether_errors}' "$OUT/$l-$r.json"
        done
    done
    table delivery.messages_per_s ephemeral durable replay
    table delivery.until_last_complete_s ephemeral durable replay
    table delivery.preload.stored_per_s replay
    ;;
memory)
    devices=${2:-100000} nodes=${3:-7} reps=${4:-1}
    for r in $(seq "$reps"); do
        for cfg in ephemeral durable; do
            extra=()
            [ "$cfg" = durable ] && extra=(--durable)
            up "$OUT/memory-$cfg" "$nodes" 1 "${extra[@]+"${extra[@]}"}"
            # Idle devices (tether protocol, nothing sent): with --durable each session has
            # its mailbox (replayed, empty) and its announcement interest.
            loadgen "memory-$cfg-$r" --workload push --clients "$devices" --rate "${RATE:-5000}" \
                --hold 15s --connect-timeout 30s --handshake-timeout 30s --nats "$nats_url" \
                "${urls[@]}" "${pids[@]}" --device-prefix "mem$r-"
            jq -c --arg l "$cfg-$r" '{run: $l, handshakes_ok, errors: .handshake_errors_total,
                connected: .server_rss.connected_at_sample,
                tether_kib: ([.server_rss.processes[] | select(.name == "tether") | .held_kib - .start_kib] | add),
                nats_kib: ([.server_rss.processes[] | select(.name == "nats-server") | .held_kib - .start_kib] | add),
                tether_start_kib: ([.server_rss.processes[] | select(.name == "tether") | .start_kib] | add),
                nats_start_kib: ([.server_rss.processes[] | select(.name == "nats-server") | .start_kib] | add)}
                | . + {tether_bytes_per_device: (.tether_kib * 1024 / .connected | round),
                       nats_bytes_per_device: (.nats_kib * 1024 / .connected | round)}' \
                "$OUT/memory-$cfg-$r.json"
            cleanup
        done
    done
    ;;
*)
    sed -n '2,26p' "$0"
    exit 2
    ;;
esac
