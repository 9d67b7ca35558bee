#!/usr/bin/env bash
# The local stack: broker, database, gateway and the worker fleet on loopback, state and logs
# under .local/stack. The fleet is run by `scaler`, which follows keda/base/scaledobject.yaml
# the way KEDA and the HPA would on a cluster (README, "Watching it scale locally").
#
#   scripts/stack.sh up       install what is missing, start everything, wait until ready
#   scripts/stack.sh down     stop everything (the data stays for the next `up`)
#   scripts/stack.sh status   what runs where, and the fleet as `kubectl get hpa` shows it
#
# GATEWAY_PORT (default 8080) picks the gateway's port; worker N serves /metrics on 9100+N.
set -euo pipefail
cd "$(dirname "$0")/.."
stack=.local/stack
logs="$stack/logs"
gateway_port="${GATEWAY_PORT:-8080}"

# shellcheck source=scripts/proc.sh
. scripts/proc.sh
# A service runs while the pid in its pid file is alive: not a zombie (proc.sh).
service_running() { [ -f "$1" ] && alive "$(cat "$1")"; }
# A server of infra.sh runs while its pid is alive and runs in its directory.
server_running() { [ -f "$1/pid" ] && running "$(cat "$1/pid")" "$(cd "$1" && pwd -P)"; }

services=(gateway scaler)

# start_service NAME COMMAND...: in the background, logging to $logs/NAME.log, unless running.
start_service() {
  local name="$1"; shift
  service_running "$stack/$name.pid" && return 0
  nohup "$@" </dev/null >>"$logs/$name.log" 2>&1 &
  echo $! >"$stack/$name.pid"
}

up() {
  scripts/infra.sh install
  mkdir -p "$logs"
  local kafka mongo
  kafka="$(scripts/infra.sh start kafka "$stack/kafka")"
  mongo="$(scripts/infra.sh start mongo "$stack/mongo")"
  ln -sf ../kafka/server.log "$logs/kafka.log"
  ln -sf ../mongo/server.log "$logs/mongo.log"
  cargo build --release -p gateway -p worker -p scaler
  # Local development only: no tokens needed. The Kubernetes manifests turn authentication on.
  start_service gateway env KAFKA_BROKERS="$kafka" MONGO_URI="$mongo" GATEWAY_LISTEN="127.0.0.1:$gateway_port" GATEWAY_AUTH_DISABLED=true target/release/gateway
  # The workers inherit the scaler's environment. nisshi 0.7 strands a group whose leader
  # leaves while it re-forms (README, "Kafka brokers this is tested on"): here a stopping
  # leader lets its session expire instead.
  start_service scaler env KAFKA_BROKERS="$kafka" MONGO_URI="$mongo" KAFKA_LEADER_LEAVES_GROUP=false \
    target/release/scaler run --state "$stack/hpa.json" --log-dir "$logs"
  for _ in $(seq 1 150); do
    curl -fs "http://127.0.0.1:$gateway_port/readyz" >/dev/null && break
    service_running "$stack/gateway.pid" || { tail -n 20 "$logs/gateway.log"; echo "gateway exited (log: $logs/gateway.log)" >&2; exit 1; }
    sleep 0.2
  done
  status
  cat <<EOT

Try it:
  curl -i -X POST http://127.0.0.1:$gateway_port/api/purchases -H 'Content-Type: application/json' \\
       -d '{"username":"elad","userId":"555","price":12.00}'
  curl -s http://127.0.0.1:$gateway_port/api/users/555/purchases
  open http://127.0.0.1:$gateway_port/docs
Logs: $logs/   Stop: make down

WARNING: authentication is OFF in this local stack (GATEWAY_AUTH_DISABLED=true): anyone who
reaches 127.0.0.1:$gateway_port can buy as any user and read any history. See README, Authentication.
EOT
}

down() {
  local name pid
  for name in "${services[@]}"; do
    if service_running "$stack/$name.pid"; then
      pid="$(cat "$stack/$name.pid")"
      kill "$pid"
      # The scaler stops its workers first (each may take up to its 30 s grace period).
      for _ in $(seq 1 400); do alive "$pid" || break; sleep 0.1; done
    fi
    rm -f "$stack/$name.pid"
  done
  scripts/infra.sh stop "$stack/kafka"
  scripts/infra.sh stop "$stack/mongo"
  echo "stack stopped"
}

status() {
  printf '%-8s %-8s %s\n' service state address
  for s in kafka mongo; do
    if server_running "$stack/$s"; then
      printf '%-8s %-8s %s\n' "$s" up "$(cat "$stack/$s/address")"
    else
      printf '%-8s %-8s\n' "$s" down
    fi
  done
  local name
  for name in "${services[@]}"; do
    if service_running "$stack/$name.pid"; then
      printf '%-8s %-8s %s\n' "$name" up "pid $(cat "$stack/$name.pid"), log $logs/$name.log"
    else
      printf '%-8s %-8s\n' "$name" down
    fi
  done
  if service_running "$stack/scaler.pid" && [ -x target/release/scaler ]; then
    echo
    target/release/scaler get --state "$stack/hpa.json" || true
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) sed -n '2,8p' "$0" >&2; exit 2 ;;
esac
