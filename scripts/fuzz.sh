#!/usr/bin/env bash
# Fuzzes the WebSocket core and the PROXY protocol parser: runs each cargo-fuzz target in fuzz/ for a bounded time.
#
#   scripts/fuzz.sh [seconds-per-target]      (default 60)
#
# Installs cargo-fuzz when missing. Works on a stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo
# fuzz use the -Z flags it needs. New inputs go to a scratch directory, so the committed seed
# corpus in fuzz/corpus/<target>/ is only read; crashes land in fuzz/artifacts/<target>/.
# Not part of the test command (too slow): tests/ws_corpus.rs replays the seeds on every test
# run. Exits non-zero when a target finds a crash.
set -euo pipefail

seconds="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
target_dir="${CARGO_TARGET_DIR:-$root/target}/fuzz"
# No sanitizer by default: src/ws is safe Rust (no unsafe block), so AddressSanitizer would
# only slow the runs and double the build of tether's dependency tree; bounds, overflow and
# debug assertions are on in fuzz builds. FUZZ_SANITIZER=address turns it on.
sanitizer="${FUZZ_SANITIZER:-none}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

status=0
for target in handshake_request handshake_response frame_decode context_feed proxy_header; do
    mkdir -p "$scratch/$target"
    echo "=== $target: ${seconds}s (sanitizer $sanitizer)" >&2
    log="$scratch/$target.log"
    if cargo fuzz run --fuzz-dir fuzz --target-dir "$target_dir" -s "$sanitizer" "$target" \
        "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -max_len=100000 -print_final_stats=1 2>"$log"; then
        execs="$(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}')"
        echo "=== $target: ok, ${execs:-?} executions in ${seconds}s" >&2
    else
        status=1
        tail -40 "$log" >&2
        echo "=== $target: FAILED (see fuzz/artifacts/$target)" >&2
    fi
done
exit "$status"
