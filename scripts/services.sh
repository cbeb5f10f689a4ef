#!/usr/bin/env bash
# Installs (when missing), starts and stops the real servers msgd's tests and a
# local services-mode deployment use: PostgreSQL 15, Redis 7 and an S3 server
# (s3s-fs, a SigV4-checking S3 implementation over a directory). It also installs
# Prometheus (`prometheus` and `promtool`, for the observability tests) but never
# starts it: each test starts its own, as it does msgd.
#
#   scripts/services.sh up        install what is missing, start what is not running
#   scripts/services.sh down      stop everything this script started (by PID)
#   scripts/services.sh env       print the MSGD_* variables of a local services-mode msgd
#                                 on these servers: eval "$(scripts/services.sh env)"
#   scripts/services.sh test-env  print the MSGDTEST_* environment the tests read
#
# The local deployment uses database `msgd` (created by `up`), Redis key prefix
# `msgd` and bucket `msgd` (msgd creates a missing bucket itself); the tests use
# their own databases, prefixes and buckets on the same servers.
# Everything lives under $MSGDTEST_SERVICES_DIR (default /tmp/msgd-services) and
# listens on 127.0.0.1 only. No systemd: each server is a background process
# whose PID file is in that directory. `up` is idempotent.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"

DIR="${MSGDTEST_SERVICES_DIR:-/tmp/msgd-services}"
PG_PORT="${MSGDTEST_PG_PORT:-54329}"
REDIS_PORT="${MSGDTEST_REDIS_PORT:-63799}"
S3_PORT="${MSGDTEST_S3_PORT:-9199}"
S3_ACCESS_KEY="msgdtest"
S3_SECRET_KEY="msgdtest-secret-key"
S3FS_VERSION="0.14.1"

log() { echo "services: $*" >&2; }

# Root (CI) runs package installs and the postgres user switch directly;
# anyone else goes through sudo.
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  return 1
}

s3s_bin() {
  if command -v s3s-fs >/dev/null 2>&1; then command -v s3s-fs; return; fi
  if [ -x "$HOME/.cargo/bin/s3s-fs" ]; then echo "$HOME/.cargo/bin/s3s-fs"; return; fi
  return 1
}

install_missing() {
  local pkgs=() lean=()
  pg_bin >/dev/null || pkgs+=(postgresql)
  command -v redis-server >/dev/null || pkgs+=(redis-server)
  # Debian's prometheus package brings both binaries. Installed without its
  # recommends (no node_exporter); the tests start their own Prometheus.
  { command -v prometheus && command -v promtool; } >/dev/null || lean+=(prometheus)
  if [ "$((${#pkgs[@]} + ${#lean[@]}))" -gt 0 ]; then
    log "installing ${pkgs[*]} ${lean[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    if [ "${#pkgs[@]}" -gt 0 ]; then
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
    fi
    if [ "${#lean[@]}" -gt 0 ]; then
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null
    fi
  fi
  if ! s3s_bin >/dev/null; then
    # Pinned: newer releases need a newer rustc than Debian 12 machines here have.
    log "installing s3s-fs $S3FS_VERSION (cargo install, ~2 min)"
    cargo install "s3s-fs@$S3FS_VERSION" --locked --features binary
  fi
}

alive() { [ -f "$1" ] && kill -0 "$(head -1 "$1")" 2>/dev/null; }

wait_for() { # name, command...
  local name="$1"; shift
  for _ in $(seq 1 600); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "$name did not become ready"; return 1
}

start_postgres() {
  local bin; bin="$(pg_bin)"
  mkdir -p "$DIR/pg"
  $SUDO chown postgres:postgres "$DIR/pg"
  if [ ! -f "$DIR/pg/data/PG_VERSION" ]; then
    $SUDO runuser -u postgres -- "$bin/initdb" -D "$DIR/pg/data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  if alive "$DIR/pg/data/postmaster.pid"; then return; fi
  $SUDO runuser -u postgres -- "$bin/pg_ctl" -D "$DIR/pg/data" -l "$DIR/pg/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $DIR/pg -c fsync=off -c max_connections=300" start >/dev/null
  log "postgres on 127.0.0.1:$PG_PORT"
}

start_redis() {
  mkdir -p "$DIR/redis"
  if alive "$DIR/redis/pid"; then return; fi
  redis-server --daemonize yes --appendonly yes --appendfsync everysec \
    --maxmemory-policy noeviction --bind 127.0.0.1 --port "$REDIS_PORT" \
    --dir "$DIR/redis" --pidfile "$DIR/redis/pid" --logfile "$DIR/redis/log" --databases 16
  # PONG, not just an answer: while Redis replays its AOF it answers LOADING.
  wait_for redis bash -c "[ \"\$(redis-cli -p $REDIS_PORT ping 2>/dev/null)\" = PONG ]"
  log "redis on 127.0.0.1:$REDIS_PORT"
}

start_s3() {
  mkdir -p "$DIR/s3/data"
  if alive "$DIR/s3/pid"; then return; fi
  nohup "$(s3s_bin)" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_ACCESS_KEY" \
    --secret-key "$S3_SECRET_KEY" "$DIR/s3/data" >"$DIR/s3/log" 2>&1 &
  echo $! >"$DIR/s3/pid"
  wait_for s3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$S3_PORT"
  log "s3 (s3s-fs) on 127.0.0.1:$S3_PORT"
}

write_env() {
  cat >"$DIR/env" <<ENV
export MSGDTEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres
export MSGDTEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export MSGDTEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export MSGDTEST_S3_ACCESS_KEY_ID=$S3_ACCESS_KEY
export MSGDTEST_S3_SECRET_ACCESS_KEY=$S3_SECRET_KEY
export MSGDTEST_S3_ROOT=$DIR/s3/data
export MSGDTEST_PG_BIN=$(pg_bin)
export MSGDTEST_REDIS_SERVER=$(command -v redis-server)
export MSGDTEST_S3S_FS=$(s3s_bin)
export MSGDTEST_PROMETHEUS=$(command -v prometheus)
export MSGDTEST_PROMTOOL=$(command -v promtool)
ENV
}

create_msgd_database() {
  local bin; bin="$(pg_bin)"
  if ! "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'msgd'" \
      | grep -q 1; then
    "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE msgd" >/dev/null
    log "created database msgd"
  fi
}

# What a services-mode msgd on these servers needs; the same ports and
# credentials `up` starts them with.
msgd_env() {
  cat <<ENV
export MSGD_POSTGRES__URL=postgres://postgres@127.0.0.1:$PG_PORT/msgd
export MSGD_REDIS__URL=redis://127.0.0.1:$REDIS_PORT
export MSGD_S3__ENDPOINT=http://127.0.0.1:$S3_PORT
export MSGD_S3__BUCKET=msgd
export MSGD_S3__ACCESS_KEY_ID=$S3_ACCESS_KEY
export MSGD_S3__SECRET_ACCESS_KEY=$S3_SECRET_KEY
ENV
}

stop_pidfile() { # name, pidfile
  if alive "$2"; then
    kill "$(head -1 "$2")" 2>/dev/null || true
    for _ in $(seq 1 50); do alive "$2" || break; sleep 0.1; done
    log "stopped $1"
  fi
}

case "${1:-}" in
  up)
    install_missing
    mkdir -p "$DIR"; chmod 755 "$DIR"
    start_postgres; create_msgd_database; start_redis; start_s3; write_env
    log "ready; environment in $DIR/env" ;;
  down)
    if alive "$DIR/pg/data/postmaster.pid"; then
      $SUDO runuser -u postgres -- "$(pg_bin)/pg_ctl" -D "$DIR/pg/data" -m fast -w stop >/dev/null
      log "stopped postgres"
    fi
    stop_pidfile redis "$DIR/redis/pid"
    stop_pidfile s3 "$DIR/s3/pid" ;;
  env)
    msgd_env ;;
  test-env)
    cat "$DIR/env" ;;
  *)
    echo "usage: $0 up|down|env|test-env" >&2; exit 2 ;;
esac
