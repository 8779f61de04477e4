#!/usr/bin/env bash
# `make bench-cold-start`: cold starts on the kind cluster with thaw
# installed by its chart (make kind-install first). For hello and testfn,
# RUNS (default 20) cold starts each through a port-forward to the
# activator's Service: the client's time to the first byte, the activator's
# Thaw-Cold-Start (its wait for an instance), and the controller's breakdown
# of the instance (thaw.dev/cold-start: decision -> scheduled -> process
# started -> ready). Prints p50/p95 of each.
set -euo pipefail
source "$(dirname "$0")/../kind/lib.sh"
runs="${RUNS:-20}"
ns=bench-cold-start
kubectl delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$ns" >/dev/null
kubectl -n thaw-system port-forward svc/thaw-activator 18181:80 >/dev/null 2>&1 &
forward=$!
trap 'kill $forward 2>/dev/null || true; kubectl delete namespace "$ns" --wait=false >/dev/null' EXIT
until curl -s -o /dev/null http://127.0.0.1:18181/ 2>/dev/null; do sleep 0.2; done

image() { echo "thaw.dev/samples/$1:$(sed -n 's/^appVersion: *"\(.*\)"$/\1/p' "$repo/charts/thaw/Chart.yaml")"; }
pct() { # pct P VALUES...: the P-th percentile (nearest rank)
  local p=$1; shift
  printf '%s\n' "$@" | sort -n | awk -v p="$p" '{ v[NR] = $1 } END { i = int((p * NR + 99) / 100); if (i < 1) i = 1; print v[i] }'
}
ms() { # a Go-style duration (1.2s, 350ms, 1m2s) in milliseconds
  awk -v d="$1" 'BEGIN { t = 0; while (match(d, /^[0-9.]+(ms|s|m|h|us|µs|ns)/)) { u = substr(d, RSTART, RLENGTH); d = substr(d, RLENGTH + 1);
    n = u + 0; sub(/^[0-9.]+/, "", u); f = (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : (u == "h") ? 3600000 : 0.001;
    t += n * f } printf "%d\n", t }'
}

for fn in hello testfn; do
  kubectl -n "$ns" apply -f - >/dev/null <<FN
apiVersion: thaw.dev/v1alpha1
kind: Function
metadata: { name: $fn }
spec:
  image: $(image "$fn")
  scaling: { keepAlive: 1s }
FN
  kubectl -n "$ns" wait --for=condition=Ready "fn/$fn" --timeout=60s >/dev/null
  first=() wait=() sched=() start=() ready=() total=()
  for i in $(seq 1 "$runs"); do
    # Cold: no instance left (not even a terminating one).
    while [[ -n $(kubectl -n "$ns" get pods -l "thaw.dev/function=$fn" -o name) ]]; do sleep 0.2; done
    out="$(curl -s -D - -o /dev/null -w 'first-byte %{time_starttransfer}\n' \
      -H "Host: $fn.$ns.svc.cluster.local" http://127.0.0.1:18181/)"
    grep -q '^HTTP/1.1 200' <<<"$out" || { echo "run $i of $fn: $out" >&2; exit 1; }
    first+=("$(awk '/^first-byte/ { printf "%d", $2 * 1000 }' <<<"$out")")
    wait+=("$(ms "$(sed -n 's/^thaw-cold-start: *\([^\r]*\).*/\1/Ip' <<<"$out")")")
    instance="$(sed -n 's/^x-instance: *\([^\r]*\).*/\1/Ip' <<<"$out")"
    # "ready 1.2s after the decision: scheduled in 10ms, process started 800ms later, ready 300ms after that"
    until note="$(kubectl -n "$ns" get pod "$instance" -o jsonpath='{.metadata.annotations.thaw\.dev/cold-start}' 2>/dev/null)" && [[ -n $note ]]; do sleep 0.1; done
    read -r t s st r < <(sed -E 's/^ready ([^ ]+) after the decision: scheduled in ([^,]+), process started ([^ ]+) later, ready ([^ ]+) after that.*/\1 \2 \3 \4/' <<<"$note")
    total+=("$(ms "$t")") sched+=("$(ms "$s")") start+=("$(ms "$st")") ready+=("$(ms "$r")")
  done
  echo "$fn, $runs cold starts (ms, p50 / p95):"
  echo "  decision -> scheduled        $(pct 50 "${sched[@]}") / $(pct 95 "${sched[@]}")"
  echo "  scheduled -> started         $(pct 50 "${start[@]}") / $(pct 95 "${start[@]}")"
  echo "  started -> ready             $(pct 50 "${ready[@]}") / $(pct 95 "${ready[@]}")"
  echo "  decision -> ready            $(pct 50 "${total[@]}") / $(pct 95 "${total[@]}")"
  echo "  activator wait (Thaw-Cold-Start) $(pct 50 "${wait[@]}") / $(pct 95 "${wait[@]}")"
  echo "  client first byte            $(pct 50 "${first[@]}") / $(pct 95 "${first[@]}")"
done
