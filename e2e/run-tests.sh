#!/usr/bin/env bash
# Runs every test: the cluster tests need the local cluster, which this
# starts if it is not running and stops again afterwards (a cluster that was
# already up, say from `make dev`, is left running).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

was_up=false
if [[ -f .cluster/pids/kube-apiserver.pid ]] && kill -0 "$(cat .cluster/pids/kube-apiserver.pid)" 2>/dev/null; then
  was_up=true
fi
cleanup() { $was_up || bash e2e/cluster/down.sh; }
trap cleanup EXIT

bash e2e/cluster/up.sh
cargo test --workspace --no-fail-fast
