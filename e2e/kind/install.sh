#!/usr/bin/env bash
# thaw on the kind cluster by its chart, with the chart's defaults: 2
# operator and 2 activator replicas, the chart's RBAC and Services, in
# thaw-system under Pod Security "restricted". The image is the chart's
# default, thaw.dev/thaw:<appVersion>, as images.sh loads it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo"
# helm of HELM_VERSION: built into the cache offline, on PATH otherwise.
[[ $mode == offline ]] && bash e2e/cluster/build-binaries.sh helm

kubectl apply -f - >/dev/null <<NS
apiVersion: v1
kind: Namespace
metadata:
  name: thaw-system
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
NS
installed=false
helm status thaw -n thaw-system >/dev/null 2>&1 && installed=true
# Helm installs crds/ once and never upgrades it (docs/install.md): apply it,
# as users upgrading are told to.
$installed && kubectl apply --server-side --force-conflicts -f charts/thaw/crds/ >/dev/null
log "helm upgrade --install thaw charts/thaw -n thaw-system"
helm upgrade --install thaw charts/thaw -n thaw-system --create-namespace --wait --timeout 5m
if $installed; then
  # A new image under the same tag needs new pods.
  kubectl -n thaw-system rollout restart deployment >/dev/null
  kubectl -n thaw-system rollout status deployment --timeout=5m >/dev/null
fi
log "thaw installed"
