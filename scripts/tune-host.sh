#!/usr/bin/env bash
# Applies the kernel settings tether needs for many connections (see docs/operations.md,
# "Kernel settings"). Run as root. Prints each setting before and after; a setting the kernel
# refuses (e.g. inside a container without the privilege) is reported and skipped.
#
#   scripts/tune-host.sh            # apply
#   scripts/tune-host.sh --dry-run  # only show what would change
set -uo pipefail

dry=0
[ "${1:-}" = "--dry-run" ] && dry=1

page_kib=$(( $(getconf PAGESIZE) / 1024 ))
mem_kib=$(awk '/^MemTotal:/{print $2}' /proc/meminfo)
mem_pages=$(( mem_kib / page_kib ))
# tcp_mem in pages: pressure starts at 3/8 of RAM, hard limit at 3/4.
tcp_mem="$(( mem_pages * 3 / 8 )) $(( mem_pages / 2 )) $(( mem_pages * 3 / 4 ))"

settings=(
    "net.core.somaxconn=65535"
    "net.ipv4.tcp_max_syn_backlog=65535"
    "net.ipv4.ip_local_port_range=10240 65535"
    "net.core.netdev_max_backlog=65536"
    "fs.file-max=4194304"
    "fs.nr_open=2097152"
    "net.ipv4.tcp_mem=$tcp_mem"
)

failed=0
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
    if [ "$dry" = 1 ]; then
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

echo "open files of this shell: soft $(ulimit -Sn), hard $(ulimit -Hn)"
echo "for the service set LimitNOFILE=1048576 (systemd) or raise 'nofile' in /etc/security/limits.conf;"
echo "tether raises its soft limit to the hard limit itself and logs the resulting capacity."
exit $failed
