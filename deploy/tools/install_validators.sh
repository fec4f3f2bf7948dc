#!/usr/bin/env bash
# Installs the offline Kubernetes schema validator used by deploy/tools/validate_k8s.mjs and
# tests/deploy/k8s_check.sh: the npm packages kubernetes-models (JSON-schema validators and
# type declarations generated from the Kubernetes OpenAPI), @kubernetes-models/cert-manager
# (the same from cert-manager's CRDs, for deploy/k8s/cert-manager) and yaml, at pinned versions, into
# a cache directory outside the repository:
#   $DION_DEPLOY_TOOLS (default ${XDG_CACHE_HOME:-~/.cache}/dion-ps/deploy-tools)
# Idempotent: does nothing (and needs no network) when the pinned versions are installed.
# Needs node and npm (scripts/setup.sh installs them; node >= 20). ~32 MB, ~10 s.
set -euo pipefail

KUBERNETES_MODELS_VERSION=5.1.0
CERT_MANAGER_MODELS_VERSION=6.0.0
YAML_VERSION=2.9.1

dir="${DION_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/dion-ps/deploy-tools}"
installed() {  # package version
  local pj="$dir/node_modules/$1/package.json"
  [ -f "$pj" ] && node -e "process.exit(require(process.argv[1]).version === process.argv[2] ? 0 : 1)" "$pj" "$2"
}
all_installed() {
  installed kubernetes-models "$KUBERNETES_MODELS_VERSION" &&
    installed @kubernetes-models/cert-manager "$CERT_MANAGER_MODELS_VERSION" &&
    installed yaml "$YAML_VERSION"
}
if all_installed; then
  echo "install_validators: kubernetes-models $KUBERNETES_MODELS_VERSION," \
       "@kubernetes-models/cert-manager $CERT_MANAGER_MODELS_VERSION and yaml $YAML_VERSION already in $dir"
  exit 0
fi
for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "install_validators: $tool not found (scripts/setup.sh)" >&2; exit 1; }
done
mkdir -p "$dir"
# A package.json of our own so npm installs here and nowhere else.
[ -f "$dir/package.json" ] || echo '{"name": "dion-deploy-tools", "private": true}' > "$dir/package.json"
# kubernetes-models declares node >= 22 but runs on Debian's / nodesource's node 20 for what
# validate_k8s.mjs uses (checked); --engine-strict=false keeps npm from refusing it.
npm install --prefix "$dir" --no-audit --no-fund --loglevel=error --engine-strict=false \
  --save-exact "kubernetes-models@$KUBERNETES_MODELS_VERSION" \
  "@kubernetes-models/cert-manager@$CERT_MANAGER_MODELS_VERSION" "yaml@$YAML_VERSION"
all_installed
echo "install_validators: installed into $dir"
