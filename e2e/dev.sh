#!/usr/bin/env bash
# `make dev`: on the running local cluster, starts `thaw operator` and
# `thaw activator` as local processes (stopped by `make cluster-down`),
# installs the CRD, applies manifests/examples/hello.yaml and prints a curl
# command that cold-starts it.
set -euo pipefail
source "$(dirname "$0")/cluster/lib.sh"

thaw="$repo/target/debug/thaw"
proxy_port="${THAW_DEV_PORT:-8080}"

"$thaw" crd | "$kubectl" --kubeconfig "$kubeconfig" apply --server-side -f - >/dev/null
"$kubectl" --kubeconfig "$kubeconfig" wait --for=condition=Established crd/functions.thaw.dev --timeout=30s >/dev/null
"$kubectl" --kubeconfig "$kubeconfig" create namespace thaw-system --dry-run=client -o yaml |
  "$kubectl" --kubeconfig "$kubeconfig" apply -f - >/dev/null

# run NAME COMMAND...: restarts COMMAND in its own session, logging to logs/NAME.log.
run() {
  local name=$1; shift
  if pid_alive "$name"; then
    kill -TERM -- "-$(cat "$pids/$name.pid")" 2>/dev/null || true
    wait_until "$name to stop" 15 bash -c "! kill -0 $(cat "$pids/$name.pid") 2>/dev/null"
  fi
  setsid "$@" >"$logs/$name.log" 2>&1 </dev/null &
  echo $! >"$pids/$name.pid"
}

# The activator here is a process, not a pod with a bound token, so stats are
# taken unauthenticated; the operator listens on loopback only.
run thaw-operator "$thaw" operator --kubeconfig "$kubeconfig" --http-addr 127.0.0.1:9090 \
  --lease-namespace thaw-system --identity dev-operator --allow-unauthenticated-stats
run thaw-activator "$thaw" activator --kubeconfig "$kubeconfig" --http-addr "127.0.0.1:$proxy_port" \
  --admin-addr 127.0.0.1:9091 --autoscaler-url http://127.0.0.1:9090/v1/stats --id dev-activator
wait_until "thaw operator" 30 curl -sf http://127.0.0.1:9090/readyz
wait_until "thaw activator" 30 curl -sf http://127.0.0.1:9091/readyz

"$kubectl" --kubeconfig "$kubeconfig" apply -f "$repo/manifests/examples/hello.yaml" >/dev/null
wait_until "the hello Function to be Ready" 30 "$kubectl" --kubeconfig "$kubeconfig" wait \
  --for=condition=Ready fn/hello --timeout=1s

cat <<MSG

thaw runs on the local cluster (logs: $logs).
  export KUBECONFIG=$kubeconfig
  kubectl get fn                      # hello: Ready, 0 instances
  curl -i http://127.0.0.1:$proxy_port/fn/default/hello/   # cold-starts it: see Thaw-Cold-Start
  kubectl get pods -l thaw.dev/function=hello -o yaml | grep thaw.dev/   # when it expires
Stop everything with: make cluster-down
MSG
