#!/usr/bin/env bash
# Side-by-side benchmarks: builds tether, tether-loadgen and tether-bench (release), copies the
# binaries aside (so that a concurrent build into a shared target dir cannot swap them mid-run),
# runs every scenario under bench-harness/scenarios/ (or those named as arguments), and with
# --publish copies each report and its SVG plots to docs/bench/<scenario>/.
#
#   scripts/bench-side-by-side.sh [--publish] [SCENARIO...]    e.g. handshake-10k idle-memory
#
# Each scenario takes one to three minutes here (3 repetitions × 4–5 servers); see
# docs/benchmarks.md ("Side by side") for the results and how to read them.
set -euo pipefail
cd "$(dirname "$0")/.."

publish=0
names=()
for a in "$@"; do
    case "$a" in
        --publish) publish=1 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) names+=("$a") ;;
    esac
done
if [ ${#names[@]} -eq 0 ]; then
    for f in bench-harness/scenarios/*.toml; do names+=("$(basename "$f" .toml)"); done
fi

target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p tether -p tether-loadgen -p tether-bench
bin="$target/bench-bin"
mkdir -p "$bin"
for b in tether tether-loadgen tether-bench peer-tungstenite peer-fastwebsockets peer-raw101; do
    cp -f "$target/release/$b" "$bin/$b"
done

# A missed target (tether-bench exits 99) is reported and published like any result; the script
# runs every scenario and exits with the last non-zero status.
status=0
for name in "${names[@]}"; do
    "$bin/tether-bench" run "bench-harness/scenarios/$name.toml" --bin-dir "$bin" --out "$target/bench" ||
        status=$?
    [ "$status" = 0 ] || [ "$status" = 99 ] || exit "$status"
    if [ "$publish" = 1 ]; then
        mkdir -p "docs/bench/$name"
        cp -f "$target/bench/$name/report.md" "$target/bench/$name/results.json" "docs/bench/$name/"
        cp -f "$target/bench/$name/"*.svg "docs/bench/$name/"
    fi
done
exit "$status"
