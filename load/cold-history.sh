#!/bin/bash
# Usage: cargo build --release && scripts/services.sh up && load/cold-history.sh
# Prints p50, p99 (ms), pages/s and errors of three runs of 500 cold pages for each case, and the
# object store's ranged-GET time. Each case gets a fresh data dir (embedded) or database, Redis
# prefix and bucket (services).
# Cold history pages (block cache off) of the 10,000-message conversation, per deployment and flush.block_bytes.
cd "$(dirname "$0")/.."
M=${MSGD:-target/release/msgd}
. /tmp/msgd-services/env  # scripts/services.sh up
for DEP in embedded services; do
for BB in 16777216 262144; do
  W=$(mktemp -d)
  DB=cold$BB$$
  unset MSGD_POSTGRES__URL MSGD_REDIS__URL MSGD_S3__ENDPOINT MSGD_S3__BUCKET MSGD_S3__ACCESS_KEY_ID MSGD_S3__SECRET_ACCESS_KEY MSGD_REDIS__KEY_PREFIX
  export MSGD_DATA_DIR=$W MSGD_HTTP__LISTEN=127.0.0.1:18777 MSGD_AUTH__DEV_TOKENS__ENABLED=true MSGD_LIMITS__USER_RATE=1000000 MSGD_LIMITS__USER_BURST=1000000 MSGD_LIMITS__KEY_RATE=1000000 MSGD_LIMITS__KEY_BURST=1000000 MSGD_FLUSH__INTERVAL=1h MSGD_HISTORY__BLOCK_CACHE_BYTES=0 MSGD_FLUSH__BLOCK_BYTES=$BB
  if [ $DEP = services ]; then
    psql "$MSGDTEST_POSTGRES_URL" -qc "CREATE DATABASE $DB" >/dev/null
    mkdir -p $MSGDTEST_S3_ROOT/$DB
    export MSGD_POSTGRES__URL=${MSGDTEST_POSTGRES_URL%/postgres}/$DB MSGD_REDIS__URL=$MSGDTEST_REDIS_URL MSGD_REDIS__KEY_PREFIX=$DB MSGD_S3__ENDPOINT=$MSGDTEST_S3_ENDPOINT MSGD_S3__BUCKET=$DB MSGD_S3__ACCESS_KEY_ID=$MSGDTEST_S3_ACCESS_KEY_ID MSGD_S3__SECRET_ACCESS_KEY=$MSGDTEST_S3_SECRET_ACCESS_KEY
  fi
  KEY=$($M keys create-app cold --json | jq -r .key)
  taskset -c 0 $M serve > $W/serve.log 2>&1 &
  PID=$!
  sleep 2
  CONV=$(taskset -c 1 $M load send --base-url http://127.0.0.1:18777 --api-key $KEY --count 10000 --concurrency 16 --users 4 --json | jq -r .conversation_id)
  BLOCKS=$(MSGD_FLUSH__HOT_WINDOW=1000 $M flush --all --json 2>/dev/null | jq '.segments[0].blocks | length')
  for i in 1 2 3; do
    R=$(taskset -c 1 $M load history --base-url http://127.0.0.1:18777 --api-key $KEY --conversation-id $CONV --requests 500 --limit 50 --after-from 0 --after-to 8900 --json | jq -c '[.latency_ms_p50, .latency_ms_p99, .pages_per_second, .errors]')
    echo "$DEP block_bytes=$BB blocks=$BLOCKS p50,p99,pages/s,errors=$R"
  done
  curl -s localhost:18777/metrics | grep -E 'object_store_request_duration_seconds_(sum|count)\{op="get_range"'
  kill $PID; wait $PID 2>/dev/null
done
done
