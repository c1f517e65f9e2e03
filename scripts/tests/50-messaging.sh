#!/usr/bin/env bash
# Messaging suite: device protocol v1 end to end against real tether nodes and a real
# nats-server (two nodes joined by NATS, and one node with two shards on the embedded bus),
# the backend example (examples/backend.py) and the browser demo page in headless Chromium.
# Needs the release binary (scripts/test.sh builds it) and the tools scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/../.."
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
if [ ! -x "$CARGO_TARGET_DIR/release/tether" ]; then
    cargo build --release -p tether --bin tether
fi
python3 -m pytest -q -p no:cacheprovider tests/messaging
