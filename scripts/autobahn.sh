#!/usr/bin/env bash
# Runs Autobahn|Testsuite's fuzzingclient against a WebSocket echo endpoint and diffs the
# per-case outcome (behavior, behaviorClose) against tests/autobahn/expected.json.
#
#   scripts/autobahn.sh [--quick] [--tls] [--out DIR] [--agent NAME] [--no-diff] [URL]
#
# Without URL it starts `tether serve --echo` (the release binary under
# ${CARGO_TARGET_DIR:-target}/release) on free loopback ports and stops it on exit.
# --quick    cases 1-11 plus 12.1.1 and 13.1.1 (about 20 s); default: every case 1-13.
# --tls      run over wss:// instead: tether gets a wss:// listener with a certificate made
#            for the run by scripts/test-pki.sh (wstest does not verify certificates); the
#            expectation file is the same as for ws://.
# --out DIR  where the reports go (default ${CARGO_TARGET_DIR:-target}/autobahn/<agent>-<mode>).
# --no-diff  only print the per-category counts (for reference runs against other servers).
# Exit status: 0 when every case matches the expectation, 1 on any difference, 2 on a set-up
# or run error. wstest is Python 2 only: it runs inside the Debian bullseye tree built by
# scripts/setup.d/20-autobahn.sh (called here; fast when the tree exists). Needs root.
set -euo pipefail
# The body is one compound command, read whole before it runs: editing this file during a
# (long) run cannot derail the run.
{
cd "$(dirname "$0")/.."
repo="$PWD"

mode=full
out=""
agent=""
diff=yes
url=""
tls=no
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) mode=quick ;;
        --tls) tls=yes ;;
        --out) out="$2"; shift ;;
        --agent) agent="$2"; shift ;;
        --no-diff) diff=no ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        ws://*|wss://*) url="$1" ;;
        *) echo "autobahn: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[autobahn] %s\n' "$*" >&2; }
die() { printf '[autobahn] error: %s\n' "$*" >&2; exit 2; }

ROOT="${TETHER_AUTOBAHN_ROOT:-/var/cache/tether-autobahn/bullseye}"
export TETHER_AUTOBAHN_ROOT="$ROOT"
bash scripts/setup.d/20-autobahn.sh || die "could not build the Autobahn tree"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

server_pid=""
rundir=""
pki=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    if [ -n "$rundir" ]; then rm -rf --one-file-system "$rundir"; fi
    if [ -n "$pki" ]; then rm -rf --one-file-system "$pki"; fi
}
trap cleanup EXIT
trap 'exit 2' INT TERM

if [ -z "$url" ]; then
    bin="${CARGO_TARGET_DIR:-target}/release/tether"
    [ -x "$bin" ] || die "$bin not found: run 'cargo build --release' first"
    port="$(free_port)"
    admin="$(free_port)"
    agent="${agent:-tether}"
    server_log="$(mktemp -t tether-autobahn-server.XXXXXX.log)"
    log "starting $bin serve --echo on 127.0.0.1:$port (log: $server_log)"
    # Autobahn's case 9 sends messages and frames of up to 16 MiB and expects them echoed: the
    # run raises the 1 MiB defaults to that (the reference servers in docs/conformance.md allow
    # 32 MiB likewise); the outbound queue must hold one such echo.
    tls_args=()
    if [ "$tls" = yes ]; then
        pki="$(mktemp -d -t tether-autobahn-pki.XXXXXX)"
        bash scripts/test-pki.sh "$pki" || die "could not make the test certificate"
        port="$(free_port)"
        tls_args=(--tls-listen "127.0.0.1:$port" --tls-cert "$pki/cert.pem" --tls-key "$pki/key.pem")
        plain_port="$(free_port)"
    else
        plain_port="$port"
    fi
    "$bin" serve --echo --listen "127.0.0.1:$plain_port" --admin "127.0.0.1:$admin" \
        --frame-bytes-max $((16 << 20)) --message-bytes-max $((16 << 20)) \
        --outbound-bytes-max $((32 << 20)) "${tls_args[@]}" >"$server_log" 2>&1 &
    server_pid=$!
    if [ "$tls" = yes ]; then url="wss://127.0.0.1:$port/echo"; else url="ws://127.0.0.1:$port/echo"; fi
    ready=no
    for _ in $(seq 100); do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            tail -20 "$server_log" >&2
            die "tether exited during start-up"
        fi
        if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$port" 2>/dev/null; then
            ready=yes; break
        fi
        sleep 0.1
    done
    [ "$ready" = yes ] || die "tether did not listen on 127.0.0.1:$port within 10 s"
fi
agent="${agent:-peer}"
if [ "$tls" = yes ]; then mode_dir="$mode-tls"; else mode_dir="$mode"; fi
out="${out:-${CARGO_TARGET_DIR:-target}/autobahn/$agent-$mode_dir}"

if [ "$mode" = quick ]; then
    cases='["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "8.*", "9.*", "10.*", "11.*", "12.1.1", "13.1.1"]'
    limit_s=600
else
    cases='["*"]'
    limit_s=3600
fi

# The run directory lives inside the tree (wstest sees only the tree); reports are copied out.
rundir="$(mktemp -d "$ROOT/tmp/run.XXXXXX")"
inner="/tmp/$(basename "$rundir")"
cat >"$rundir/spec.json" <<EOF
{
  "outdir": "./reports/servers",
  "servers": [{"agent": "$agent", "url": "$url"}],
  "cases": $cases,
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
EOF

log "wstest -m fuzzingclient ($mode) against $url"
started=$(date +%s)
# Mounts exist only in this private mount namespace and go away with it.
set +e
timeout --kill-after=10 "$limit_s" unshare --mount --propagation private bash -euo pipefail -c '
    R=$1; dir=$2
    trap "umount -l \"$R/dev/pts\" \"$R/dev\" \"$R/proc\" 2>/dev/null || true" EXIT
    mount -t proc proc "$R/proc"
    mount --bind /dev "$R/dev"
    mount --bind /dev/pts "$R/dev/pts"
    chroot "$R" env -u PIP_FIND_LINKS --chdir="$dir" HOME=/root LANG=C.UTF-8 \
        wstest -m fuzzingclient -s spec.json
' run "$ROOT" "$inner" >"$rundir/wstest.log" 2>&1
status=$?
set -e
elapsed=$(($(date +%s) - started))
if [ "$status" != 0 ] || [ ! -f "$rundir/reports/servers/index.json" ]; then
    tail -30 "$rundir/wstest.log" >&2
    [ "$status" = 124 ] && die "wstest did not finish within $limit_s s"
    die "wstest failed (exit $status)"
fi
rm -rf --one-file-system "$out"
mkdir -p "$out"
cp -r "$rundir/reports/servers/." "$out/"
cp "$rundir/spec.json" "$rundir/wstest.log" "$out/"
log "wstest finished in ${elapsed} s; reports in $out"

args=("$out/index.json" --agent "$agent" --mode "$mode")
if [ "$diff" = yes ]; then args+=(--expected "$repo/tests/autobahn/expected.json"); fi
python3 "$repo/tests/autobahn/compare.py" "${args[@]}"
exit
}
