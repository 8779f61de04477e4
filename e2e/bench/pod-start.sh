#!/usr/bin/env bash
# `make bench-pod-start`: on the running local cluster, how long a pod of the
# sample function takes from creation to Ready (the cluster issue's target:
# within 2 s), measured by the API's own clock as seen by kubectl: the time
# from the create call returning to `kubectl wait` seeing Ready=True.
set -euo pipefail
source "$(dirname "$0")/../cluster/lib.sh"
runs="${RUNS:-20}"
ns="bench-pod-start"
k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }
k delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
k create namespace "$ns" >/dev/null
wait_until "the default service account" 30 k -n "$ns" get serviceaccount default
times=()
for i in $(seq 1 "$runs"); do
  start=$(date +%s%N)
  k -n "$ns" run "p$i" --image thaw.dev/samples/hello --restart Never --env PORT=8080 \
    --overrides '{"spec":{"containers":[{"name":"p'"$i"'","image":"thaw.dev/samples/hello","env":[{"name":"PORT","value":"8080"}],"readinessProbe":{"tcpSocket":{"port":8080},"periodSeconds":1}}]}}' >/dev/null
  k -n "$ns" wait --for=condition=Ready "pod/p$i" --timeout=30s >/dev/null
  end=$(date +%s%N)
  times+=($(( (end - start) / 1000000 )))
  k -n "$ns" delete pod "p$i" --wait=false >/dev/null
done
k delete namespace "$ns" --wait=false >/dev/null
sorted=($(printf '%s\n' "${times[@]}" | sort -n))
p50=${sorted[$(( runs / 2 ))]}
p90=${sorted[$(( runs * 9 / 10 ))]}
max=${sorted[$(( runs - 1 ))]}
echo "pod creation to Ready over $runs pods: p50 ${p50} ms, p90 ${p90} ms, max ${max} ms (target: 2000 ms)"
