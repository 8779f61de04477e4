#!/usr/bin/env bash
# `make kind-up`: a one-node kind cluster named $KIND_CLUSTER (default thaw),
# kubeconfig in .kind/kubeconfig. THAW_KIND_MODE=offline (default) builds
# everything on this machine (docs/kind.md); stock uses kind's stock node
# image on a Docker that can pull. Reuses a cluster that already exists.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
start=$SECONDS

if [[ $mode == offline ]]; then
  bash "$kind_dir/docker.sh" start
  bash "$kind_dir/build-node.sh" all
fi
command -v kind >/dev/null || { echo "kind not found on PATH (stock mode needs kind $KIND_VERSION)" >&2; exit 1; }

cluster_config() {
  cat <<CONFIG
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  podSubnet: $pod_subnet
  serviceSubnet: $service_subnet
CONFIG
  # kindnetd cannot be built offline: a static bridge CNI instead (one node).
  [[ $mode == offline ]] && echo "  disableDefaultCNI: true"
  cat <<CONFIG
nodes:
  - role: control-plane
kubeadmConfigPatches:
  - |
    kind: KubeletConfiguration
    # Kubernetes 1.36 refuses cgroup v1 hosts (these machines) unless told.
    failCgroupV1: false
    # Room for the scale-from-zero benchmark's 100 instances besides the
    # system pods (the default is 110).
    maxPods: 250
CONFIG
  if [[ $mode == offline ]]; then
    cat <<CONFIG
  - |
    kind: ClusterConfiguration
    # The etcd image is built from ETCD_VERSION and tagged for it.
    etcd:
      local:
        imageTag: ${ETCD_VERSION#v}-0
CONFIG
  fi
}

# The bridge CNI of the offline node, on the node's pod range.
cni_config() {
  cat <<CNI
{
  "cniVersion": "1.0.0",
  "name": "thaw-bridge",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "$node_pod_subnet" }]], "routes": [{ "dst": "0.0.0.0/0" }] }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
CNI
}

mkdir -p "$(dirname "$KUBECONFIG")"
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "kind cluster $cluster exists; reusing it"
  kind export kubeconfig --name "$cluster" --kubeconfig "$KUBECONFIG" >/dev/null 2>&1
else
  log "creating kind cluster $cluster ($mode, $node_image)"
  cluster_config >"$(dirname "$KUBECONFIG")/cluster.yaml"
  kind create cluster --name "$cluster" --image "$node_image" --kubeconfig "$KUBECONFIG" \
    --config "$(dirname "$KUBECONFIG")/cluster.yaml" --retain=false
fi
if [[ $mode == offline ]]; then
  cni_config | docker exec -i "$node_name" sh -c 'cat > /etc/cni/net.d/10-thaw-bridge.conflist'
fi
kubectl wait --for=condition=Ready node --all --timeout=180s >/dev/null
# A client started before CoreDNS is up gets `bad address`.
kubectl -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null
log "kind cluster $cluster ready in $((SECONDS - start)) s (KUBECONFIG=$KUBECONFIG)"
