#!/usr/bin/env bash
# `make bench-follower`: two operator replicas (one leads, one follows) and
# two activators reporting N Functions (default 200) to both every second,
# for DURATION seconds (default 600), on the running local cluster. Prints
# the follower's and the leader's RSS every 30 s (docs/benchmarks.md): a
# follower takes every report but queues nothing for a controller it does
# not run, so its memory must stay flat.
set -euo pipefail
source "$(dirname "$0")/../cluster/lib.sh"
n="${N:-200}"
duration="${DURATION:-600}"
thaw="${THAW_BIN:-$repo/target/debug/thaw}"
ns="bench-follower-$RANDOM"
k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { ps -o rss= -p "$1" | tr -d ' '; }

work=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
k create namespace "$ns" >/dev/null
for ((i = 0; i < n; i++)); do
  printf 'apiVersion: thaw.dev/v1alpha1\nkind: Function\nmetadata: {name: f%d, namespace: %s}\nspec: {image: thaw.dev/samples/hello}\n---\n' "$i" "$ns"
done >"$work/functions.yaml"
k apply -f "$work/functions.yaml" >/dev/null

declare -A op_port op_pid
for id in op-a op-b; do
  op_port[$id]=$(free_port)
  "$thaw" operator --kubeconfig "$kubeconfig" --http-addr "127.0.0.1:${op_port[$id]}" \
    --lease-namespace "$ns" --watch-namespace "$ns" --identity "$id" \
    --allow-unauthenticated-stats >"$work/$id.log" 2>&1 &
  op_pid[$id]=$!
  pids+=("$!")
done
urls="http://127.0.0.1:${op_port[op-a]}/v1/stats,http://127.0.0.1:${op_port[op-b]}/v1/stats"
act_admin=$(free_port)
for id in act-a act-b; do
  admin=$(free_port); [[ $id == act-a ]] && admin=$act_admin
  "$thaw" activator --kubeconfig "$kubeconfig" --http-addr "127.0.0.1:$(free_port)" \
    --admin-addr "127.0.0.1:$admin" --watch-namespace "$ns" --id "$id" \
    --autoscaler-url "$urls" >"$work/$id.log" 2>&1 &
  pids+=("$!")
done
leader=""
for _ in $(seq 1 300); do
  leader=$(k -n "$ns" get lease thaw-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
  [[ -n $leader ]] && break
  sleep 0.2
done
[[ -n $leader ]] || { echo "no leader" >&2; exit 1; }
follower=op-a; [[ $leader == op-a ]] && follower=op-b
# Reports act-a has delivered (to both operators), from its own counter.
reports() { curl -s "http://127.0.0.1:$act_admin/metrics" | awk '$1 ~ /^thaw_activator_reports_total\{.*result="ok"/ {s += $NF} END {printf "%d", s}'; }
echo "N=$n Functions, 2 activators -> 2 operators; leader $leader, follower $follower"
printf '%8s %14s %14s %18s\n' seconds follower_KiB leader_KiB act-a_reports_ok
start=$SECONDS
while ((SECONDS - start <= duration)); do
  printf '%8d %14s %14s %18s\n' $((SECONDS - start)) "$(rss_kib "${op_pid[$follower]}")" \
    "$(rss_kib "${op_pid[$leader]}")" "$(reports)"
  sleep 30
done
