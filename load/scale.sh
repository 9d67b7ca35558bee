#!/usr/bin/env bash
# The seeds' "generate load and watch the pods scale" flow, for a cluster running
# k8s/ and keda/ from this repository:
#   1. reach the gateway (port-forward, or an ingress URL with --url);
#   2. show the group's lag and KEDA's replica suggestion (from a pod in the cluster, or from
#      here with --kafka HOST:PORT when the brokers advertise addresses this machine reaches);
#   3. run a surge with `load` while `kubectl get hpa,pods -w` shows the worker fleet follow.
#
#   load/scale.sh [--namespace scalable-shop] [--url http://purchase.local] \
#                 [--kafka HOST:PORT] [--stages 10s:500,60s:4000,10s:0]
#
# The default surge offers 4,000 purchases/s for a minute: above R = 2,500/s, what one worker
# stores in the shipped lagThreshold's derivation (README, "Choosing the ScaledObject's
# numbers"), it builds ~90,000 of lag, which asks for more workers; the lag drains, and the
# fleet halves every 30 s after a calm minute. If you set lagThreshold from a faster R, offer
# more than that R (--stages) or nothing will scale, which is then the right answer.
set -euo pipefail
cd "$(dirname "$0")/.."
namespace=scalable-shop
url=""
kafka=""
stages="10s:500,60s:4000,10s:0"
threshold="$(sed -n 's/.*lagThreshold: "\([0-9]*\)".*/\1/p' keda/base/scaledobject.yaml)"
while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) namespace="$2"; shift 2 ;;
    --url) url="$2"; shift 2 ;;
    --kafka) kafka="$2"; shift 2 ;;
    --stages) stages="$2"; shift 2 ;;
    *) echo "unknown option $1; see the header of $0" >&2; exit 2 ;;
  esac
done
command -v kubectl >/dev/null || { echo "kubectl is needed" >&2; exit 1; }
kubectl -n "$namespace" get scaledobject worker >/dev/null || { echo "no ScaledObject 'worker' in $namespace: kubectl apply -k keda/base first" >&2; exit 1; }

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
if [ -z "$url" ]; then
  kubectl -n "$namespace" port-forward svc/gateway 18080:80 >/dev/null &
  pids+=($!)
  url=http://127.0.0.1:18080
fi
sleep 2

cargo build --release -q -p load
echo "watching the worker fleet (Ctrl-C to stop):"
kubectl -n "$namespace" get hpa keda-hpa-worker -w &
pids+=($!)
kubectl -n "$namespace" get pods -l app.kubernetes.io/name=worker -w &
pids+=($!)
if [ -n "$kafka" ]; then
  lag_args=(--watch-lag --kafka-brokers "$kafka" --lag-threshold "${threshold:-5000}")
else
  # Brokers advertise in-cluster addresses, so read the lag from inside the cluster with the
  # same image (it carries the load binary) and the workers' own settings.
  image="$(kubectl -n "$namespace" get deploy worker -o jsonpath='{.spec.template.spec.containers[0].image}')"
  brokers="$(kubectl -n "$namespace" get deploy worker -o jsonpath='{.spec.template.spec.containers[0].envFrom[0].configMapRef.name}' \
    | xargs -I{} kubectl -n "$namespace" get configmap {} -o jsonpath='{.data.KAFKA_BROKERS}')"
  overrides='{"spec":{"securityContext":{"runAsNonRoot":true,"runAsUser":65532,"seccompProfile":{"type":"RuntimeDefault"}},
    "containers":[{"name":"lag-watch","image":"'"$image"'","command":["/usr/local/bin/load","lag","--follow",
    "--kafka-brokers","'"$brokers"'","--lag-threshold","'"${threshold:-5000}"'"],
    "securityContext":{"allowPrivilegeEscalation":false,"readOnlyRootFilesystem":true,"capabilities":{"drop":["ALL"]}}}]}}'
  kubectl -n "$namespace" run lag-watch --rm -i --restart=Never --image="$image" --overrides="$overrides" &
  pids+=($!)
  lag_args=()
fi
target/release/load --target "$url" --stages "$stages" "${lag_args[@]}"
echo "surge done; the fleet halves every 30 s after a calm minute (Ctrl-C to stop watching)"
wait
