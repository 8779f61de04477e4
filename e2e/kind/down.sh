#!/usr/bin/env bash
# `make kind-down`: deletes the kind cluster and, on the offline path, stops
# our dockerd (unless --keep-docker). The caches (~/.cache/thaw, including
# docker's data) stay.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
# The port-forward of `make dev-kind`, if any.
if [[ -f $repo/.kind/port-forward.pid ]]; then
  kill "$(cat "$repo/.kind/port-forward.pid")" 2>/dev/null || true
  rm -f "$repo/.kind/port-forward.pid"
fi
if [[ $mode == offline ]] && ! docker version >/dev/null 2>&1; then
  exit 0 # no dockerd, so no cluster either
fi
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "deleting kind cluster $cluster"
  kind delete cluster --name "$cluster" --kubeconfig "$KUBECONFIG"
fi
[[ $mode == offline && ${1:-} != --keep-docker ]] && bash "$kind_dir/docker.sh" stop
exit 0
