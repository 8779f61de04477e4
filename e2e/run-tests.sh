#!/usr/bin/env bash
# Runs every test: the cluster tests need the local cluster, which this
# starts if it is not running and stops again afterwards (a cluster that was
# already up, say from `make dev`, is left running). Then the kind tests: a
# kind cluster (e2e/kind, offline unless THAW_KIND_MODE says otherwise) with
# thaw installed by its chart; a kind cluster or dockerd this started is
# removed again, ones that were already there are left.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

was_up=false
if [[ -f .cluster/pids/kube-apiserver.pid ]] && kill -0 "$(cat .cluster/pids/kube-apiserver.pid)" 2>/dev/null; then
  was_up=true
fi
kind_state="$(bash e2e/kind/state.sh)" # "<dockerd running> <cluster exists>"
cleanup() {
  $was_up || bash e2e/cluster/down.sh
  case "$kind_state" in
    "true true") ;;
    "true false") bash e2e/kind/down.sh --keep-docker ;;
    *) bash e2e/kind/down.sh ;;
  esac
}
trap cleanup EXIT

bash e2e/cluster/up.sh
status=0
cargo test --workspace --no-fail-fast || status=$?

start=$SECONDS
bash e2e/kind/up.sh
bash e2e/kind/images.sh
bash e2e/kind/install.sh
bash e2e/kind/test.sh || status=$?
echo "[run-tests] kind part took $((SECONDS - start)) s" >&2
exit "$status"
