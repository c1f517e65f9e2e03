#!/usr/bin/env bash
# Smoke test of scripts/prove-300k.sh at a small scale: 2,000 clients on 2 nodes joined by a
# nats-server, 40 sample devices exchanging NATS pushes and device-to-device messages across the
# nodes. The held clients are devices on /ws, each with its own token minted by loadgen, as in
# the real run (PROVE_ENDPOINT=echo holds them on /echo instead). Asserts that the summary shows
# every client held on the nodes on that endpoint, no failed handshake and no lost message, and
# that no process of the run is left behind. The `max` run is asked for too, with a probe ladder
# no machine keeps (1,000,000/s): it is reported as not run, separately from the seed run, and
# does not decide the exit status, which the seed run's verdict does.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
endpoint=${PROVE_ENDPOINT:-ws}
scripts/prove-300k.sh --no-tune --endpoint "$endpoint" --clients 2000 --nodes 2 --rate 2000,max --hold 10s \
    --probe-rates 1000000 --probe-clients 200 \
    --sample 40 --messages 2 --out "$out" >"$out/log" 2>&1 || { cat "$out/log"; exit 1; }
grep -E '^prove-300k: (seed|highest-rate|PASSED)' "$out/log"
grep -q '^prove-300k: seed run (2000/s): held 2000 of 2000, .* -> passed \[decides the exit status\]$' "$out/log" ||
    { echo "prove smoke: no passing seed-run line"; cat "$out/log"; exit 1; }
grep -q '^prove-300k: highest-rate run not run: no probe rate kept its schedule .*\[reported only\]$' "$out/log" ||
    { echo "prove smoke: no separate highest-rate line"; cat "$out/log"; exit 1; }
python3 - "$out/summary.json" "$endpoint" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
problems = []
if s["verdict"] != {"passed": True, "decided_by": ["fixed-rate runs"]}:
    problems.append(f"verdict {s['verdict']}")
if s["seed_run"]["verdict"]["passed"] is not True or "not_run" not in s["max_run"]:
    problems.append(f"seed {s['seed_run']['verdict']}, max {s['max_run']}")
if s["endpoint"] != "/" + sys.argv[2]:
    problems.append(f"endpoint {s['endpoint']} != /{sys.argv[2]}")
if s["concurrent_clients_peak"] != 2000:
    problems.append(f"concurrent_clients_peak {s['concurrent_clients_peak']} != 2000")
if s["handshake_errors_total"] != 0:
    problems.append(f"handshake_errors_total {s['handshake_errors_total']}")
if s.get("messaging_skipped") is None:
    if s["messages_sent"] != 40 * 2 * 2 or s["messages_lost"] != 0 or s["messages_delivered"] != s["messages_sent"]:
        problems.append(f"messages sent {s['messages_sent']} delivered {s['messages_delivered']} lost {s['messages_lost']}")
    if s["messaging"]["wrong_sender"] != 0 or s["messaging"]["d2d_cross_node"] != 40 * 2:
        problems.append(f"messaging {s['messaging']}")
for key in ("user_rss_bytes_per_connection", "connect_rate_per_s"):
    if not isinstance(s.get(key), (int, float)) or s[key] <= 0:
        problems.append(f"{key} = {s.get(key)!r}")
# Slab moves with everything else on the machine: at 2,000 clients it can even shrink.
if not isinstance(s.get("kernel_bytes_per_connection"), int):
    problems.append(f"kernel_bytes_per_connection = {s.get('kernel_bytes_per_connection')!r}")
if problems:
    sys.exit("prove smoke: " + "; ".join(problems))
print(f"prove smoke: {s['concurrent_clients_peak']} clients held on {s['nodes']} nodes, "
      f"{s['messages_delivered']}/{s['messages_sent']} messages delivered")
PY
# Every process the script started is gone: the nodes and nats-server listed in nodes.json, and
# the helpers and loadgen (their arguments name the output directory).
for pid in $(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(*[n["pid"] for n in c["nodes"]], c["nats"]["pid"])' "$out/run-2000/nodes.json"); do
    if kill -0 "$pid" 2>/dev/null; then echo "prove smoke: process $pid left behind"; exit 1; fi
done
if pgrep -f "$out" >/dev/null; then
    echo "prove smoke: processes left behind:"; pgrep -af "$out"; exit 1
fi
