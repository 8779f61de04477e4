#!/usr/bin/env bash
# Stops the local cluster and removes what it made: processes, pod network
# namespaces and veths, the bridge, and etcd's data. Idempotent.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

# stop NAME: SIGTERM to the process group recorded for NAME, SIGKILL after 10 s.
stop() {
  local f="$pids/$1.pid" pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    local deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
}

# thaw first (`make dev` runs it), then the node: it stops its pods and
# removes their namespaces.
for name in thaw-activator thaw-operator thaw-node kube-scheduler kube-controller-manager kube-apiserver etcd; do
  stop "$name"
done

# Whatever an agent that died without cleaning up left behind.
for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^thaw-/ { print $1 }'); do
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  ip netns delete "$ns" 2>/dev/null
done
for link in $(ip -o link show master "$bridge" 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
  ip link delete "$link" 2>/dev/null
done
ip link delete "$bridge" 2>/dev/null
rm -rf "$cluster_dir/etcd" "$cluster_dir/node"
log "cluster down"
exit 0
