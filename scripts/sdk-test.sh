#!/usr/bin/env bash
# The TypeScript SDK (clients/js): installs Node.js and npm on a fresh Debian
# machine when they are missing, then `npm ci`, `npm run build` (types
# generated from src/http/openapi.json) and `npm test` (unit tests, and the
# integration test against a live `msgd serve` from $MSGD_BIN, default
# target/debug/msgd).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export MSGD_BIN="${MSGD_BIN:-$ROOT/target/debug/msgd}"
case "$MSGD_BIN" in /*) ;; *) MSGD_BIN="$ROOT/$MSGD_BIN" ;; esac
if [ ! -x "$MSGD_BIN" ]; then
  echo "sdk-test: no msgd binary at $MSGD_BIN (build it, or set MSGD_BIN)" >&2
  exit 1
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "sdk-test: installing nodejs and npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nodejs npm >/dev/null
fi
echo "sdk-test: node $(node --version), npm $(npm --version), msgd at $MSGD_BIN"

cd clients/js
npm ci --no-audit --no-fund --loglevel=error
npm run build --silent
npm test --silent
