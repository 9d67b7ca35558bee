#!/usr/bin/env bash
# Local infrastructure for development and tests: a Kafka-protocol broker (nisshi) and a
# MongoDB-wire server (secantusd-rs), each on a free loopback port with its own directory.
#
#   scripts/infra.sh install                          install pinned versions when missing
#   scripts/infra.sh start kafka|mongo DIR [--owner-pid PID]
#        start a server whose state lives in DIR; prints its address once it is ready.
#        Restarting in the same DIR keeps the data and the port. With --owner-pid the
#        server stops by itself when that process exits (tests cannot leak servers).
#   scripts/infra.sh stop DIR                         stop it (TERM, then KILL after 10 s)
#   scripts/infra.sh address DIR                      print the address of a started server
set -euo pipefail

NISSHI_VERSION=0.7.0-pre.2
SECANTUS_VERSION=0.5.3-beta.196
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"

die() { echo "infra.sh: $*" >&2; exit 1; }
# shellcheck source=scripts/proc.sh
. "$(dirname "$0")/proc.sh"

installed() { # crate version
  cargo install --list | grep -q "^$1 v$2:"
}

install() {
  if ! command -v cmake >/dev/null; then
    echo "installing cmake (secantusd-rs builds WiredTiger with it)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
  fi
  if installed nisshi "$NISSHI_VERSION"; then
    echo "nisshi $NISSHI_VERSION already installed" >&2
  else
    echo "installing nisshi $NISSHI_VERSION (first time: ~15-20 min)" >&2
    cargo install nisshi --version "$NISSHI_VERSION" --no-default-features --features libsql --locked
  fi
  if installed secantus-mdb "$SECANTUS_VERSION"; then
    echo "secantusd-rs $SECANTUS_VERSION already installed" >&2
  else
    echo "installing secantusd-rs $SECANTUS_VERSION (first time: ~10 min)" >&2
    cargo install secantus-mdb --version "$SECANTUS_VERSION" --locked --ignore-rust-version
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# index_record_headers DB: nisshi 0.7's sqlite schema has no index on its `header` table, and
# every fetched record looks its headers up there: a full scan of every header of every topic,
# under the storage's single lock. Our records carry two headers each, so the broker's cost
# per fetched record grew with everything ever produced until fetches starved (measured: a
# 6-partition topic at 300 records/s stopped being delivered after ~30 s). The index makes the
# lookup a seek; the broker's own start-up DDL only creates missing tables, so it stays.
index_record_headers() {
  python3 - "$1" <<'PY' || die "cannot index the broker's header table in $1"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
db.execute("create index if not exists header_topition_offset on header (topition, offset_id)")
db.commit()
PY
}

# wait_for_log FILE PATTERN PID: until PATTERN appears in FILE, the process dies, or 60 s.
wait_for_log() {
  for _ in $(seq 1 600); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    alive "$3" || { tail -n 20 "$1" >&2; die "server exited during start-up (log: $1)"; }
    sleep 0.1
  done
  tail -n 20 "$1" >&2
  die "server not ready after 60 s (log: $1)"
}

start() {
  local kind="${1:-}" dir="${2:-}" owner=""
  [ -n "$kind" ] && [ -n "$dir" ] || die "usage: start kafka|mongo DIR [--owner-pid PID]"
  shift 2
  while [ $# -gt 0 ]; do
    case "$1" in
      --owner-pid) owner="${2:?--owner-pid needs a PID}"; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd -P)" # physical, as /proc/PID/cwd shows it
  if [ -f "$dir/pid" ] && running "$(cat "$dir/pid")" "$dir"; then
    cat "$dir/address"; return 0
  fi
  local log="$dir/server.log" port pid
  # A fresh log per start, so readiness is read from this start's lines only.
  [ -f "$log" ] && mv "$log" "$log.previous"
  case "$kind" in
    kafka)
      command -v nisshi >/dev/null || die "nisshi is not installed: run scripts/infra.sh install"
      port="$(cat "$dir/port" 2>/dev/null || free_port)"
      # nisshi reads a .env in its working directory and keeps its sqlite file there.
      ( cd "$dir" && exec nisshi broker \
          --listener-url "tcp://127.0.0.1:$port" \
          --advertised-listener-url "tcp://127.0.0.1:$port" \
          --storage-engine "sqlite://nisshi.db" </dev/null >>"$log" 2>&1 ) &
      pid=$!
      echo "$pid" >"$dir/pid"
      wait_for_log "$log" "ready in" "$pid"
      index_record_headers "$dir/nisshi.db"
      echo "127.0.0.1:$port" >"$dir/address"
      ;;
    mongo)
      command -v secantusd-rs >/dev/null || die "secantusd-rs is not installed: run scripts/infra.sh install"
      port="$(cat "$dir/port" 2>/dev/null || echo 0)"
      # --sync-on-commit: without it secantusd-rs acknowledges writes, even j:true ones,
      # before its log is on disk, while the worker commits Kafka offsets on that
      # acknowledgement: a database crash could then lose purchases whose offsets are
      # committed. With it an acknowledged write is on disk, as with a real mongod, so what
      # the tests, the local stack and the benchmarks show holds for production.
      ( cd "$dir" && exec secantusd-rs --host 127.0.0.1 --port "$port" --storage-path "$dir/data" \
          --cache-size 256M --log-file-max 16MB --sync-on-commit </dev/null >>"$log" 2>&1 ) &
      pid=$!
      echo "$pid" >"$dir/pid"
      wait_for_log "$log" "listening on" "$pid"
      port="$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
      echo "mongodb://127.0.0.1:$port" >"$dir/address"
      ;;
    *) die "unknown server kind '$kind' (kafka or mongo)" ;;
  esac
  echo "$port" >"$dir/port"
  if [ -n "$owner" ]; then
    # Watchdog: stop the server when its owner (a test process) is gone, however it ended.
    ( while alive "$owner" && running "$pid" "$dir"; do sleep 1; done
      if running "$pid" "$dir"; then kill "$pid" 2>/dev/null || true; fi ) </dev/null >/dev/null 2>&1 &
  fi
  cat "$dir/address"
}

stop() {
  local dir pid
  dir="$(cd "${1:?usage: stop DIR}" 2>/dev/null && pwd -P)" || return 0
  [ -f "$dir/pid" ] || return 0
  pid="$(cat "$dir/pid")"
  if running "$pid" "$dir" && kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 100); do running "$pid" "$dir" || break; sleep 0.1; done
    if running "$pid" "$dir"; then kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$dir/pid"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  address) cat "${2:?usage: address DIR}/address" ;;
  *) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac
