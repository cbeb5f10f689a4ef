# Sourced by scripts that start `msgd serve` with MSGD_HTTP__LISTEN=127.0.0.1:0
# and JSON logs: wait_for_listening LOG PID sets BASE_URL from the
# "listening" line, or returns 1 (saying why, with the log) when msgd exits
# or does not listen within 30 s.
wait_for_listening() {
  local log_file="$1" pid="$2"
  BASE_URL=""
  for _ in $(seq 1 300); do
    BASE_URL="$(sed -n 's/.*"addr":"\([0-9.:]*\)".*"message":"listening".*/http:\/\/\1/p;
                         s/.*"message":"listening".*"addr":"\([0-9.:]*\)".*/http:\/\/\1/p' "$log_file" | head -1)"
    [ -z "$BASE_URL" ] || return 0
    kill -0 "$pid" 2>/dev/null || { echo "msgd exited:" >&2; cat "$log_file" >&2; return 1; }
    sleep 0.1
  done
  echo "msgd did not listen within 30 s" >&2
  cat "$log_file" >&2
  return 1
}
