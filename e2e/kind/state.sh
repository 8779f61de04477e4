#!/usr/bin/env bash
# Prints "<dockerd running> <kind cluster exists>" (true/false each), so
# e2e/run-tests.sh removes only what it started.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
docker_up=false cluster_up=false
if [[ $mode == stock ]] || docker version >/dev/null 2>&1; then
  docker_up=true
  if command -v kind >/dev/null && kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    cluster_up=true
  fi
fi
echo "$docker_up $cluster_up"
