#!/usr/bin/env bash
# Smoke test of the 300,000-device proof's path at a small scale: scripts/prove-300k.sh (that is,
# `tether-bench run bench-harness/scenarios/prove-300k.toml`) with 2,000 devices on 2 nodes joined
# by a nats-server and 40 probe devices exchanging messages across the nodes while the devices
# are held. Asserts the verdict (exit 0: every device held, no failed handshake, no lost probe
# message), the figures in results.json (held on the nodes, user RSS per device, node CPU per
# handshake, probe messages delivered), and that no process of the run is left behind. Then a run
# whose nodes admit only 500 connections each (--max-connections) must fail the proof: exit 99,
# with the "every device held" target missed.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() {
    scripts/prove-300k.sh --no-tune --out "$out" \
        --set loadgen.clients=2000 --set loadgen.rate=2000 --set loadgen.hold_s=8 \
        --set server.nodes=2 --set probe.devices=40 --set probe.hold_s=3 "$@"
}
run >"$out/log" 2>&1 || { echo "prove smoke: the proof failed"; cat "$out/log"; exit 1; }
grep -E '^target ' "$out/log"
python3 - "$out/prove-300k/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
(server,) = r["servers"]
(run,) = server["runs"]
m = run["metrics"]
problems = []
if run.get("error"):
    problems.append(f"error {run['error']}")
want = {"server.nodes": 2, "clients_target": 2040, "server.connections_peak": 2040,
        "server.connections_missing": 0, "handshake_errors_total": 0,
        "probe.handshake_errors_total": 0, "probe.messages.unanswered": 0}
for k, v in want.items():
    if m.get(k) != v:
        problems.append(f"{k} = {m.get(k)!r}, want {v}")
# 40 probe devices x 2 messages/s x 3 s, less a message or so per device at the edges.
if not 40 * 2 * 2 <= m.get("probe.messages.received", 0) <= 40 * 2 * 4:
    problems.append(f"probe.messages.received = {m.get('probe.messages.received')!r}")
for k in ("server.rss_held_per_conn_bytes", "server.cpu_us_per_handshake", "nats.cpu_s",
          "nats.rss_peak_bytes", "probe.message_delivery_us.p99", "connect_rate_achieved_per_s"):
    if not isinstance(m.get(k), (int, float)) or m[k] <= 0:
        problems.append(f"{k} = {m.get(k)!r}")
# Slab moves with everything else on the machine: at 2,000 clients it can even shrink.
if not isinstance(m.get("kernel.slab_per_conn_bytes"), (int, float)):
    problems.append(f"kernel.slab_per_conn_bytes = {m.get('kernel.slab_per_conn_bytes')!r}")
if problems:
    sys.exit("prove smoke: " + "; ".join(problems))
print(f"prove smoke: {m['server.connections_peak']:.0f} devices held on {m['server.nodes']:.0f} nodes, "
      f"{m['probe.messages.received']:.0f}/{m['probe.messages.sent']:.0f} probe messages delivered, "
      f"{m['server.rss_held_per_conn_bytes']:.0f} B/device")
PY
# Every process of the run is gone: each one wrote its output to a log under $out.
left_behind() {
    for fd in /proc/[0-9]*/fd/[0-9]*; do
        case "$(readlink "$fd" 2>/dev/null)" in "$out"/*) echo "${fd%/fd/*}" ;; esac
    done | sort -u
}
if [ -n "$(left_behind)" ]; then
    echo "prove smoke: processes left behind: $(left_behind)"; exit 1
fi
# The failing verdict: 2 nodes x 500 cannot hold 2,040 devices.
rc=0
run --set 'server.extra_args=["--max-connections","500"]' >"$out/log-fail" 2>&1 || rc=$?
if [ "$rc" != 99 ] || ! grep -q '^target MISSED: every device held on the nodes' "$out/log-fail"; then
    echo "prove smoke: a run holding 1,000 of 2,040 devices exited $rc (want 99)"; cat "$out/log-fail"; exit 1
fi
echo "prove smoke: nodes admitting 500 each fail the proof (exit 99, every device held: missed)"
