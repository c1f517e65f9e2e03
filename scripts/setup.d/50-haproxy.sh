#!/usr/bin/env bash
# HAProxy (Debian package), the L4 balancer tests/server_proxy.rs puts in front of tether to
# check the PROXY protocol (send-proxy, send-proxy-v2). Only the binary is used: the test runs
# its own haproxy in the foreground on free ports; nothing is enabled or started here.
set -euo pipefail
if ! command -v haproxy >/dev/null 2>&1; then
    echo "[setup] apt-get install haproxy"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends haproxy >/dev/null \
        || { apt-get update -q >/dev/null \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends haproxy >/dev/null; }
fi
