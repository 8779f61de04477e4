#!/usr/bin/env bash
# `make bench-scale`: N Functions (default 1000) applied at once to one
# operator and one activator on the running local cluster (docs/benchmarks.md):
# - time from the apply until every Function's status has a Ready condition,
# - operator RSS then, and API writes per second while all sit idle
#   (IDLE seconds, default 300; the operator's own thaw_api_writes_total),
# - activator RSS with N Functions routed, and the latency of requests to
#   one warm Function with N Functions routed, then with 1.
# It runs the `thaw` binary of this worktree (`cargo build -p thaw` first).
set -euo pipefail
source "$(dirname "$0")/../cluster/lib.sh"
n="${N:-1000}"
idle="${IDLE:-300}"
requests="${REQUESTS:-200}"
thaw="${THAW_BIN:-$repo/target/debug/thaw}"
ns="bench-scale-$RANDOM"
k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_mib() { echo $(( $(ps -o rss= -p "$1") / 1024 )); }
metric_sum() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 ~ "^"m"({|$)" {s += $NF} END {printf "%d", s}'; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

op_port=$(free_port); act_port=$(free_port); act_admin=$(free_port)
work=$(mktemp -d)
cleanup() {
  kill "${op_pid:-}" "${act_pid:-}" 2>/dev/null || true
  k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
k create namespace "$ns" >/dev/null
k label namespace "$ns" thaw.dev/test=true >/dev/null
"$thaw" operator --kubeconfig "$kubeconfig" --http-addr "127.0.0.1:$op_port" \
  --lease-namespace "$ns" --watch-namespace "$ns" --identity bench --allow-unauthenticated-stats \
  >"$work/operator.log" 2>&1 &
op_pid=$!
"$thaw" activator --kubeconfig "$kubeconfig" --http-addr "127.0.0.1:$act_port" \
  --admin-addr "127.0.0.1:$act_admin" --watch-namespace "$ns" --id bench-act \
  --autoscaler-url "http://127.0.0.1:$op_port/v1/stats" >"$work/activator.log" 2>&1 &
act_pid=$!
wait_until "the activator to be ready" 60 curl -sf "http://127.0.0.1:$act_admin/readyz"

# One warm Function (an instance kept by minInstances) and n-1 idle ones.
{
  printf 'apiVersion: thaw.dev/v1alpha1\nkind: Function\nmetadata: {name: warm}\nspec: {image: thaw.dev/samples/hello, scaling: {minInstances: 1}}\n'
  for i in $(seq 2 "$n"); do
    printf -- '---\napiVersion: thaw.dev/v1alpha1\nkind: Function\nmetadata: {name: f%04d}\nspec: {image: thaw.dev/samples/hello}\n' "$i"
  done
} >"$work/functions.yaml"
start=$(now_ms)
k -n "$ns" apply --server-side -f "$work/functions.yaml" >/dev/null
applied_ms=$(( $(now_ms) - start ))
ready_count() {
  k -n "$ns" get functions -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true
}
until [[ $(ready_count) -ge $n ]]; do sleep 0.5; done
ready_ms=$(( $(now_ms) - start ))
op_rss=$(rss_mib "$op_pid")
echo "all $n Functions Ready in ${ready_ms} ms (kubectl apply took ${applied_ms} ms of it); operator RSS ${op_rss} MiB"

# Idle: no traffic at all for $idle seconds.
writes0=$(metric_sum "$op_port" thaw_api_writes_total)
sleep "$idle"
writes1=$(metric_sum "$op_port" thaw_api_writes_total)
echo "idle ${idle} s: $(( writes1 - writes0 )) API writes ($(python3 -c "print(round(($writes1 - $writes0) / $idle, 3))") /s); operator RSS $(rss_mib "$op_pid") MiB"

# The activator: RSS, and request latency to the warm Function.
latency() {
  for _ in $(seq 1 "$requests"); do
    curl -s -o /dev/null -w '%{time_total}\n' -H "Host: warm.$ns.svc.cluster.local" "http://127.0.0.1:$act_port/"
  done | sort -n | awk '{a[NR]=$1} END {printf "p50 %.2f ms, p95 %.2f ms", a[int(NR*0.5)]*1000, a[int(NR*0.95)]*1000}'
}
wait_until "the warm Function to answer" 60 curl -sf -H "Host: warm.$ns.svc.cluster.local" "http://127.0.0.1:$act_port/"
echo "activator RSS with $n Functions: $(rss_mib "$act_pid") MiB; latency to one: $(latency)"
k -n "$ns" delete functions -l '!nothing' --field-selector metadata.name!=warm --wait=false >/dev/null
until [[ $(k -n "$ns" get functions -o name | wc -l) -le 1 ]]; do sleep 0.5; done
wait_until "the activator to forget the deleted Functions" 120 \
  bash -c "[[ \$(curl -s http://127.0.0.1:$act_admin/metrics | grep -c '^thaw_activator_function_routed{') -le 1 ]]"
echo "activator with 1 Function: RSS $(rss_mib "$act_pid") MiB; latency to it: $(latency)"
