#!/usr/bin/env bash
# `make load`: a surge against the local stack (`make up` first) that takes the worker fleet
# above one worker and back. The scaler (which follows keda/base/scaledobject.yaml as KEDA
# and the HPA would) prints the lag and the replica count at every decision; the load tool
# prints its report; the last line says how far the fleet went and that it came back.
#
#   LOAD_STAGES     the surge (default 5s:500,40s:4000,5s:0, ramps as `load --stages` does: above what one worker stores on
#                   this stack's broker, about 2,500/s, so the lag builds; README, "Watching it
#                   scale locally")
#   SETTLE_TIMEOUT  how long to wait for the fleet to scale up and back (default 6m)
set -euo pipefail
cd "$(dirname "$0")/.."
stack=.local/stack
# shellcheck source=scripts/proc.sh
. scripts/proc.sh
if ! { [ -f "$stack/scaler.pid" ] && alive "$(cat "$stack/scaler.pid")"; }; then
  echo "the local stack is not up (no scaler running): run make up first" >&2
  exit 1
fi
cargo build --release -q -p load -p scaler
threshold="$(target/release/scaler threshold)"
kafka="$(scripts/infra.sh address "$stack/kafka")"
target/release/scaler watch --state "$stack/hpa.json" --until-settled "${SETTLE_TIMEOUT:-6m}" &
watch=$!
trap 'kill "$watch" 2>/dev/null || true' EXIT
KAFKA_BROKERS="$kafka" target/release/load --stages "${LOAD_STAGES:-5s:500,40s:4000,5s:0}" \
  --max-in-flight 512 --watch-lag --lag-threshold "$threshold"
echo "the surge is over; the fleet scales back after the ScaledObject's scale-down window:"
wait "$watch"
echo
target/release/scaler get --state "$stack/hpa.json"
