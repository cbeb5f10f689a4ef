#!/usr/bin/env bash
# Contract tests: schemathesis generates requests from the OpenAPI document
# (src/http/openapi.json, which the server must serve at /openapi.json) and sends
# them to a live `msgd serve` (target/debug/msgd; `cargo test` builds it) on
# both backends, once as an admin key acting as the app and once as a user
# (a write key with a dev token), with the admin API on and its operator token in
# both runs. Every response must be a non-5xx that the
# document describes (status, content type, headers, body schema); every
# request the document calls valid must be accepted and every request it
# calls invalid refused; unlisted methods must answer 405.
#
#   scripts/schemathesis.sh              both backends (services: needs `scripts/services.sh up`)
#   scripts/schemathesis.sh embedded     one backend
#
# Bounded by time for CI: SCHEMATHESIS_MAX_TIME seconds per run (default 40;
# four runs, about 3 minutes); fuzzing repeats rounds of SCHEMATHESIS_EXAMPLES
# cases per operation (default 25) until then.
# Installs its pinned Python dependencies (scripts/schemathesis-requirements.txt)
# into a venv under $MSGDTEST_SERVICES_DIR. Exits non-zero on any failure.
# Generation uses the fixed seed SCHEMATHESIS_SEED (default 1), so a CI finding
# replays by running this script; SCHEMATHESIS_SEED=0 draws a random one
# (exploring). SCHEMATHESIS_KEEP=1 keeps each run's directory (msgd's log, the
# configs, JUnit reports).
set -euo pipefail
cd "$(dirname "$0")/.."
SEED="${SCHEMATHESIS_SEED:-1}"
if [ "$SEED" = 0 ]; then SEED=$RANDOM; fi
ROOT="$PWD"
# shellcheck source=scripts/listening.sh
. "$ROOT/scripts/listening.sh"
MSGD="$ROOT/target/debug/msgd"
DIR="${MSGDTEST_SERVICES_DIR:-/tmp/msgd-services}"
VENV="$DIR/schemathesis-venv"
REQUIREMENTS="$ROOT/scripts/schemathesis-requirements.txt"
EXAMPLES="${SCHEMATHESIS_EXAMPLES:-25}"
MAX_TIME="${SCHEMATHESIS_MAX_TIME:-40}"
BACKENDS=("$@")
[ "${#BACKENDS[@]}" -gt 0 ] || BACKENDS=(embedded services)

log() { echo "schemathesis: $*" >&2; }

[ -x "$MSGD" ] || { log "$MSGD is missing; run cargo build (or cargo test) first"; exit 2; }

# A venv, not the system interpreter: Debian's python3 refuses `pip install`
# outside one (PEP 668). Rebuilt when the requirements change.
install_schemathesis() {
  local stamp="$VENV/.requirements.sha256" want
  want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
  if [ -x "$VENV/bin/schemathesis" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  mkdir -p "$DIR"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    log "installing python3-venv"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$VENV"; python3 -m venv "$VENV"
  fi
  log "installing $(grep -m1 '^schemathesis==' "$REQUIREMENTS") into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  echo "$want" >"$stamp"
}

# State of the run in progress, for the EXIT trap.
WORK=""; MSGD_PID=""; DATABASE=""; BUCKET_DIR=""

stop_msgd() {
  if [ -n "$MSGD_PID" ] && kill -0 "$MSGD_PID" 2>/dev/null; then
    kill "$MSGD_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$MSGD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$MSGD_PID" 2>/dev/null || true
    wait "$MSGD_PID" 2>/dev/null || true
  fi
  MSGD_PID=""
}

cleanup() {
  stop_msgd
  if [ -n "$DATABASE" ]; then
    "$MSGDTEST_PG_BIN/psql" -q "$MSGDTEST_POSTGRES_URL" -c "DROP DATABASE IF EXISTS $DATABASE" >/dev/null 2>&1 || true
    DATABASE=""
  fi
  [ -z "$BUCKET_DIR" ] || rm -rf "$BUCKET_DIR"
  BUCKET_DIR=""
  if [ -n "$WORK" ] && [ -n "${SCHEMATHESIS_KEEP:-}" ]; then
    log "kept $WORK (msgd.log, configs, reports)"
  elif [ -n "$WORK" ]; then
    rm -rf "$WORK"
  fi
  WORK=""
}
trap cleanup EXIT

# Starts msgd for one backend in $WORK; sets MSGD_PID and BASE_URL.
start_msgd() {
  local backend="$1" id
  id="st$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  WORK="$(mktemp -d)"
  export MSGD_DATA_DIR="$WORK/data" MSGD_HTTP__LISTEN="127.0.0.1:0" MSGD_OBSERVABILITY__LOGGING__FORMAT=json
  export MSGD_AUTH__DEV_TOKENS__ENABLED=true MSGD_FLUSH__INTERVAL=1s
  # The admin API is on, with a fresh operator token per run.
  MSGDST_OPERATOR_TOKEN="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  export MSGD_AUTH__OPERATOR_TOKEN="$MSGDST_OPERATOR_TOKEN" MSGDST_OPERATOR_TOKEN
  # Rate limits are tested elsewhere (tests/it/messages.rs); here they would
  # only turn most sends into 429s.
  export MSGD_LIMITS__USER_RATE=100000 MSGD_LIMITS__USER_BURST=100000
  export MSGD_LIMITS__KEY_RATE=100000 MSGD_LIMITS__KEY_BURST=100000
  if [ "$backend" = services ]; then
    # shellcheck disable=SC1091
    . "$DIR/env" || { log "no $DIR/env: run scripts/services.sh up first"; return 1; }
    DATABASE="$id"
    "$MSGDTEST_PG_BIN/psql" -q "$MSGDTEST_POSTGRES_URL" -c "CREATE DATABASE $DATABASE" >/dev/null
    BUCKET_DIR="$MSGDTEST_S3_ROOT/$id" # s3s-fs: a bucket is a directory
    mkdir -p "$BUCKET_DIR"
    export MSGD_POSTGRES__URL="${MSGDTEST_POSTGRES_URL%/*}/$DATABASE"
    export MSGD_REDIS__URL="$MSGDTEST_REDIS_URL" MSGD_REDIS__KEY_PREFIX="$id"
    export MSGD_S3__ENDPOINT="$MSGDTEST_S3_ENDPOINT" MSGD_S3__BUCKET="$id"
    export MSGD_S3__ACCESS_KEY_ID="$MSGDTEST_S3_ACCESS_KEY_ID"
    export MSGD_S3__SECRET_ACCESS_KEY="$MSGDTEST_S3_SECRET_ACCESS_KEY"
  else
    unset MSGD_POSTGRES__URL MSGD_REDIS__URL MSGD_REDIS__KEY_PREFIX MSGD_S3__ENDPOINT MSGD_S3__BUCKET \
      MSGD_S3__ACCESS_KEY_ID MSGD_S3__SECRET_ACCESS_KEY
  fi
  "$MSGD" keys create-app schemathesis --json >"$WORK/app.json"
  "$MSGD" serve 2>"$WORK/msgd.log" &
  MSGD_PID=$!
  wait_for_listening "$WORK/msgd.log" "$MSGD_PID" || return 1
  log "$backend: msgd (PID $MSGD_PID) on $BASE_URL"
  # The document is compiled in; a stale binary would be tested against a
  # document it does not serve.
  if ! "$VENV/bin/python" -c 'import json, sys, urllib.request
served = json.load(urllib.request.urlopen(sys.argv[1] + "/openapi.json", timeout=10))
sys.exit(served != json.load(open(sys.argv[2])))' "$BASE_URL" "$ROOT/src/http/openapi.json"; then
    log "$MSGD serves another /openapi.json than src/http/openapi.json: rebuild it (cargo build)"
    return 1
  fi
}

# Seeds what requests need to reach the handlers: a write key and a dev token
# for a user, a conversation that user owns with messages in it, and a
# history cursor. Prints shell assignments.
seed() {
  local admin_key write_key
  admin_key="$("$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["key"])' <"$WORK/app.json")"
  write_key="$("$MSGD" keys create --app "$("$VENV/bin/python" -c \
    'import json,sys; print(json.load(sys.stdin)["app"]["id"])' <"$WORK/app.json")" --scope write --json |
    "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
  ADMIN_KEY="$admin_key" WRITE_KEY="$write_key" BASE_URL="$BASE_URL" SEEDED_MESSAGES=3 "$VENV/bin/python" - <<'PY'
import json, os, shlex, urllib.request

base, admin, write = os.environ["BASE_URL"], os.environ["ADMIN_KEY"], os.environ["WRITE_KEY"]

def call(method, path, body=None, key=admin, token=None):
    headers = {"X-Api-Key": key, "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)

token = call("POST", "/v1/dev/token", {"user_id": "st-user"})["access_token"]
conversation = call("POST", "/v1/conversations", {"members": ["st-peer"], "title": "seed"}, write, token)["id"]
for i in range(int(os.environ["SEEDED_MESSAGES"])):
    call("POST", f"/v1/conversations/{conversation}/messages", {"payload": {"n": i}}, write, token)
cursor = call("GET", f"/v1/conversations/{conversation}/messages?limit=1", key=write, token=token)["next_cursor"]
assert cursor, "a one-message page of three has a next cursor"
for name, value in [("ADMIN_KEY", admin), ("WRITE_KEY", write), ("USER", "st-user"), ("USER_TOKEN", token),
                    ("CONVERSATION", conversation), ("CURSOR", cursor), ("SEEDED_MESSAGES", os.environ["SEEDED_MESSAGES"])]:
    print(f"export MSGDST_{name}={shlex.quote(value)}")
PY
}

# One line per failure of a run, from its JUnit report: "<run>: <operation>: <check>".
summarize() {
  "$VENV/bin/python" - "$1" "$WORK/report-$2"/*.xml <<'PY'
import re, sys, xml.etree.ElementTree as ET
run = sys.argv[1]
for report in sys.argv[2:]:
    for case in ET.parse(report).iter("testcase"):
        for outcome in case:
            if outcome.tag in ("failure", "error"):
                titles = sorted(set(re.findall(r"^- (ST\d+ .+)$", outcome.text or "", re.M))) or [outcome.tag]
                for title in titles:
                    print(f"  {run}: {case.get('name')}: {title}")
PY
}

# One schemathesis run as `identity` (admin or user); returns its exit status.
run_schemathesis() {
  local backend="$1" identity="$2" config="$WORK/schemathesis-$2.toml"
  {
    cat <<TOML
base-url = "$BASE_URL"
hooks = "$ROOT/scripts/schemathesis_hooks.py"
# One worker: with two, CPython 3.11's ast.parse (hypothesis calls it to
# describe filters) fails at random with "AST constructor recursion depth
# mismatch" when two threads parse at once.
workers = 1
seed = $SEED
generation.max-examples = $EXAMPLES
# Credentials come from [auth] below; generated ones would turn most requests
# into 401s. The ignored_auth check still probes missing and invalid ones.
generation.with-security-parameters = false
max-time = $MAX_TIME
suppress-health-check = ["too_slow", "filter_too_much"]
request-timeout = 10.0
checks.enabled = true
# No stateful phase: it follows links from created resources, which the
# seeded id below overrides (its resource checks then report the seeded
# conversation as a missing one), and it sends values copied from responses
# as "valid" without checking them against the parameter's schema.
phases.stateful.enabled = false

[parameters]
# Requests reach the handlers only for a conversation that exists.
"path.id" = "\${MSGDST_CONVERSATION}"

[[operations]]
# GET /v1/ws answers 400 websocket_required to anything but a WebSocket
# handshake, which schemathesis does not perform; its refusals are still checked.
include-operation-id = "websocket"
checks.positive_data_acceptance.enabled = false

[[operations]]
# A declared size over the limit is 413 attachment_too_large, as documented.
include-operation-id = "createUpload"
checks.negative_data_rejection.expected-statuses = ["400", "401", "403", "404", "413", "415", "422", "429"]
TOML
    if [ "$identity" = admin ]; then
      cat <<TOML

[auth.openapi]
apiKey = { api_key = "\${MSGDST_ADMIN_KEY}" }
operatorToken = { bearer = "\${MSGDST_OPERATOR_TOKEN}" }

[[operations]]
# Receipts belong to a user: the app itself gets 400 user_required.
include-operation-id = "postReceipt"
checks.positive_data_acceptance.enabled = false

[[operations]]
# So do reactions.
include-operation-id = "addReaction"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-operation-id = "removeReaction"
checks.positive_data_acceptance.enabled = false

[[operations]]
# And mute flags.
include-operation-id = "muteConversation"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-operation-id = "unmuteConversation"
checks.positive_data_acceptance.enabled = false
TOML
    else
      cat <<TOML

[auth.openapi]
apiKey = { api_key = "\${MSGDST_WRITE_KEY}" }
bearer = { bearer = "\${MSGDST_USER_TOKEN}" }
operatorToken = { bearer = "\${MSGDST_OPERATOR_TOKEN}" }

[[operations]]
# Schemathesis 4.32 sends a schema-valid reaction (12 precomposed characters)
# as a negative case and reports "Invalid component: positive test case"
# when msgd accepts it; the reaction rule's refusals are asserted in
# tests/it/reactions.rs.
include-operation-id = "addReaction"
checks.negative_data_rejection.enabled = false
TOML
    fi
  } >"$config"
  log "$backend as $identity: up to $EXAMPLES examples per operation, at most ${MAX_TIME}s, seed $SEED"
  (cd "$WORK" && MSGDST_IDENTITY="$identity" "$VENV/bin/schemathesis" --config-file "$config" run --no-color \
    --report junit --report-dir "$WORK/report-$identity" "$ROOT/src/http/openapi.json")
}

install_schemathesis
failed=()
findings=""
for backend in "${BACKENDS[@]}"; do
  start_msgd "$backend"
  eval "$(seed)"
  for identity in admin user; do
    if ! run_schemathesis "$backend" "$identity"; then
      failed+=("$backend/$identity")
      findings+="$(summarize "$backend/$identity" "$identity" || true)"$'\n'
    fi
  done
  if ! kill -0 "$MSGD_PID" 2>/dev/null; then
    log "$backend: msgd died during the run"; tail -50 "$WORK/msgd.log" >&2; failed+=("$backend/crash")
  fi
  cleanup
done

if [ "${#failed[@]}" -gt 0 ]; then
  log "FAILED: ${failed[*]}; each failure, with a curl command to reproduce it, is printed above:"
  printf '%s' "$findings" >&2
  exit 1
fi
log "passed on ${BACKENDS[*]}"
