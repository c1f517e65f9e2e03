#!/usr/bin/env bash
# Builds the Debian bullseye tree that runs Autobahn|Testsuite (Python 2 only) for
# scripts/autobahn.sh. Idempotent: a finished tree is recognised by its marker file and reused
# (this script then returns in well under a second); a half-built tree is removed and rebuilt.
#
# Where:   ${TETHER_AUTOBAHN_ROOT:-/var/cache/tether-autobahn/bullseye}
# Mirror:  the Debian archive apt already uses on this host (read from /etc/apt/sources.list and
#          /etc/apt/sources.list.d/*), or ${TETHER_DEBIAN_MIRROR} if set.
# Needs:   root (debootstrap, chroot, mounts). About a minute and ~400 MB on first run.
set -euo pipefail

AUTOBAHN_VERSION=25.10.1
PIP_PY27_VERSION=20.3.4
SETUPTOOLS_PY27_VERSION=44.1.1
WHEEL_PY27_VERSION=0.37.1
ROOT="${TETHER_AUTOBAHN_ROOT:-/var/cache/tether-autobahn/bullseye}"
MARKER="$ROOT/.tether-autobahn-ready"
WANT="autobahntestsuite==$AUTOBAHN_VERSION pip==$PIP_PY27_VERSION setuptools==$SETUPTOOLS_PY27_VERSION"

log() { printf '[autobahn-setup] %s\n' "$*" >&2; }
die() { printf '[autobahn-setup] error: %s\n' "$*" >&2; exit 1; }

# Fast path: the tree is complete and holds the wanted versions.
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ]; then
    exit 0
fi

[ "$(id -u)" = 0 ] || die "building the bullseye tree needs root (debootstrap, chroot, mount)"

# One builder at a time; a second caller waits and then takes the fast path.
mkdir -p "$(dirname "$ROOT")"
exec 9>"$(dirname "$ROOT")/.lock"
flock 9
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ]; then
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null; }
fi

# The Debian archive apt uses here: the entry for the host's own codename (not -security,
# not -updates), in either the one-line or the deb822 format.
debian_mirror() {
    local codename
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    python3 - "$codename" /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources <<'EOF'
import re, sys
codename, paths = sys.argv[1], sys.argv[2:]
for path in paths:
    try:
        text = open(path).read()
    except OSError:
        continue
    if path.endswith(".sources"):
        for stanza in re.split(r"\n\s*\n", text):
            fields = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.split()
            if ("deb" in fields.get("types", []) and codename in fields.get("suites", [])
                    and fields.get("enabled", ["yes"])[0] != "no" and fields.get("uris")):
                print(fields["uris"][0]); sys.exit(0)
    else:
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == codename:
                print(words[1]); sys.exit(0)
sys.exit(1)
EOF
}
MIRROR="${TETHER_DEBIAN_MIRROR:-$(debian_mirror || true)}"
[ -n "$MIRROR" ] || die "no Debian mirror found in /etc/apt/sources.list{,.d/*}; set TETHER_DEBIAN_MIRROR"

# Mounts live in a private mount namespace (unshare -m): they vanish when the chroot commands
# exit, whatever way they exit, and never leak into the host's mount table. The explicit umount
# on exit inside the namespace is belt and braces.
in_tree() {
    unshare --mount --propagation private bash -euo pipefail -c '
        R=$1; shift
        trap "umount -l \"$R/dev/pts\" \"$R/dev\" \"$R/proc\" 2>/dev/null || true" EXIT
        mount -t proc proc "$R/proc"
        mount --bind /dev "$R/dev"
        mount --bind /dev/pts "$R/dev/pts"
        chroot "$R" env -u PIP_FIND_LINKS HOME=/root LANG=C.UTF-8 "$@"
    ' in_tree "$ROOT" "$@"
}

started=$(date +%s)
build="$ROOT.partial"
for dir in "$ROOT" "$build"; do
    # Never delete through a live mount (only possible if someone mounted into it by hand).
    if findmnt -rn -o TARGET | grep -q "^$dir/"; then
        die "something is mounted under $dir; unmount it first"
    fi
done
if [ -e "$ROOT" ]; then
    log "removing outdated tree $ROOT"
    rm -rf --one-file-system "$ROOT"
fi

# Stage 1, debootstrap (the slow part): kept across a failure in the later stages.
if [ ! -f "$build/.debootstrap-done" ]; then
    rm -rf --one-file-system "$build"
    log "debootstrap bullseye from $MIRROR into $build"
    debootstrap --variant=minbase \
        --include=python2.7,python2.7-dev,gcc,libc6-dev,libffi-dev,libssl-dev,ca-certificates \
        bullseye "$build" "$MIRROR" >"$build.log" 2>&1 \
        || { tail -20 "$build.log" >&2; die "debootstrap failed (full log: $build.log)"; }
    rm -f "$build.log"
    touch "$build/.debootstrap-done"
fi

# Trust the same certificate authorities as the host (local CAs, e.g. an egress proxy's).
if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
    cp -r /usr/local/share/ca-certificates/. "$build/usr/local/share/ca-certificates/"
fi
ROOT="$build" in_tree update-ca-certificates >/dev/null

# pip for Python 2.7 and the setuptools/wheel that source builds need: the last releases that
# support Python 2.7, as wheels fetched by the host's pip.
rm -rf "$build/tmp/wheels" && mkdir -p "$build/tmp/wheels"
python3 -m pip download --quiet --no-deps --python-version 2.7 --only-binary=:all: \
    --dest "$build/tmp/wheels" "pip==$PIP_PY27_VERSION" "setuptools==$SETUPTOOLS_PY27_VERSION" \
    "wheel==$WHEEL_PY27_VERSION"
wheel="/tmp/wheels/pip-$PIP_PY27_VERSION-py2.py3-none-any.whl"
[ -f "$build$wheel" ] || die "pip download did not produce $wheel"
log "installing pip $PIP_PY27_VERSION and autobahntestsuite $AUTOBAHN_VERSION in the tree"
ROOT="$build" in_tree python2.7 "$wheel/pip" install --quiet --no-index --find-links /tmp/wheels \
    "pip==$PIP_PY27_VERSION" "setuptools==$SETUPTOOLS_PY27_VERSION" "wheel==$WHEEL_PY27_VERSION"
ROOT="$build" in_tree python2.7 -m pip install --quiet --no-cache-dir --disable-pip-version-check \
    "autobahntestsuite==$AUTOBAHN_VERSION"
ROOT="$build" in_tree wstest --help >/dev/null || die "wstest does not run inside the tree"
rm -rf "$build/tmp/wheels" "$build/.debootstrap-done"

echo "$WANT" >"$build/.tether-autobahn-ready"
mv "$build" "$ROOT"
log "tree ready at $ROOT in $(($(date +%s) - started)) s"
