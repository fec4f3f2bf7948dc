#!/usr/bin/env bash
# ctest deploy_k8s: renders every overlay of deploy/k8s, each also with the optional mTLS
# component (deploy/k8s/components/mtls), and the optional cert-manager example
# (deploy/k8s/cert-manager) with `kubectl kustomize`, validates the objects offline against the
# Kubernetes and cert-manager schemas (deploy/tools/validate_k8s.mjs, installed by
# deploy/tools/install_validators.sh) and checks what is specific to dion-ps
# (k8s_consistency.py: shard/worker counts, flags, security, probes, selectors, the mounted
# TLS and token Secrets, the certificate's names).
#
#   k8s_check.sh SOURCE_ROOT DION_SERVER DION_WORKER DION
# No network: the validator must already be installed (scripts/setup.sh does it).
set -euo pipefail
root="$1" server="$2" worker="$3" dion="$4"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
kubectl="${KUBECTL:-kubectl}"
# kubectl with kustomize v5 is on this project's CI machines, but Debian 12 packages none (its
# kubernetes-client 1.20 embeds kustomize v2, which lacks `labels` and `patches`): without
# it the test is skipped (exit 77, ctest SKIP_RETURN_CODE), saying so, rather than failed.
if ! command -v "$kubectl" >/dev/null; then
  echo "SKIP kubectl not found: install kubectl >= 1.27 (kustomize v5) from the Kubernetes" \
       "package repository, or set KUBECTL, to render and validate deploy/k8s" >&2
  exit 77
fi

overlays=()
for dir in "$root"/deploy/k8s/overlays/*/; do
  name="$(basename "$dir")"
  "$kubectl" kustomize "$dir" > "$tmp/$name.yaml"
  echo "ok   kubectl kustomize overlays/$name: $(grep -c '^kind:' "$tmp/$name.yaml") objects"
  overlays+=("$tmp/$name.yaml")
  # The overlay with client certificates: a kustomization of its own in $tmp (kustomize takes
  # only relative paths).
  mkdir -p "$tmp/$name-mtls"
  rel="$(realpath --relative-to="$tmp/$name-mtls" "$root/deploy/k8s")"
  printf '%s\n' "apiVersion: kustomize.config.k8s.io/v1beta1" "kind: Kustomization" \
    "resources: [$rel/overlays/$name]" "components: [$rel/components/mtls]" \
    > "$tmp/$name-mtls/kustomization.yaml"
  "$kubectl" kustomize "$tmp/$name-mtls" > "$tmp/$name-mtls.yaml"
  echo "ok   kubectl kustomize overlays/$name + components/mtls:" \
       "$(grep -c '^kind:' "$tmp/$name-mtls.yaml") objects"
  overlays+=("$tmp/$name-mtls.yaml")
done
[ "${#overlays[@]}" -ge 4 ] || { echo "FAIL expected at least the small and large overlays"; exit 1; }

"$kubectl" kustomize "$root/deploy/k8s/cert-manager" > "$tmp/cert-manager.yaml"
echo "ok   kubectl kustomize cert-manager: $(grep -c '^kind:' "$tmp/cert-manager.yaml") objects"

node "$root/deploy/tools/validate_k8s.mjs" --json "$tmp/rendered.json" "${overlays[@]}"
node "$root/deploy/tools/validate_k8s.mjs" --json "$tmp/cert-manager.json" "$tmp/cert-manager.yaml"
# --helpfull: flags defined outside the binary's main file (common/tls_flags.cc) are not in
# --help.
"$server" --helpfull > "$tmp/server-help.txt" 2>&1 || true
"$worker" --helpfull > "$tmp/worker-help.txt" 2>&1 || true
"$dion" checkpoint --help > "$tmp/checkpoint-help.txt" 2>&1 || true
/usr/bin/python3 "$root/tests/deploy/k8s_consistency.py" "$tmp/rendered.json" \
  "$tmp/server-help.txt" "$tmp/worker-help.txt" "$tmp/checkpoint-help.txt" \
  "$tmp/cert-manager.json"
