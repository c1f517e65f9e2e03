#!/usr/bin/env bash
# Kernel settings tether needs for many connections (see docs/operations.md, "Kernel settings").
# By default it only prints what it would change; nothing is written without --apply.
#
#   scripts/tune-host.sh                    # show each setting: ok, or what would change
#   scripts/tune-host.sh --apply            # apply them now (root)
#   scripts/tune-host.sh --apply --persist  # also write them to /etc/sysctl.d/90-tether.conf
#
# Where the conntrack module is loaded, nf_conntrack_max is one of the settings (every tracked
# connection is an entry; a full table drops new connections with "nf_conntrack: table full").
# Unknown arguments: exit 2 with the usage. A setting the kernel refuses (e.g. inside a container
# without the privilege) is reported and the exit status is 1.
set -uo pipefail

PERSIST_FILE=/etc/sysctl.d/90-tether.conf

usage() {
    cat <<EOF
usage: $0 [--apply [--persist]] [--help]

  (no argument)  print each kernel setting tether wants and what would change; change nothing
  --dry-run      the same as no argument
  --apply        apply the changes with sysctl -w (needs root)
  --persist      with --apply: also write the settings to $PERSIST_FILE
  --help         this text
EOF
}

apply=0
persist=0
for arg in "$@"; do
    case "$arg" in
        --apply) apply=1 ;;
        --persist) persist=1 ;;
        --dry-run) ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "tune-host.sh: unknown argument: $arg" >&2
            usage >&2
            exit 2
            ;;
    esac
done
if [ "$persist" = 1 ] && [ "$apply" = 0 ]; then
    echo "tune-host.sh: --persist writes $PERSIST_FILE only together with --apply" >&2
    usage >&2
    exit 2
fi

page_kib=$(($(getconf PAGESIZE) / 1024))
mem_kib=$(awk '/^MemTotal:/{print $2}' /proc/meminfo)
mem_pages=$((mem_kib / page_kib))
# tcp_mem in pages: pressure starts at 3/8 of RAM, hard limit at 3/4.
tcp_mem="$((mem_pages * 3 / 8)) $((mem_pages / 2)) $((mem_pages * 3 / 4))"

settings=(
    "net.core.somaxconn=65535"
    "net.ipv4.tcp_max_syn_backlog=65535"
    "net.ipv4.ip_local_port_range=10240 65535"
    "net.core.netdev_max_backlog=65536"
    "fs.file-max=4194304"
    "fs.nr_open=2097152"
    "net.ipv4.tcp_mem=$tcp_mem"
)

# conntrack: only where the module is loaded (the sysctl exists then). One entry per tracked
# connection; the same 2,097,152 as fs.nr_open so the table is never the tighter limit.
conntrack=/proc/sys/net/netfilter/nf_conntrack_max
if [ -e "$conntrack" ]; then
    settings+=("net.netfilter.nf_conntrack_max=2097152")
    count=$(cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo "?")
    buckets=$(cat /proc/sys/net/netfilter/nf_conntrack_buckets 2>/dev/null || echo "?")
    echo "conntrack loaded: $count entries in use of nf_conntrack_max $(cat "$conntrack"), $buckets hash buckets"
else
    echo "conntrack not loaded: no connection-tracking limit applies"
fi

failed=0
changed=0
for kv in "${settings[@]}"; do
    key=${kv%%=*}
    want=${kv#*=}
    path=/proc/sys/${key//.//}
    if [ ! -e "$path" ]; then
        echo "skip   $key (not available here)"
        continue
    fi
    have=$(tr -s '\t ' ' ' <"$path")
    if [ "$have" = "$want" ]; then
        echo "ok     $key = $have"
        continue
    fi
    changed=1
    if [ "$apply" = 0 ]; then
        echo "would  $key: $have -> $want"
        continue
    fi
    if sysctl -q -w "$key=$want" >/dev/null 2>&1; then
        echo "set    $key: $have -> $(tr -s '\t ' ' ' <"$path")"
    else
        echo "FAILED $key: $have (wanted $want; needs root / not writable in this namespace)"
        failed=1
    fi
done

if [ "$persist" = 1 ]; then
    {
        echo "# Written by tether's scripts/tune-host.sh --persist (docs/operations.md, \"Kernel settings\")."
        for kv in "${settings[@]}"; do
            key=${kv%%=*}
            [ -e "/proc/sys/${key//.//}" ] && echo "$key = ${kv#*=}"
        done
    } >"$PERSIST_FILE.tmp" && mv "$PERSIST_FILE.tmp" "$PERSIST_FILE" &&
        echo "wrote  $PERSIST_FILE (applied at boot by systemd-sysctl)" ||
        {
            echo "FAILED to write $PERSIST_FILE"
            failed=1
        }
elif [ "$apply" = 0 ] && [ "$changed" = 1 ]; then
    echo "nothing changed: run with --apply to apply (and --persist to keep across reboots)"
fi

echo "open files of this shell: soft $(ulimit -Sn), hard $(ulimit -Hn)"
echo "for the service set LimitNOFILE=1048576 (systemd) or raise 'nofile' in /etc/security/limits.conf;"
echo "tether raises its soft limit to the hard limit itself and logs the resulting capacity."
exit $failed
