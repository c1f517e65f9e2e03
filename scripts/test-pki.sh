#!/usr/bin/env bash
# Makes a throw-away test PKI for wss:// runs: a CA (ca.pem) and a leaf for localhost and
# 127.0.0.1 signed by it (cert.pem, key.pem), ECDSA P-256 (default) or RSA-2048 (--rsa).
#
#   scripts/test-pki.sh DIR [--rsa]
#
# Test certificates are made by the tests, never committed. Needs openssl (Debian package).
set -euo pipefail
dir="${1:?usage: scripts/test-pki.sh DIR [--rsa]}"
case "${2:-}" in
    --rsa) key=(-newkey rsa:2048) ;;
    "") key=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    *) echo "test-pki: unknown argument: $2" >&2; exit 2 ;;
esac
mkdir -p "$dir"
cd "$dir"
openssl req -x509 "${key[@]}" -nodes -keyout ca.key -out ca.pem -days 2 \
    -subj "/CN=tether test CA" 2>/dev/null
openssl req "${key[@]}" -nodes -keyout key.pem -out leaf.csr -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >leaf.ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 \
    -extfile leaf.ext 2>/dev/null
rm -f leaf.csr leaf.ext ca.srl
