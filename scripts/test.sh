#!/usr/bin/env bash
# The whole test suite: set-up of missing tools, formatting, clippy with warnings denied, the
# Rust tests, then every suite under scripts/tests/ (interop, conformance, multi-node).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
# Tools installed by pip land on the interpreter's script path.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build --release (binaries used by the suites below)"
cargo build --release --workspace --bins
echo "== cargo test"
cargo test --workspace

for suite in scripts/tests/*.sh; do
    [ -e "$suite" ] || continue
    echo "== $suite"
    bash "$suite"
done
echo "== all suites passed"
