#!/usr/bin/env bash
# The side-by-side throughput harness (load/README.md, "Throughput on one
# core"). In one sitting: the server side (msgd, Redis, Postgres) pinned to
# core 0, the load generator on core 1; a Postgres-table baseline with
# pgbench; then msgd's send scenarios for each build given, alternated run by
# run, each on a fresh app (services) or data dir (embedded). Prints every
# run, then medians and their ratio to the baseline.
#
#   scripts/services.sh up
#   load/bench.sh [--runs N] [--count N] [--only services|embedded] [--scenarios "single batch ws"]
#                 [--load-with MSGD] MSGD [MSGD ...]
#
# MSGD are release binaries (e.g. a copy of the build before a change, then
# target/release/msgd). Scenarios: single sends, batches of 100, ws (send
# frames over 16 WebSockets, 32 in flight each). Each build drives its own
# load unless --load-with names the binary that does (for a build whose
# `msgd load` lacks a scenario). Needs 2 cores (taskset) and pgbench
# (postgresql-client).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/listening.sh
. "$ROOT/scripts/listening.sh"
RUNS=3
COUNT=20000
ONLY=""
SCENARIOS="single batch ws"
LOAD_WITH=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --count) COUNT="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --scenarios) SCENARIOS="$2"; shift 2 ;;
    --load-with) LOAD_WITH="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: load/bench.sh [--runs N] [--count N] [--only services|embedded] [--scenarios LIST] [--load-with MSGD] MSGD [MSGD ...]" >&2; exit 2; }
BUILDS=("$@")
for build in "${BUILDS[@]}"; do [ -x "$build" ] || { echo "bench: $build is not an executable" >&2; exit 2; }; done

ENV_FILE=/tmp/msgd-services/env
# shellcheck disable=SC1090
. "$ENV_FILE" 2>/dev/null || { echo "bench: no $ENV_FILE: run scripts/services.sh up first" >&2; exit 2; }
PGBENCH="$MSGDTEST_PG_BIN/pgbench"
PSQL="$MSGDTEST_PG_BIN/psql"
WORK="$(mktemp -d)"
RESULTS="$WORK/results.tsv"
MSGD_PID=""
cleanup() {
  [ -z "$MSGD_PID" ] || kill "$MSGD_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "bench: $*" >&2; }

# Everything the server side runs on goes to core 0 (children inherit it).
pin_servers() {
  local pid
  for pid in $(pgrep -f 'postgres|redis-server'); do taskset -apc 0 "$pid" >/dev/null 2>&1 || true; done
}

# The Postgres-table baseline: one INSERT per message into an indexed table,
# 16 clients, what an app writing messages straight to Postgres gets.
baseline() {
  local db="bench_pg" script="$WORK/insert.sql"
  PGOPTIONS='-c client_min_messages=warning' "$PSQL" -q "$MSGDTEST_POSTGRES_URL" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
  local url="${MSGDTEST_POSTGRES_URL%/*}/$db"
  "$PSQL" -q "$url" -c "CREATE TABLE messages (id bigserial PRIMARY KEY, conversation_id uuid NOT NULL,
    ts bigint NOT NULL, body text NOT NULL)" -c "CREATE INDEX ON messages (conversation_id, id)" >/dev/null
  printf '%s\n' "INSERT INTO messages (conversation_id, ts, body) VALUES ('0190c0de-0000-7000-8000-000000000001', \
(extract(epoch from now()) * 1000)::bigint, repeat('x', 200));" >"$script"
  pin_servers
  taskset -c 1 "$PGBENCH" -n -c 16 -j 1 -t "$((COUNT / 16))" -f "$script" "$url" 2>/dev/null |
    sed -n 's/^tps = \([0-9.]*\).*/\1/p'
  "$PSQL" -q "$MSGDTEST_POSTGRES_URL" -c "DROP DATABASE $db" >/dev/null
}

# Starts one build for one backend; sets MSGD_PID and BASE_URL, prints the admin key.
start_msgd() {
  local msgd="$1" backend="$2" id
  id="b$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  rm -rf "$WORK/data"
  export MSGD_DATA_DIR="$WORK/data" MSGD_HTTP__LISTEN="127.0.0.1:0" MSGD_OBSERVABILITY__LOGGING__FORMAT=json
  export MSGD_AUTH__DEV_TOKENS__ENABLED=true
  export MSGD_LIMITS__USER_RATE=10000000 MSGD_LIMITS__USER_BURST=10000000
  export MSGD_LIMITS__KEY_RATE=10000000 MSGD_LIMITS__KEY_BURST=10000000
  if [ "$backend" = services ]; then
    "$PSQL" -q "$MSGDTEST_POSTGRES_URL" -c "CREATE DATABASE $id" >/dev/null
    mkdir -p "$MSGDTEST_S3_ROOT/$id"
    export MSGD_POSTGRES__URL="${MSGDTEST_POSTGRES_URL%/*}/$id"
    export MSGD_REDIS__URL="$MSGDTEST_REDIS_URL" MSGD_REDIS__KEY_PREFIX="$id"
    export MSGD_S3__ENDPOINT="$MSGDTEST_S3_ENDPOINT" MSGD_S3__BUCKET="$id"
    export MSGD_S3__ACCESS_KEY_ID="$MSGDTEST_S3_ACCESS_KEY_ID" MSGD_S3__SECRET_ACCESS_KEY="$MSGDTEST_S3_SECRET_ACCESS_KEY"
  else
    unset MSGD_POSTGRES__URL MSGD_REDIS__URL MSGD_REDIS__KEY_PREFIX MSGD_S3__ENDPOINT MSGD_S3__BUCKET \
      MSGD_S3__ACCESS_KEY_ID MSGD_S3__SECRET_ACCESS_KEY
  fi
  KEY="$("$msgd" keys create-app bench --json | sed -n 's/.*"key": *"\([^"]*\)".*/\1/p')"
  taskset -c 0 "$msgd" serve 2>"$WORK/msgd.log" &
  MSGD_PID=$!
  wait_for_listening "$WORK/msgd.log" "$MSGD_PID" || exit 1
  pin_servers
}

stop_msgd() {
  kill "$MSGD_PID" 2>/dev/null || true
  wait "$MSGD_PID" 2>/dev/null || true
  MSGD_PID=""
}

# One scenario, 16 clients: "single" (one message per request), "batch" (100
# per request) or "ws" (send frames over a WebSocket each, 32 in flight).
run_scenario() {
  local msgd="$1" backend="$2" scenario="$3" count="$COUNT" report
  local how=(--batch 1)
  case "$scenario" in
    batch) how=(--batch 100); count=$((COUNT * 5)) ;;
    ws) how=(--via ws --window 32); count=$((COUNT * 2)) ;;
  esac
  start_msgd "$msgd" "$backend"
  report="$(taskset -c 1 "${LOAD_WITH:-$msgd}" load send --base-url "$BASE_URL" --api-key "$KEY" --count "$count" \
    --concurrency 16 --users 64 "${how[@]}" --json)"
  stop_msgd
  python3 -c 'import json, sys; r = json.loads(sys.argv[1]); assert r["errors"] == 0, r["failures"]
print("%.0f\t%.2f" % (r["messages_per_second"], r["latency_ms_p99"]))' "$report"
}

command -v "$PGBENCH" >/dev/null || { log "no $PGBENCH (apt-get install postgresql-client)"; exit 2; }
BACKENDS=(services embedded)
[ -z "$ONLY" ] || BACKENDS=("$ONLY")
for round in $(seq 1 "$RUNS"); do
  tps="$(baseline)"
  printf 'postgres-table\tpgbench\tsingle\t%s\t%.0f\t-\n' "$round" "$tps" | tee -a "$RESULTS"
  for backend in "${BACKENDS[@]}"; do
    for scenario in $SCENARIOS; do
      for i in "${!BUILDS[@]}"; do
        line="$(run_scenario "${BUILDS[$i]}" "$backend" "$scenario")"
        printf '%s\tbuild%s\t%s\t%s\t%s\n' "$backend" "$i" "$scenario" "$round" "$line" | tee -a "$RESULTS"
      done
    done
  done
done

echo
echo "builds: $(for i in "${!BUILDS[@]}"; do printf 'build%s=%s ' "$i" "${BUILDS[$i]}"; done)"
python3 - "$RESULTS" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    backend, build, scenario, _, rate, p99 = line.rstrip("\n").split("\t")
    runs[(backend, build, scenario)].append((float(rate), p99))
base = statistics.median(r for r, _ in runs.pop(("postgres-table", "pgbench", "single")))
print(f"{'deployment':<16}{'build':<8}{'scenario':<10}{'median msg/s':>14}{'p99 ms (median run)':>22}{'× pgbench':>11}")
print(f"{'postgres-table':<16}{'pgbench':<8}{'single':<10}{base:>14,.0f}{'-':>22}{1:>11.2f}")
for (backend, build, scenario), values in sorted(runs.items()):
    values.sort()
    rate, p99 = values[len(values) // 2]
    print(f"{backend:<16}{build:<8}{scenario:<10}{rate:>14,.0f}{p99:>22}{rate / base:>11.2f}")
EOF
