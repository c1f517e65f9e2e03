#!/usr/bin/env bash
# Where a server's CPU goes per handshake. Starts each server command on CPU 0 (or on all CPUs
# with --cpus all), runs tether-loadgen on CPU 1 against its /echo (connect --clients at --rate,
# hold 1 s, close), and reads the server's utime+stime from /proc before and after. Several
# --server commands are run alternately (A/B), --runs times each, so that a noisy machine
# affects all of them alike. Per run it prints the server's and loadgen's CPU per connection and
# their ratio (the ratio is steadier than either: both slow down together when the host does);
# at the end the median of each. With --perf it records the server with `perf record -e
# cpu-clock -g` (software clock: no hardware counters needed) and prints the top symbols.
#
#   scripts/profile-handshakes.sh --server "target/release/tether serve --echo --shards 1 --admin 127.0.0.1:0"
#   scripts/profile-handshakes.sh --runs 5 --server "A ..." --server "B ..."     # A/B
#   scripts/profile-handshakes.sh --perf --clients 19000 --rate 4000 --server "..."
#
# Each server command gets `--listen 127.0.0.1:PORT` appended (PORT below the ephemeral range, so
# that loadgen's TIME_WAIT sockets from earlier runs cannot hold it). Options [defaults]:
#   --clients N [19000]  --rate R per second [4000]  --runs N [3]  --cpus 0|all [0]
#   --perf               record and report the last run of each server (perf.data in --out)
#   --out DIR            [${CARGO_TARGET_DIR:-target}/profile-handshakes]
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_DIR=${CARGO_TARGET_DIR:-target}
LOADGEN_BIN=${LOADGEN_BIN:-$TARGET_DIR/release/tether-loadgen}

clients=19000
rate=4000
runs=3
cpus=0
perf=0
out="$TARGET_DIR/profile-handshakes"
servers=()
while [ $# -gt 0 ]; do
    case "$1" in
        --server) servers+=("$2"); shift ;;
        --clients) clients=$2; shift ;;
        --rate) rate=$2; shift ;;
        --runs) runs=$2; shift ;;
        --cpus) cpus=$2; shift ;;
        --perf) perf=1 ;;
        --out) out=$2; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "profile-handshakes: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ ${#servers[@]} -gt 0 ] || { echo "profile-handshakes: give at least one --server" >&2; exit 2; }
[ -x "$LOADGEN_BIN" ] || { echo "profile-handshakes: no $LOADGEN_BIN (cargo build --release -p tether-loadgen)" >&2; exit 2; }
[ "$perf" = 0 ] || command -v perf >/dev/null || { echo "profile-handshakes: perf not installed" >&2; exit 2; }
mkdir -p "$out"
case "$cpus" in 0) srv_cpu=(taskset -c 0); lg_cpu=(taskset -c 1) ;; all) srv_cpu=(); lg_cpu=() ;;
    *) echo "profile-handshakes: --cpus 0|all" >&2; exit 2 ;; esac

spid=""
cleanup() { [ -z "$spid" ] || kill "$spid" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
free_port() {
    local p
    while :; do
        p=$((5000 + RANDOM % 5000))
        python3 - "$p" <<'EOF' && { echo "$p"; return; }
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
    done
}

results="$out/runs.tsv"
printf 'server\trun\thandshakes_ok\terrors\tconnects_per_s\tserver_us\tloadgen_us\tratio\n' >"$results"
hz=$(getconf CLK_TCK)
for run in $(seq "$runs"); do
    for i in "${!servers[@]}"; do
        port=$(free_port)
        read -r -a cmd <<<"${servers[$i]}"
        "${srv_cpu[@]}" "${cmd[@]}" --listen "127.0.0.1:$port" >"$out/server-$i.log" 2>&1 &
        spid=$!
        for _ in $(seq 50); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            sleep 0.1
        done
        ppid=""
        if [ "$perf" = 1 ] && [ "$run" = "$runs" ]; then
            perf record -q -e cpu-clock -F 2999 -g -p "$spid" -o "$out/perf-$i.data" 2>/dev/null &
            ppid=$!
            sleep 0.5
        fi
        t0=$(cpu_ticks "$spid")
        "${lg_cpu[@]}" "$LOADGEN_BIN" --url "ws://127.0.0.1:$port/echo" --clients "$clients" \
            --rate "$rate" --hold 1s --quiet --json "$out/loadgen-$i.json" >/dev/null 2>&1 || true
        t1=$(cpu_ticks "$spid")
        [ -z "$ppid" ] || { kill -INT "$ppid"; wait "$ppid" || true; }
        kill "$spid"; wait "$spid" 2>/dev/null || true; spid=""
        python3 - "$out/loadgen-$i.json" "$i" "$run" "$t0" "$t1" "$hz" >>"$results" <<'EOF'
import json, sys
path, i, run, t0, t1, hz = sys.argv[1:]
v = json.load(open(path))
ok = max(1, v["handshakes_ok"])
srv = (int(t1) - int(t0)) * 1e6 / int(hz) / ok
lg = v["loadgen_cpu_us_per_connection"]
print(f"{i}\t{run}\t{v['handshakes_ok']}\t{v['handshake_errors_total']}\t"
      f"{v['connect_rate_achieved_per_s']:.0f}\t{srv:.1f}\t{lg:.1f}\t{srv / lg:.3f}")
EOF
        tail -n 1 "$results" | awk -F'\t' -v s="${servers[$i]}" \
            '{printf "run %s  %-60.60s ok %s err %s  %s/s  server %s us  loadgen %s us  ratio %s\n", $2, s, $3, $4, $5, $6, $7, $8}'
        sleep 2
    done
done

echo "== medians over $runs runs (server CPU us per connection, loadgen's, their ratio)"
python3 - "$results" "${servers[@]}" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
for i, cmd in enumerate(sys.argv[2:]):
    rs = [r for r in rows if r["server"] == str(i)]
    med = lambda k: statistics.median(float(r[k]) for r in rs)
    spread = lambda k: f"{min(float(r[k]) for r in rs):g}-{max(float(r[k]) for r in rs):g}"
    print(f"{cmd}\n    server {med('server_us'):.1f} us ({spread('server_us')}), loadgen "
          f"{med('loadgen_us'):.1f} us, ratio {med('ratio'):.3f} ({spread('ratio')}), "
          f"errors {sum(int(r['errors']) for r in rs)}")
EOF
if [ "$perf" = 1 ]; then
    for i in "${!servers[@]}"; do
        echo "== perf: ${servers[$i]} (self time, top 25)"
        perf report -i "$out/perf-$i.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
            grep -E '^ +[0-9]' | head -25 | cut -c1-140
    done
fi
