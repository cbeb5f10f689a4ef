#!/usr/bin/env bash
# Redis memory by msgd key family (ARCHITECTURE.md, "Redis key schema"):
# keys and bytes per family from SCAN and MEMORY USAGE ... SAMPLES 0 (the
# value and the key's own allocation; Redis' dictionary and expiry entries,
# a few dozen bytes a key, come on top: compare the total with used_memory,
# printed last). Read-only, one MEMORY USAGE per key through one redis-cli.
#
#   load/redis-memory.sh [-u redis://127.0.0.1:6379] [PREFIX]   # PREFIX: redis.key_prefix (msgd)
set -euo pipefail
URL="redis://127.0.0.1:6379"
if [ "${1:-}" = "-u" ]; then URL="$2"; shift 2; fi
PREFIX="${1:-msgd}"
CLI=(redis-cli -u "$URL" --no-auth-warning)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"${CLI[@]}" --scan --pattern "$PREFIX:*" >"$WORK/keys"
# Quoted for redis-cli's line parser: keys hold client-chosen ids.
sed 's/\\/\\\\/g; s/"/\\"/g; s/^/MEMORY USAGE "/; s/$/" SAMPLES 0/' "$WORK/keys" | "${CLI[@]}" >"$WORK/bytes"
paste "$WORK/keys" "$WORK/bytes" | awk -F'\t' -v prefix="$PREFIX:" '
  {
    rest = substr($1, length(prefix) + 1)
    sub(/^\{[^}]*\}:/, "", rest)               # the hash tag ({sN} or {a:<app>})
    split(rest, parts, ":")
    family = parts[1]
    if (family == "state") family = family ":" parts[2]
    keys[family]++; bytes[family] += $2; total_keys++; total += $2
  }
  END {
    printf "%-18s %10s %14s %12s\n", "family", "keys", "bytes", "bytes/key"
    for (f in keys) printf "%-18s %10d %14d %12.1f\n", f, keys[f], bytes[f], bytes[f] / keys[f] | "sort"
    close("sort")
    printf "%-18s %10d %14d %12.1f\n", "total", total_keys, total, total_keys ? total / total_keys : 0
  }'
"${CLI[@]}" INFO memory | tr -d '\r' | grep -E '^(used_memory|used_memory_peak):'
