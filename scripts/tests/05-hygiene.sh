#!/usr/bin/env bash
# Project hygiene: the minimum Rust version is declared once (workspace) and inherited by every
# crate, and it is not below any dependency's own rust-version (clippy's incompatible_msrv lint,
# on by default, checks our own code against it in the clippy step); the LICENSE file is the
# license the manifests declare; `cargo deny check licenses bans` passes (deny.toml).
set -euo pipefail
cd "$(dirname "$0")/../.."
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH

cargo metadata --format-version 1 --locked --filter-platform x86_64-unknown-linux-gnu >"${TMPDIR:-/tmp}/tether-metadata-$$.json"
trap 'rm -f "${TMPDIR:-/tmp}/tether-metadata-$$.json"' EXIT
python3 - "${TMPDIR:-/tmp}/tether-metadata-$$.json" <<'PY'
import json, sys, tomllib

def version(v):
    parts = [int(x) for x in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

root = tomllib.load(open("Cargo.toml", "rb"))
ws = root["workspace"]
msrv = ws["package"]["rust-version"]
license = ws["package"]["license"]
problems = []
for member in ws["members"]:
    pkg = tomllib.load(open(f"{member}/Cargo.toml", "rb"))["package"]
    for key in ("rust-version", "license", "edition"):
        if pkg.get(key) != {"workspace": True}:
            problems.append(f"{member}/Cargo.toml: {key} is not inherited ({key}.workspace = true)")
meta = json.load(open(sys.argv[1]))
members = set(meta["workspace_members"])
deps = [(p["rust_version"], p["name"], p["version"]) for p in meta["packages"]
        if p["id"] not in members and p.get("rust_version")]
highest = max(deps, key=lambda d: version(d[0]))
above = sorted({f"{n} {v} ({rv})" for rv, n, v in deps if version(rv) > version(msrv)})
if above:
    problems.append(f"rust-version {msrv} is below what these dependencies declare: {', '.join(above)}")
text = open("LICENSE").read()
if license != "Apache-2.0" or "Apache License" not in text or "Version 2.0, January 2004" not in text:
    problems.append(f"LICENSE is not the text of the declared license {license}")
if problems:
    print("05-hygiene: FAIL:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"05-hygiene: rust-version {msrv} inherited by {len(ws['members'])} crates; highest dependency "
      f"rust-version {highest[0]} ({highest[1]} {highest[2]}) of {len(deps)} declaring one; LICENSE {license}")
PY
cargo deny --log-level error check licenses bans
echo "05-hygiene: OK"
