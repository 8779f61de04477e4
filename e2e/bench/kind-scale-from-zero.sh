#!/usr/bin/env bash
# `make bench-scale-from-zero`: Knative's scale-from-zero shape on the kind
# cluster with thaw installed by its chart. For N in COUNTS (default "25
# 100"): N hello Functions at zero, one request each, all sent at once
# through a port-forward to the activator's Service; time to the first 200
# of each, p50/p95/max, and the requests that failed.
set -euo pipefail
source "$(dirname "$0")/../kind/lib.sh"
counts="${COUNTS:-25 100}"
ns=bench-scale-from-zero
version="$(sed -n 's/^appVersion: *"\(.*\)"$/\1/p' "$repo/charts/thaw/Chart.yaml")"
port=18182
kubectl -n thaw-system port-forward svc/thaw-activator "$port:80" >/dev/null 2>&1 &
forward=$!
trap 'kill $forward 2>/dev/null || true; [[ -n ${KEEP:-} ]] || kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true' EXIT
until curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; do sleep 0.2; done
pct() {
  local p=$1; shift
  printf '%s\n' "$@" | sort -n | awk -v p="$p" '{ v[NR] = $1 } END { i = int((p * NR + 99) / 100); if (i < 1) i = 1; print v[i] }'
}
for n in $counts; do
  kubectl delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
  kubectl create namespace "$ns" >/dev/null
  for i in $(seq 1 "$n"); do
    cat <<FN
---
apiVersion: thaw.dev/v1alpha1
kind: Function
metadata: { name: f$i, namespace: $ns }
spec:
  image: thaw.dev/samples/hello:$version
  # Tiny requests: N instances must fit one 2-core node.
  resources: { requests: { cpu: 1m, memory: 8Mi } }
  scaling: { keepAlive: 5m }
FN
  done | kubectl apply -f - >/dev/null
  kubectl -n "$ns" wait --for=condition=Ready fn --all --timeout=120s >/dev/null
  out="$(mktemp -d)"
  for i in $(seq 1 "$n"); do
    curl -s -o /dev/null --max-time 60 -w '%{http_code} %{time_total}\n' \
      -H "Host: f$i.$ns.svc.cluster.local" "http://127.0.0.1:$port/" >"$out/$i" &
  done
  wait $(jobs -p | grep -vx "$forward") 2>/dev/null || true
  times=() errors=0 codes=""
  for i in $(seq 1 "$n"); do
    read -r code t <"$out/$i" || code=000
    if [[ $code == 200 ]]; then times+=("$(awk -v t="$t" 'BEGIN { printf "%d", t * 1000 }')"); else errors=$((errors + 1)) codes+=" $code@${t}s"; fi
  done
  [[ -n $codes ]] && echo "failed requests (status@time):$codes" >&2
  rm -rf "$out"
  if ((${#times[@]})); then
    echo "$n Functions from zero: time to first 200 p50 $(pct 50 "${times[@]}") ms, p95 $(pct 95 "${times[@]}") ms, max $(pct 100 "${times[@]}") ms; errors $errors"
  else
    echo "$n Functions from zero: every request failed ($errors)"
  fi
done
