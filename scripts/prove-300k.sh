#!/usr/bin/env bash
# The 300,000-device proof (issue 6): host tuning, then one tether-bench command running
# bench-harness/scenarios/prove-300k.toml once (a nats-server, 17 tether nodes joined by it,
# 300,000 devices on /ws at 1,000/s from tether-loadgen on 59 loopback source addresses, 1,000
# probe devices exchanging messages across nodes while they are held; the scenario file says
# what is measured). The report lands in ${CARGO_TARGET_DIR:-target}/bench/prove-300k/
# (report.md, results.json, every process's log). Exit status: tether-bench's (99 when the
# proof failed: a device not held, a failed handshake or a lost probe message; 1 on an error).
#
#   cargo build --release -p tether -p tether-loadgen -p tether-bench
#   scripts/prove-300k.sh                                       # the proof (~7 min)
#   scripts/prove-300k.sh --set loadgen.clients=20000 --set server.nodes=3 --set loadgen.rate=2000
#
# Options: --no-tune (leave the kernel settings alone); every other argument goes to
# `tether-bench run` (--set KEY=VALUE, --out DIR, --bin-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

tune=1
args=()
for a in "$@"; do
    case "$a" in
        --no-tune) tune=0 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$a") ;;
    esac
done

if [ "$tune" = 1 ]; then
    scripts/tune-host.sh --apply | sed 's/^/tune-host: /' || echo "tune-host: a setting could not be applied"
    # Beyond tune-host.sh, for 300,000 loopback connections (only ever raised).
    raise() { # key minimum
        local path=/proc/sys/${1//.//} have
        [ -e "$path" ] || return 0
        have=$(awk '{print $1}' "$path")
        if [ "$have" -lt "$2" ]; then
            sysctl -q -w "$1=$2" >/dev/null || echo "prove-300k: WARNING: cannot raise $1 (have $have, want $2)"
        fi
    }
    raise net.core.somaxconn 65535
    raise net.ipv4.tcp_max_syn_backlog 65535
    raise fs.file-max 4194304
    raise net.netfilter.nf_conntrack_max 700000
fi

bench="${CARGO_TARGET_DIR:-target}/release/tether-bench"
[ -x "$bench" ] || { echo "prove-300k: missing $bench: cargo build --release -p tether -p tether-loadgen -p tether-bench" >&2; exit 1; }
exec "$bench" run bench-harness/scenarios/prove-300k.toml --repetitions 1 "${args[@]+"${args[@]}"}"
