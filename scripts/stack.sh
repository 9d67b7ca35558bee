#!/usr/bin/env bash
# The local stack: broker, database and gateway on loopback, state and logs under .local/stack.
#
#   scripts/stack.sh up       install what is missing, start everything, wait until ready
#   scripts/stack.sh down     stop everything (the data stays for the next `up`)
#   scripts/stack.sh status   what runs where
#
# GATEWAY_PORT (default 8080) picks the gateway's port.
set -euo pipefail
cd "$(dirname "$0")/.."
stack=.local/stack
logs="$stack/logs"
gateway_port="${GATEWAY_PORT:-8080}"

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
  scripts/infra.sh install
  mkdir -p "$logs"
  local kafka mongo
  kafka="$(scripts/infra.sh start kafka "$stack/kafka")"
  mongo="$(scripts/infra.sh start mongo "$stack/mongo")"
  ln -sf ../kafka/server.log "$logs/kafka.log"
  ln -sf ../mongo/server.log "$logs/mongo.log"
  cargo build --release -p gateway
  if ! running "$stack/gateway.pid"; then
    KAFKA_BROKERS="$kafka" MONGO_URI="$mongo" GATEWAY_LISTEN="127.0.0.1:$gateway_port" \
      nohup target/release/gateway </dev/null >>"$logs/gateway.log" 2>&1 &
    echo $! >"$stack/gateway.pid"
  fi
  for _ in $(seq 1 150); do
    curl -fs "http://127.0.0.1:$gateway_port/readyz" >/dev/null && break
    running "$stack/gateway.pid" || { tail -n 20 "$logs/gateway.log"; echo "gateway exited (log: $logs/gateway.log)" >&2; exit 1; }
    sleep 0.2
  done
  status
  cat <<EOT

Try it:
  curl -i -X POST http://127.0.0.1:$gateway_port/api/purchases -H 'Content-Type: application/json' \\
       -d '{"username":"elad","userId":"555","price":12.00}'
  open http://127.0.0.1:$gateway_port/docs
Logs: $logs/   Stop: make down
EOT
}

down() {
  if running "$stack/gateway.pid"; then
    local pid; pid="$(cat "$stack/gateway.pid")"
    kill "$pid"
    for _ in $(seq 1 250); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$stack/gateway.pid"
  scripts/infra.sh stop "$stack/kafka"
  scripts/infra.sh stop "$stack/mongo"
  echo "stack stopped"
}

status() {
  printf '%-8s %-8s %s\n' service state address
  for s in kafka mongo; do
    if running "$stack/$s/pid"; then
      printf '%-8s %-8s %s\n' "$s" up "$(cat "$stack/$s/address")"
    else
      printf '%-8s %-8s\n' "$s" down
    fi
  done
  if running "$stack/gateway.pid"; then
    printf '%-8s %-8s %s\n' gateway up "http://127.0.0.1:$gateway_port"
  else
    printf '%-8s %-8s\n' gateway down
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) sed -n '2,8p' "$0" >&2; exit 2 ;;
esac
