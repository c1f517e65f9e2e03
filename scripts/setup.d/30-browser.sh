#!/usr/bin/env bash
# Headless Chromium for the browser demo test (examples/browser, driven by playwright-core from
# tests/node, which downloads no browser). Skipped when Debian's chromium is already installed.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
echo "[setup] installing chromium (Debian package)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
