#!/usr/bin/env bash
# Autobahn|Testsuite conformance of tether's /echo, quick mode (cases 1-11 plus 12.1.1 and
# 13.1.1, about half a minute each), over ws:// and then over wss://, each diffed against
# tests/autobahn/expected.json. The full run (all
# of 1-13) is `scripts/autobahn.sh`; see docs/conformance.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)
status=0
scripts/autobahn.sh --quick || status=$?
echo "autobahn (quick): exit $status in $(($(date +%s) - started)) s"
# The same cases and the same expectation over wss:// (TLS in tether, test certificate).
started=$(date +%s)
tls_status=0
scripts/autobahn.sh --quick --tls || tls_status=$?
echo "autobahn (quick, wss://): exit $tls_status in $(($(date +%s) - started)) s"
[ "$status" = 0 ] || exit "$status"
exit "$tls_status"
