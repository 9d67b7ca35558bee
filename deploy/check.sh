#!/usr/bin/env bash
# Offline proof of the deployment: render every kustomization and the Helm chart with each of
# its ci/ values files, validate the objects against the Kubernetes and KEDA schemas, check
# they agree with the binaries and with each other, run checkov on the renders and the
# Dockerfile, actionlint on the CI workflow, and read docker-compose.yml as Docker Compose does
# (worker/tests/compose.rs: the Compose Specification, checked against the binaries). Needs kubectl (with kustomize), the pinned
# helm (scripts/install-helm.sh) and the test virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.local/venv/bin
render=.local/render
chart=charts/scalable-shop
rm -rf "$render"
mkdir -p "$render"
command -v kubectl >/dev/null || { echo "deploy/check.sh: kubectl is needed to render the manifests" >&2; exit 1; }
helm="$(scripts/install-helm.sh path)"

# One file per install: what `kubectl apply -k` of these kustomizations together creates.
kustomize() { # OUT KUSTOMIZATION...
  local out="$render/$1" dir
  shift
  for dir in "$@"; do
    kubectl kustomize "$dir"
    echo ---
  done >"$out"
}
kustomize kustomize-base.yaml k8s/base keda/base k8s/monitoring
kustomize kustomize-local.yaml k8s/overlays/local keda/overlays/local
echo "rendered: k8s/base + keda/base + k8s/monitoring, k8s/overlays/local + keda/overlays/local"

# The chart: lint, then one install per values file; a key the schema does not know fails
# both. Their output is shown when they fail, without helm's note on every load that
# files/alerts.yml is a link (to monitoring/alerts.yml).
helm_() { # LOG HELM-ARGS...
  local log="$render/$1"
  shift
  "$helm" "$@" 2>"$log" || { grep -v "found symbolic link in path" "$log" >&2; return 1; }
}
lint() { # [VALUES-ARGS...]
  helm_ lint.log lint --strict "$chart" "$@" >"$render/lint.out" || { cat "$render/lint.out" >&2; return 1; }
}
lint
names=()
for values in "$chart"/ci/*-values.yaml; do
  name="$(basename "$values" -values.yaml)"
  lint -f "$values"
  helm_ template.log template scalable-shop "$chart" --namespace scalable-shop --kube-version 1.31.0 \
    -f "$values" >"$render/chart-$name.yaml"
  names+=("$name")
done
echo "helm lint --strict and helm template: $chart with ci/ values ${names[*]}"

cargo build -q -p gateway -p worker
"$venv/python" deploy/validate.py "$render" target/debug/gateway target/debug/worker

# docker-compose.yml: no Docker engine here, so it is read by the compose_spec crate (the
# Compose Specification, merge keys applied) and checked against the binaries' settings.
cargo test -q -p worker --test compose
echo "docker-compose.yml: valid Compose file; gateway and worker get only variables they read"

# The chart renders what the kustomizations render, where both render the same thing.
"$venv/python" deploy/compare.py "$render/chart-monitoring-on.yaml" "$render/kustomize-base.yaml" \
  Namespace/scalable-shop
"$venv/python" deploy/compare.py "$render/chart-local.yaml" "$render/kustomize-local.yaml" \
  Namespace/scalable-shop Secret/scalable-shop-secrets Deployment/kafka Service/kafka \
  NetworkPolicy/kafka-from-app StatefulSet/mongo Service/mongo NetworkPolicy/mongo-from-app
"$venv/python" deploy/chart_docs.py --check

# checkov: no failed check; every skip is written inline next to its reason.
checkov_files=()
for file in "$render"/*.yaml; do checkov_files+=(-f "$file"); done
"$venv/checkov" --skip-download --quiet --compact --framework kubernetes "${checkov_files[@]}"
"$venv/checkov" --skip-download --quiet --compact --framework dockerfile -f Dockerfile
echo "checkov: no failed checks"

"$venv/actionlint" .github/workflows/*.yml
echo "actionlint: .github/workflows clean"

# The checks catch what they claim to: each seeded mistake below must fail with its message.
seeded="$render/seeded"
mkdir -p "$seeded"
must_fail() { # WHAT EXPECTED COMMAND...
  local what="$1" expected="$2" out
  shift 2
  if out="$("$@" 2>&1)"; then
    echo "deploy/check.sh: the checks let a seeded mistake through: $what" >&2
    exit 1
  fi
  grep -qF -- "$expected" <<<"$out" || { echo "deploy/check.sh: $what failed, but not with \"$expected\":" >&2; echo "$out" >&2; exit 1; }
}
# seed NAME RENDER SED-SCRIPT: a chart render with one mistake, alone in its directory.
seed() {
  mkdir -p "$seeded/$1"
  sed "$3" "$render/$2" >"$seeded/$1/$2"
  echo "$seeded/$1"
}
must_fail "a typo'd value key" "Additional property audiance is not allowed" \
  "$helm" template scalable-shop "$chart" --set auth.audiance=scalable-shop-api
must_fail "a probe on a port the gateway does not listen on" "expected /readyz on 8080" \
  "$venv/python" deploy/validate.py "$(seed port chart-defaults.yaml '/path: \/readyz/{n;s/port: 8080/port: 8081/}')" \
  target/debug/gateway target/debug/worker
must_fail "a KEDA field KEDA would drop" "cooldownPeriods (KEDA would drop it)" \
  "$venv/python" deploy/validate.py "$(seed keda chart-defaults.yaml 's/^  cooldownPeriod: /  cooldownPeriods: /')" \
  target/debug/gateway target/debug/worker
must_fail "the chart and kustomize disagreeing" "chart has 10, kustomize 5" \
  "$venv/python" deploy/compare.py "$(seed drift chart-monitoring-on.yaml 's/^                seconds: 5$/                seconds: 10/')/chart-monitoring-on.yaml" \
  "$render/kustomize-base.yaml" Namespace/scalable-shop
echo "seeded mistakes caught: a typo'd value key, a wrong probe port, a KEDA field KEDA would drop, chart/kustomize drift"
