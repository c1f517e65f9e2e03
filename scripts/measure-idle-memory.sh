#!/usr/bin/env bash
# Measures tether's user-space memory per idle upgraded connection: the RSS growth of one
# `tether serve` process per 10,000 idle connections, up to TOTAL (default 19,000) idle
# connections on one node. In the same run it measures a baseline: the `hold101` example of
# tether-shards (bare glommio on the same runtime: accept, answer a canned 101, hold the
# socket). Clients are separate Python processes (scripts/idle-clients.py, PER_PROC
# connections each) because one process holds fewer than 20,000 descriptors here.
#
#   cargo build --release -p tether --bin tether -p tether-shards --example hold101
#   scripts/measure-idle-memory.sh
#   TOTAL=19000 SHARDS=2 PER_PROC=5000 RUNS=3 scripts/measure-idle-memory.sh
#   TLS=1 scripts/measure-idle-memory.sh   # also tether's wss:// listener (ECDSA P-256 test
#                                          # certificate from scripts/test-pki.sh; TLS 1.3)
#   TLS=1 TLS_OTHER_BIN=/path/to/older/tether scripts/measure-idle-memory.sh
#                                          # and another build's wss:// listener in the same run
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${CARGO_TARGET_DIR:-target}"
BIN="${TETHER_BIN:-$TARGET/release/tether}"
BASELINE_BIN="${BASELINE_BIN:-$TARGET/release/examples/hold101}"
TOTAL=${TOTAL:-19000}
TLS=${TLS:-0}
TLS_OTHER_BIN="${TLS_OTHER_BIN:-}"
SHARDS=${SHARDS:-2}
PER_PROC=${PER_PROC:-5000}
RUNS=${RUNS:-1}
WARM=100
for b in "$BIN" "$BASELINE_BIN"; do
    [ -x "$b" ] || { echo "build first: cargo build --release -p tether --bin tether -p tether-shards --example hold101 ($b missing)" >&2; exit 1; }
done
[ "$TOTAL" -gt 10000 ] || { echo "TOTAL must exceed 10000" >&2; exit 1; }

tmp=$(mktemp -d)
client_pids=()
server_pid=""
stop_all() {
    for p in "${client_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${client_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    client_pids=()
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap 'stop_all; rm -rf "$tmp"' EXIT

rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$server_pid/status"; }
slab_kib() { awk '/^Slab:/{print $2}' /proc/meminfo; }

# Opens $1 connections to $port in processes of at most PER_PROC each; waits for all.
src_next=1
open_clients() {
    local left=$1 outs=()
    while [ "$left" -gt 0 ]; do
        local n=$(( left < PER_PROC ? left : PER_PROC ))
        local out="$tmp/client.$src_next"
        SRC_FIRST=$(( 1 + src_next % 200 )) SRC_ADDRS=1 \
            TLS_CA="${tls_ca:-}" python3 scripts/idle-clients.py "$n" 127.0.0.1 "$port" /echo >"$out" 2>&1 &
        client_pids+=($!)
        outs+=("$out")
        src_next=$(( src_next + 1 ))
        left=$(( left - n ))
    done
    for out in "${outs[@]}"; do
        for _ in $(seq 1200); do [ -s "$out" ] && break; sleep 0.1; done
        grep -q '^ready' "$out" || { echo "client failed: $(cat "$out")" >&2; exit 1; }
    done
}

# measure LABEL: the server is running as $server_pid on $port. Prints one result line.
measure() {
    local label=$1
    open_clients "$WARM"; sleep 2
    local rss0 slab0 rss1 rss2 slab2
    rss0=$(rss_kib); slab0=$(slab_kib)
    open_clients 10000; sleep 2
    rss1=$(rss_kib)
    open_clients $(( TOTAL - 10000 )); sleep 2
    rss2=$(rss_kib); slab2=$(slab_kib)
    if [ -n "${admin:-}" ]; then
        local c
        c=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^tether_connections\{/{s+=$2} END{print s+0}')
        [ "$c" -eq $(( TOTAL + WARM )) ] || { echo "expected $(( TOTAL + WARM )) upgraded connections, tether reports $c" >&2; exit 1; }
    fi
    awk -v l="$label" -v a="$rss0" -v b="$rss1" -v c="$rss2" -v t="$TOTAL" -v s0="$slab0" -v s2="$slab2" 'BEGIN {
        printf "%-9s RSS %6d KiB at %d conns, %6d KiB at +10000, %6d KiB at +%d | per 10k: %5d KiB = %4.0f B/conn | over %d: %4.0f B/conn | kernel slab %4.0f B/conn (both ends)\n",
            l, a, 100, b, c, t, b - a, (b - a) * 1024 / 10000, t, (c - a) * 1024 / t, (s2 - s0) * 1024 / t
    }'
    stop_all
    sleep 1
}

echo "idle upgraded connections: $TOTAL (+$WARM warm-up) in processes of $PER_PROC; shards=$SHARDS;" \
     "open files $(ulimit -Hn); kernel $(uname -r); $(nproc) CPUs"
for run in $(seq "$RUNS"); do
    # Baseline: bare glommio on tether-shards.
    "$BASELINE_BIN" 127.0.0.1:0 "$SHARDS" >"$tmp/baseline.out" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do grep -q "listen=" "$tmp/baseline.out" && break; sleep 0.1; done
    port=$(sed -nE 's/^listen=.*:([0-9]+)$/\1/p' "$tmp/baseline.out")
    admin=""
    measure "baseline"

    "$BIN" serve --shards "$SHARDS" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --echo \
        --ping-idle 1h --silence-timeout 2h 2>"$tmp/server.log" &
    server_pid=$!
    for _ in $(seq 100); do grep -q "tether serving" "$tmp/server.log" && break; sleep 0.1; done
    line=$(grep "tether serving" "$tmp/server.log") || { cat "$tmp/server.log"; exit 1; }
    port=$(sed -E 's/.* listen=[^ ]*:([0-9]+) .*/\1/' <<<"$line")
    admin=$(sed -E 's/.* admin=[^ ]*:([0-9]+) .*/\1/' <<<"$line")
    measure "tether"

    if [ "$TLS" = 1 ]; then
        [ -d "$tmp/pki" ] || bash scripts/test-pki.sh "$tmp/pki"
        for tls_bin in "$BIN" $TLS_OTHER_BIN; do
            "$tls_bin" serve --shards "$SHARDS" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --echo \
                --tls-listen 127.0.0.1:0 --tls-cert "$tmp/pki/cert.pem" --tls-key "$tmp/pki/key.pem" \
                --ping-idle 1h --silence-timeout 2h 2>"$tmp/server.log" &
            server_pid=$!
            for _ in $(seq 100); do grep -q "tether serving" "$tmp/server.log" && break; sleep 0.1; done
            line=$(grep "tether serving" "$tmp/server.log") || { cat "$tmp/server.log"; exit 1; }
            port=$(sed -E 's/.* tls_listen=[^ ]*:([0-9]+) .*/\1/' <<<"$line")
            admin=$(sed -E 's/.* admin=[^ ]*:([0-9]+) .*/\1/' <<<"$line")
            tls_ca="$tmp/pki/ca.pem"
            if [ "$tls_bin" = "$BIN" ]; then measure "tether-wss"; else measure "other-wss"; fi
            tls_ca=""
        done
    fi
done
