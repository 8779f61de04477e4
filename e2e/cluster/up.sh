#!/usr/bin/env bash
# Starts the local cluster: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and the process node agent, all on loopback, each logging to
# $THAW_CLUSTER_DIR/logs. Idempotent: a running cluster is left as it is.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

apiserver_ready() {
  curl -sf --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$apiserver_port/readyz"
}

if pid_alive kube-apiserver && pid_alive thaw-node && apiserver_ready >/dev/null 2>&1; then
  log "cluster already up; kubeconfig: $kubeconfig"
  exit 0
fi
# The ports and the bridge are the machine's, not this directory's: if
# another directory's cluster holds the API server's port, stop here and
# touch nothing (the cleanup below would take its pod network down).
if ss -Hltn "sport = :$apiserver_port" 2>/dev/null | grep -q . && ! pid_alive kube-apiserver; then
  log "port $apiserver_port is taken by another local cluster (not $cluster_dir);" \
    "use it with THAW_CLUSTER_DIR=<its directory>, or stop it with its down.sh"
  exit 1
fi
# Half-up (a crash, or processes ended with a session): start again cleanly.
bash "$repo/e2e/cluster/down.sh" >/dev/null 2>&1 || true

bash "$repo/e2e/cluster/build-binaries.sh" etcd
bash "$repo/e2e/cluster/build-binaries.sh" kubernetes
# Built by `make cluster-up` (cargo is not run here: a test calling this
# script would deadlock on the build lock its own `cargo test` holds).
for bin in thaw-node hello testfn; do
  if [[ ! -x $repo/target/debug/$bin ]]; then
    log "target/debug/$bin is missing: run \`make cluster-up\` (it builds it)"
    exit 1
  fi
done

mkdir -p "$pids" "$logs" "$cluster_dir/etcd"
start=$SECONDS

# --- certificates (kept across restarts) -----------------------------------
# client_cert NAME CN [O]: a client certificate signed by the cluster CA.
client_cert() {
  local name=$1 cn=$2 org=${3:-}
  [[ -f $pki/$name.crt ]] && return
  local subj="/CN=$cn"
  [[ -n $org ]] && subj="/O=$org/CN=$cn"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/$name.key" -subj "$subj" \
    -out "$pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -out "$pki/$name.crt" -extfile <(printf 'extendedKeyUsage=clientAuth\n') 2>/dev/null
}

# A failed start leaves no process behind; the logs stay for a look.
trap 'log "start failed; logs in $logs"; bash "$repo/e2e/cluster/down.sh" >/dev/null 2>&1' ERR

# sa.pub is written last, so its presence means the set is complete.
if [[ ! -f $pki/sa.pub ]]; then
  log "generating certificates"
  rm -rf "$pki" && mkdir -p "$pki"
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -days 3650 \
    -subj "/CN=thaw-local-ca" -out "$pki/ca.crt" 2>/dev/null
  openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/apiserver.key" -subj "/CN=kube-apiserver" \
    -out "$pki/apiserver.csr" 2>/dev/null
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -out "$pki/apiserver.crt" -extfile <(printf '%s\n' \
      "subjectAltName=IP:127.0.0.1,IP:$bridge_ip,IP:$kubernetes_service_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
      "extendedKeyUsage=serverAuth") 2>/dev/null
  client_cert admin thaw-admin system:masters
  client_cert controller-manager system:kube-controller-manager
  client_cert scheduler system:kube-scheduler
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
fi

# write_kubeconfig FILE CERT_NAME
write_kubeconfig() {
  cat >"$1" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: thaw-local
  cluster:
    server: https://127.0.0.1:$apiserver_port
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $pki/$2.crt
    client-key: $pki/$2.key
contexts:
- name: thaw-local
  context:
    cluster: thaw-local
    user: $2
current-context: thaw-local
KUBECONFIG
}
write_kubeconfig "$kubeconfig" admin
write_kubeconfig "$cluster_dir/controller-manager.kubeconfig" controller-manager
write_kubeconfig "$cluster_dir/scheduler.kubeconfig" scheduler

# run NAME COMMAND...: starts COMMAND in its own session, logging to logs/NAME.log.
run() {
  local name=$1; shift
  setsid "$@" >"$logs/$name.log" 2>&1 </dev/null &
  echo $! >"$pids/$name.pid"
}

# The node's bridge exists before the API server starts so it can advertise
# an address pods can reach; the node agent adds one veth per pod.
if ! ip link show "$bridge" >/dev/null 2>&1; then
  ip link add "$bridge" type bridge
  ip addr add "$bridge_ip/${pod_cidr#*/}" dev "$bridge"
fi
ip link set "$bridge" up

log "starting etcd"
run etcd "$etcd_bin/etcd" --name thaw-local --data-dir "$cluster_dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_client_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_client_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster "thaw-local=http://127.0.0.1:$etcd_peer_port" \
  --unsafe-no-fsync --log-level warn
wait_until "etcd" 20 curl -sf "http://127.0.0.1:$etcd_client_port/health"

log "starting kube-apiserver"
run kube-apiserver "$k8s_bin/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_client_port" \
  --bind-address 127.0.0.1 --secure-port "$apiserver_port" --advertise-address "$bridge_ip" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --authorization-mode Node,RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --api-audiences https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range "$service_cidr" \
  --allow-privileged=true --profiling=false
wait_until "kube-apiserver" 60 apiserver_ready

log "starting kube-controller-manager and kube-scheduler"
run kube-controller-manager "$k8s_bin/kube-controller-manager" \
  --kubeconfig "$cluster_dir/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$cluster_dir/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$cluster_dir/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 10257 --leader-elect=false \
  --use-service-account-credentials=true \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --concurrent-gc-syncs 5 --profiling=false
run kube-scheduler "$k8s_bin/kube-scheduler" \
  --kubeconfig "$cluster_dir/scheduler.kubeconfig" \
  --authentication-kubeconfig "$cluster_dir/scheduler.kubeconfig" \
  --authorization-kubeconfig "$cluster_dir/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false --profiling=false

log "starting the process node $node_name"
run thaw-node "$repo/target/debug/thaw-node" --kubeconfig "$kubeconfig" --node-name "$node_name" \
  --pod-cidr "$pod_cidr" --bridge "$bridge" --images "$repo/e2e/images.toml" --root "$repo" \
  --state-dir "$cluster_dir/node"

wait_until "kube-controller-manager" 30 curl -skf "https://127.0.0.1:10257/healthz"
wait_until "kube-scheduler" 30 curl -skf "https://127.0.0.1:10259/healthz"
wait_until "node $node_name Ready" 30 "$kubectl" --kubeconfig "$kubeconfig" wait --for=condition=Ready \
  "node/$node_name" --timeout=1s
wait_until "the default service account" 30 "$kubectl" --kubeconfig "$kubeconfig" get serviceaccount default

log "cluster up in $((SECONDS - start)) s; export KUBECONFIG=$kubeconfig"
