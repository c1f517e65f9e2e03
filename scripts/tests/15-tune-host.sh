#!/usr/bin/env bash
# scripts/tune-host.sh changes nothing unless asked: --help prints the usage (exit 0), an unknown
# argument prints it and exits 2, --persist without --apply exits 2, and the default run (and
# --dry-run) prints what it would change while every sysctl it names keeps its value. (It once
# applied its settings as root for any argument but --dry-run, --help included.)
# Runs in a fresh network namespace when it can, so net.* settings start at the kernel defaults
# (somaxconn 4096) and there is always something the script would change.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "${TUNE_HOST_IN_NETNS:-}" != 1 ] && unshare -n true 2>/dev/null; then
    exec unshare -n env TUNE_HOST_IN_NETNS=1 bash "$0"
fi

keys=(net.core.somaxconn net.ipv4.tcp_max_syn_backlog net.ipv4.ip_local_port_range
    net.core.netdev_max_backlog fs.file-max fs.nr_open net.ipv4.tcp_mem
    net.netfilter.nf_conntrack_max)
snapshot() {
    for key in "${keys[@]}"; do
        path=/proc/sys/${key//.//}
        [ -e "$path" ] && echo "$key=$(tr -s '\t ' ' ' <"$path")"
    done
    [ -e /etc/sysctl.d/90-tether.conf ] && echo "persist file: $(md5sum </etc/sysctl.d/90-tether.conf)"
    true
}
fail() { echo "tune-host: FAIL: $*" >&2; exit 1; }

before=$(snapshot)
out=$(mktemp)
trap 'rm -f "$out"' EXIT

run() { # expected-status args...
    local want=$1 rc=0
    shift
    scripts/tune-host.sh "$@" >"$out" 2>&1 || rc=$?
    [ "$rc" = "$want" ] || { cat "$out" >&2; fail "tune-host.sh $* exited $rc, want $want"; }
    [ "$(snapshot)" = "$before" ] || {
        diff <(echo "$before") <(snapshot) >&2 || true
        fail "tune-host.sh $* changed a setting"
    }
}

run 0 --help
grep -q '^usage:' "$out" || fail "--help printed no usage"
run 2 --bogus
grep -q 'unknown argument: --bogus' "$out" || fail "an unknown argument is not named"
grep -q '^usage:' "$out" || fail "an unknown argument prints no usage"
run 2 --persist
grep -q 'only together with --apply' "$out" || fail "--persist alone is not explained"
run 2 --apply --what
run 0
if [ "$TUNE_HOST_IN_NETNS" = 1 ] || [ "$(cat /proc/sys/net/core/somaxconn)" != 65535 ]; then
    grep -q '^would  net.core.somaxconn: .* -> 65535' "$out" || { cat "$out" >&2; fail "the default run does not show what it would change"; }
fi
if [ -e /proc/sys/net/netfilter/nf_conntrack_max ]; then
    grep -q '^conntrack loaded: .* nf_conntrack_max' "$out" || fail "conntrack is loaded but not reported"
else
    grep -q '^conntrack not loaded' "$out" || fail "missing conntrack report"
fi
run 0 --dry-run
echo "tune-host: ok (--help, unknown argument, --persist alone, default and --dry-run change nothing)"
