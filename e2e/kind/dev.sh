#!/usr/bin/env bash
# `make dev-kind`: thaw as users run it (the chart's defaults on the kind
# cluster of up.sh, installed by install.sh), the hello example applied, and a
# port-forward to the activator Service kept running in the background
# (stopped by `make kind-down`). Prints the curl that cold-starts hello.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo"
port="${THAW_DEV_PORT:-8080}"
state="$repo/.kind"
mkdir -p "$state"

kubectl apply -f manifests/examples/hello.yaml >/dev/null
kubectl wait --for=condition=Ready fn/hello --timeout=120s >/dev/null

if [[ -f $state/port-forward.pid ]]; then
  kill "$(cat "$state/port-forward.pid")" 2>/dev/null || true
fi
setsid kubectl -n thaw-system port-forward svc/thaw-activator "$port:80" \
  >"$state/port-forward.log" 2>&1 </dev/null &
echo $! >"$state/port-forward.pid"
for _ in $(seq 100); do
  grep -q '^Forwarding from' "$state/port-forward.log" 2>/dev/null && break
  sleep 0.1
done
grep -q '^Forwarding from' "$state/port-forward.log" ||
  { cat "$state/port-forward.log" >&2; echo "port-forward did not start" >&2; exit 1; }

cat <<MSG

thaw runs on kind with the chart's defaults (2 operators, 2 activators).
  export KUBECONFIG=$KUBECONFIG
  kubectl -n thaw-system get pods     # 2 operator and 2 activator pods
  kubectl get fn                      # hello: Ready, 0 instances
  curl -i http://127.0.0.1:$port/fn/default/hello/   # cold-starts it: see Thaw-Cold-Start
  kubectl get pods -l thaw.dev/function=hello -o yaml | grep thaw.dev/   # when it expires
Stop everything with: make kind-down
MSG
