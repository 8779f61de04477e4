# Shared settings of the local cluster scripts. Sourced, not run.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=../versions.env
source "$repo/e2e/versions.env"
cache="${THAW_CACHE:-$HOME/.cache/thaw}"
k8s_bin="$cache/k8s-$KUBERNETES_VERSION/bin"
etcd_bin="$cache/etcd-$ETCD_VERSION/bin"
cluster_dir="${THAW_CLUSTER_DIR:-$repo/.cluster}"
pki="$cluster_dir/pki"
pids="$cluster_dir/pids"
logs="$cluster_dir/logs"
kubeconfig="$cluster_dir/kubeconfig"
# A client of the same version as the server, built with it.
kubectl="$k8s_bin/kubectl"

apiserver_port=6443
etcd_client_port=23790
etcd_peer_port=23800
node_name="${THAW_NODE_NAME:-thaw-node}"
pod_cidr="${THAW_POD_CIDR:-10.244.0.0/24}"
bridge="${THAW_BRIDGE:-thaw0}"
bridge_ip="${pod_cidr%.*}.1"
service_cidr="10.96.0.0/16"
# The `kubernetes` Service gets the first address of the service range.
kubernetes_service_ip="10.96.0.1"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# pid_alive NAME: the process recorded for NAME is running.
pid_alive() {
  local f="$pids/$1.pid"
  [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# wait_until DESCRIPTION SECONDS COMMAND...: polls COMMAND every 100 ms until
# it succeeds; fails with the description after SECONDS.
wait_until() {
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for $what"
      return 1
    fi
    sleep 0.1
  done
}
