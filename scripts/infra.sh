#!/usr/bin/env bash
# Local infrastructure for development and tests: a Kafka-protocol broker (nisshi) and a
# MongoDB-wire server (secantusd-rs), each on a free loopback port with its own directory.
#
#   scripts/infra.sh install                          install pinned versions when missing
#   scripts/infra.sh start kafka|mongo DIR [--owner-pid PID] [--user NAME:PASSWORD] [--tls CERTS [--mutual-tls]]
#        start a server whose state lives in DIR; prints its address once it is ready.
#        Restarting in the same DIR keeps the data and the port. With --owner-pid the
#        server stops by itself when that process exits (tests cannot leak servers).
#        --user: authentication on, with that user (kafka: SCRAM-SHA-256 and -512 via
#        `nisshi user create`; mongo: --auth, a readWriteAnyDatabase and userAdminAnyDatabase user on admin,
#        so tests can make users with fewer privileges).
#        --tls: reached over TLS only, with CERTS/server.pem and server.key (from `certs`);
#        mongo also verifies client certificates signed by CERTS/ca.pem when presented.
#        --mutual-tls (kafka): clients must present a certificate signed by CERTS/ca.pem.
#   scripts/infra.sh certs DIR                        a test CA and server/client certificates
#                                                     for 127.0.0.1 and localhost (kept if there)
#   scripts/infra.sh stop DIR                         stop it (TERM, then KILL after 10 s)
#   scripts/infra.sh address DIR                      print the address of a started server
set -euo pipefail

NISSHI_VERSION=0.7.0-pre.2
SECANTUS_VERSION=0.5.3-beta.196
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
SCRIPTS="$(cd "$(dirname "$0")" && pwd -P)"
ROOT="$(dirname "$SCRIPTS")"
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

# certs DIR: a CA and, signed by it, a server certificate for 127.0.0.1/localhost and a
# client certificate. EC P-256 keys in PKCS#8, which OpenSSL, rustls and Python all read.
certs() {
  local dir="${1:?usage: certs DIR}"
  mkdir -p "$dir"
  [ -f "$dir/client.pem" ] && return 0
  command -v openssl >/dev/null || die "openssl is needed to make test certificates"
  local key=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${key[@]}" -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 30 \
    -subj "/CN=scalable-shop test CA $(basename "$dir")" 2>/dev/null
  local name
  for name in server client; do
    openssl req "${key[@]}" -keyout "$dir/$name.key" -out "$dir/$name.csr" \
      -subj "/CN=scalable-shop test $name" 2>/dev/null
    if [ "$name" = server ]; then
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$dir/$name.ext"
    else
      printf 'extendedKeyUsage=clientAuth\n' >"$dir/$name.ext"
    fi
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
      -CAcreateserial -days 30 -extfile "$dir/$name.ext" -out "$dir/$name.pem" 2>/dev/null
    rm -f "$dir/$name.csr" "$dir/$name.ext"
  done
  echo "$dir"
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

# start_nisshi DIR LISTEN_PORT ADVERTISED_PORT LOG [--authentication]
start_nisshi() {
  local dir="$1" listen="$2" advertised="$3" log="$4"; shift 4
  # nisshi reads a .env in its working directory and keeps its sqlite file there.
  ( cd "$dir" && exec nisshi broker \
      --listener-url "tcp://127.0.0.1:$listen" \
      --advertised-listener-url "tcp://127.0.0.1:$advertised" \
      --storage-engine "sqlite://nisshi.db" "$@" </dev/null >>"$log" 2>&1 ) &
  echo $! >"$dir/pid"
  wait_for_log "$log" "ready in" "$(cat "$dir/pid")"
  index_record_headers "$dir/nisshi.db"
}

# create_mongo_user PORT NAME:PASSWORD CERTS: the first user of an --auth server, through
# the localhost exception (a loopback client may create the first user on admin). pymongo
# from the test virtualenv (`make test-deps`), or $PYTHON.
create_mongo_user() {
  local python="${PYTHON:-$ROOT/.local/venv/bin/python}"
  [ -x "$python" ] || die "creating a MongoDB user needs pymongo: run make test-deps (or set PYTHON)"
  "$python" - "$@" <<'PY'
import sys
from pymongo import MongoClient
port, user, certs = sys.argv[1], sys.argv[2], sys.argv[3]
name, password = user.split(":", 1)
options = {"tls": True, "tlsCAFile": f"{certs}/ca.pem"} if certs else {}
client = MongoClient(f"mongodb://127.0.0.1:{port}/", serverSelectionTimeoutMS=10000, **options)
client.admin.command("createUser", name, pwd=password,
                     roles=[{"role": "readWriteAnyDatabase", "db": "admin"},
                            {"role": "userAdminAnyDatabase", "db": "admin"}],
                     mechanisms=["SCRAM-SHA-256"])
PY
}

start() {
  local kind="${1:-}" dir="${2:-}" owner="" user="" tls="" mutual=""
  [ -n "$kind" ] && [ -n "$dir" ] || die "usage: start kafka|mongo DIR [--owner-pid PID] [--user NAME:PASSWORD] [--tls CERTS [--mutual-tls]]"
  shift 2
  while [ $# -gt 0 ]; do
    case "$1" in
      --owner-pid) owner="${2:?--owner-pid needs a PID}"; shift 2 ;;
      --user) user="${2:?--user needs NAME:PASSWORD}"; shift 2 ;;
      --tls) tls="$(cd "${2:?--tls needs a certificate directory}" && pwd -P)" || die "no certificate directory $2"; shift 2 ;;
      --mutual-tls) mutual=1; shift ;;
      *) die "unknown option $1" ;;
    esac
  done
  if [ -n "$mutual" ]; then
    [ -n "$tls" ] || die "--mutual-tls needs --tls CERTS"
    [ "$kind" = kafka ] || die "--mutual-tls is for kafka (mongo verifies client certificates whenever they are presented)"
  fi
  case "$user" in "" | ?*:?*) ;; *) die "--user must be NAME:PASSWORD" ;; esac
  if [ -n "$tls" ]; then [ -f "$tls/server.pem" ] || die "no $tls/server.pem: make it with scripts/infra.sh certs $tls"; fi
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
      # With TLS the broker listens on an inner port that only the terminator reaches, and
      # advertises the terminator's, so every client connection goes through TLS.
      local listen="$port"
      if [ -n "$tls" ]; then
        listen="$(cat "$dir/inner-port" 2>/dev/null || free_port)"
        echo "$listen" >"$dir/inner-port"
      fi
      if [ -n "$user" ] && [ ! -f "$dir/users" ]; then
        # nisshi refuses AlterUserScramCredentials before authentication and `nisshi user
        # create` cannot authenticate: users are made once, with authentication still off.
        start_nisshi "$dir" "$listen" "$port" "$log"
        pid="$(cat "$dir/pid")"
        local mechanism
        for mechanism in scram256 scram512; do
          nisshi user create --broker "tcp://127.0.0.1:$listen" --mechanism "$mechanism" \
            "${user%%:*}" "${user#*:}" >>"$log" 2>&1 || die "cannot create Kafka user ${user%%:*} (log: $log)"
        done
        kill "$pid"; for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
        echo "${user%%:*}" >"$dir/users"
        mv "$log" "$log.users"
      fi
      start_nisshi "$dir" "$listen" "$port" "$log" ${user:+--authentication}
      pid="$(cat "$dir/pid")"
      if [ -n "$tls" ]; then
        ( cd "$dir" && exec python3 "$SCRIPTS/tls_terminator.py" --listen "$port" --forward "$listen" \
            --cert "$tls/server.pem" --key "$tls/server.key" ${mutual:+--client-ca "$tls/ca.pem"} \
            </dev/null >>"$dir/tls.log" 2>&1 ) &
        echo $! >"$dir/tls.pid"
        wait_for_log "$dir/tls.log" "listening on" "$(cat "$dir/tls.pid")"
      fi
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
      local security=()
      [ -n "$user" ] && security+=(--auth)
      [ -n "$tls" ] && security+=(--tls-cert-file "$tls/server.pem" --tls-key-file "$tls/server.key" --tls-ca-file "$tls/ca.pem")
      ( cd "$dir" && exec secantusd-rs --host 127.0.0.1 --port "$port" --storage-path "$dir/data" \
          --cache-size 256M --log-file-max 16MB --sync-on-commit ${security[@]+"${security[@]}"} </dev/null >>"$log" 2>&1 ) &
      pid=$!
      echo "$pid" >"$dir/pid"
      wait_for_log "$log" "listening on" "$pid"
      port="$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
      echo "mongodb://127.0.0.1:$port" >"$dir/address"
      if [ -n "$user" ] && [ ! -f "$dir/users" ]; then
        create_mongo_user "$port" "$user" "$tls" || die "cannot create MongoDB user ${user%%:*} (log: $log)"
        echo "${user%%:*}" >"$dir/users"
      fi
      ;;
    *) die "unknown server kind '$kind' (kafka or mongo)" ;;
  esac
  echo "$port" >"$dir/port"
  if [ -n "$owner" ]; then
    # Watchdog: stop the server when its owner (a test process) is gone, however it ended.
    ( while alive "$owner" && running "$pid" "$dir"; do sleep 1; done
      if running "$pid" "$dir"; then kill "$pid" 2>/dev/null || true; fi
      if [ -f "$dir/tls.pid" ]; then kill "$(cat "$dir/tls.pid")" 2>/dev/null || true; fi ) </dev/null >/dev/null 2>&1 &
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
  if [ -f "$dir/tls.pid" ]; then
    pid="$(cat "$dir/tls.pid")"
    if running "$pid" "$dir"; then kill "$pid" 2>/dev/null || true; fi
    rm -f "$dir/tls.pid"
  fi
}

case "${1:-}" in
  install) install ;;
  certs) shift; certs "$@" ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  address) cat "${2:?usage: address DIR}/address" ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
