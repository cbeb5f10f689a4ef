#!/usr/bin/env bash
# The demo chat page (GET /demo, src/http/demo.html) in headless Chromium:
# installs Debian's chromium and nodejs/npm when missing, `npm ci` in
# clients/demo-test (puppeteer-core only: it drives the system browser and
# downloads none), starts `$MSGD_BIN serve` (default target/debug/msgd)
# embedded on a free 127.0.0.1 port with a temp data dir, the demo page and
# dev tokens on, creates an app with a write key, mints dev tokens for alice
# and bob, and runs clients/demo-test/demo.test.mjs: two browser contexts
# chat, one goes offline and back and sees what it missed. Then checks that
# /demo is a 404 when http.demo is off. Screenshots (and msgd's log on
# failure) go to $DEMO_ARTIFACTS (default /tmp/msgd-demo-artifacts).
#
# Which page is tested: by default the one msgd serves at /demo, i.e. the copy
# of src/http/demo.html compiled into $MSGD_BIN; the run stops early when that
# differs from the file in the tree (rebuild first). With DEMO_HTML=PATH the
# browser instead goes through clients/demo-test/proxy.mjs, which answers
# /demo with PATH (under the headers msgd's /demo sends, its CSP included) and
# passes everything else, WebSockets too, to msgd: for working on the page
# without rebuilding.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
MSGD_BIN="${MSGD_BIN:-target/debug/msgd}"
case "$MSGD_BIN" in /*) ;; *) MSGD_BIN="$ROOT/$MSGD_BIN" ;; esac
ARTIFACTS="${DEMO_ARTIFACTS:-/tmp/msgd-demo-artifacts}"
DEMO_HTML="${DEMO_HTML:-}"
if [ -n "$DEMO_HTML" ]; then
  case "$DEMO_HTML" in /*) ;; *) DEMO_HTML="$ROOT/$DEMO_HTML" ;; esac
  [ -f "$DEMO_HTML" ] || { echo "demo-test: no file at DEMO_HTML=$DEMO_HTML" >&2; exit 1; }
fi
if [ ! -x "$MSGD_BIN" ]; then
  echo "demo-test: no msgd binary at $MSGD_BIN (build it, or set MSGD_BIN)" >&2
  exit 1
fi

# --- tools ------------------------------------------------------------------
missing=()
command -v chromium >/dev/null || missing+=(chromium fonts-dejavu-core)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "demo-test: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
CHROMIUM="${CHROMIUM:-$(command -v chromium)}"
echo "demo-test: node $(node --version), $("$CHROMIUM" --version 2>/dev/null | head -1), msgd at $MSGD_BIN"
(cd clients/demo-test && npm ci --no-audit --no-fund --loglevel=error)

# --- msgd ---------------------------------------------------------------------
WORK="$(mktemp -d /tmp/msgd-demo.XXXXXX)"
mkdir -p "$ARTIFACTS"
# Only what an earlier run left (the directory may be one the caller shares).
rm -f "$ARTIFACTS"/[0-9][0-9]-*.png "$ARTIFACTS"/msgd*.log "$ARTIFACTS"/proxy.log
PIDS=()
status=1
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ]; then
    for log in "$WORK"/*.log; do [ -f "$log" ] && cp "$log" "$ARTIFACTS/"; done
    echo "demo-test: FAILED; logs and screenshots in $ARTIFACTS" >&2
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# msgd refuses unknown MSGD_* variables, and a stray MSGD_POSTGRES__URL would
# switch it to services mode: it runs with only the variables set here. (env
# execs msgd, so $! of a background `env ...` is msgd's own PID.)
MSGD_ENV=()
for name in $(compgen -e); do
  case "$name" in MSGD_*) MSGD_ENV+=(-u "$name") ;; esac
done
MSGD_ENV+=(MSGD_DATA_DIR="$WORK/data" MSGD_HTTP__LISTEN=127.0.0.1:0 MSGD_OBSERVABILITY__LOGGING__FORMAT=json
  MSGD_AUTH__DEV_TOKENS__ENABLED=true)
json() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const v=JSON.parse(s)[process.argv[1]];if(v==null)process.exit(1);console.log(v)})' "$1"; }

# shellcheck source=scripts/listening.sh
. scripts/listening.sh

APP="$(env "${MSGD_ENV[@]}" "$MSGD_BIN" keys create-app demo --json)"
APP_ID="$(json app_id <<<"$APP")"
ADMIN_KEY="$(json key <<<"$APP")"
WRITE_KEY="$(env "${MSGD_ENV[@]}" "$MSGD_BIN" keys create --app "$APP_ID" --scope write --name demo-test --json | json key)"

env "${MSGD_ENV[@]}" MSGD_HTTP__DEMO=true "$MSGD_BIN" serve >"$WORK/msgd.log" 2>&1 &
PIDS+=($!)
wait_for_listening "$WORK/msgd.log" "${PIDS[-1]}"
MSGD_URL="$BASE_URL"
echo "demo-test: msgd serving at $MSGD_URL"

token() {
  curl -sSf -X POST "$MSGD_URL/v1/dev/token" -H "X-Api-Key: $ADMIN_KEY" \
    -H 'Content-Type: application/json' -d "{\"user_id\":\"$1\"}" | json access_token
}
ALICE_TOKEN="$(token alice)"
BOB_TOKEN="$(token bob)"

# --- the page under test --------------------------------------------------------
if [ -n "$DEMO_HTML" ]; then
  MSGD_URL="$MSGD_URL" DEMO_HTML="$DEMO_HTML" node clients/demo-test/proxy.mjs >"$WORK/proxy.log" 2>&1 &
  PIDS+=($!)
  DEMO_BASE_URL=""
  for _ in $(seq 1 100); do
    DEMO_BASE_URL="$(sed -n 's/.*"listening":"\([^"]*\)".*/\1/p' "$WORK/proxy.log")"
    [ -n "$DEMO_BASE_URL" ] && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$WORK/proxy.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$DEMO_BASE_URL" ] || { echo "demo-test: the proxy did not start" >&2; exit 1; }
  echo "demo-test: page from $DEMO_HTML through the proxy at $DEMO_BASE_URL"
else
  DEMO_BASE_URL="$MSGD_URL"
  if ! curl -sSf "$MSGD_URL/demo" | cmp -s - src/http/demo.html; then
    echo "demo-test: $MSGD_BIN serves another /demo page than src/http/demo.html: rebuild msgd," \
      "or set DEMO_HTML=src/http/demo.html to test the file through the proxy" >&2
    exit 1
  fi
  echo "demo-test: page from msgd's own /demo"
fi

DEMO_BASE_URL="$DEMO_BASE_URL" MSGD_URL="$MSGD_URL" WRITE_KEY="$WRITE_KEY" ALICE_TOKEN="$ALICE_TOKEN" \
  BOB_TOKEN="$BOB_TOKEN" DEMO_ARTIFACTS="$ARTIFACTS" CHROMIUM="$CHROMIUM" \
  node clients/demo-test/demo.test.mjs

# --- off by default -------------------------------------------------------------
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
PIDS=()
env "${MSGD_ENV[@]}" "$MSGD_BIN" serve >"$WORK/msgd-off.log" 2>&1 &
PIDS+=($!)
wait_for_listening "$WORK/msgd-off.log" "${PIDS[-1]}"
code="$(curl -s -o "$WORK/off.json" -w '%{http_code}' "$BASE_URL/demo")"
if [ "$code" != 404 ] || ! grep -q '"code":"not_found"' "$WORK/off.json"; then
  echo "demo-test: /demo with http.demo off answered $code: $(cat "$WORK/off.json")" >&2
  exit 1
fi
echo "ok - GET /demo answers 404 not_found while http.demo is off"

status=0
echo "demo-test: passed; screenshots in $ARTIFACTS"
