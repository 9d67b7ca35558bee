#!/usr/bin/env bash
# Offline proof of the deployment: render every kustomization, validate the objects against
# the Kubernetes and KEDA schemas, check they agree with the binaries, and run checkov on the
# manifests and the Dockerfile. Needs kubectl (with kustomize) and the test virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
python=".local/venv/bin/python"
render=.local/render
mkdir -p "$render"
command -v kubectl >/dev/null || { echo "deploy/check.sh: kubectl is needed to render the manifests" >&2; exit 1; }

kubectl kustomize k8s/base >"$render/base.yaml"
kubectl kustomize k8s/overlays/local >"$render/local.yaml"
kubectl kustomize keda/base >"$render/keda-base.yaml"
kubectl kustomize keda/overlays/local >"$render/keda-local.yaml"
kubectl kustomize k8s/monitoring >"$render/monitoring.yaml"
echo "rendered: k8s/base, k8s/overlays/local, keda/base, keda/overlays/local, k8s/monitoring"

cargo build -q -p gateway -p worker
"$python" deploy/validate.py "$render" target/debug/gateway target/debug/worker

# checkov: no failed check; every skip is written inline next to its reason.
checkov=".local/venv/bin/checkov"
"$checkov" --skip-download --quiet --compact --framework kubernetes -f "$render/base.yaml" -f "$render/local.yaml"
"$checkov" --skip-download --quiet --compact --framework dockerfile -f Dockerfile
echo "checkov: no failed checks"
