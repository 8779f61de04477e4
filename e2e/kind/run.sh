#!/usr/bin/env bash
# The e2e tests on a kind cluster, for machines with Docker (CI runs it from
# .github/workflows/kind-e2e.yaml). The development machines have no Docker
# engine: there the same tests run on the local cluster (`make test`).
#
#  1. a kind cluster (kept if it exists) and a local registry serving the
#     thaw.dev/... images to it;
#  2. the images built (`make images`), `kind load`ed and pushed;
#  3. `helm install` of charts/thaw into thaw-system, serving the `default`
#     namespace only (the tests run their own operators in their own
#     namespaces), and a smoke test: hello answers through the installed
#     activator, by Host header through a port-forward, as in the README;
#  4. the e2e tests (e2e/support/tests) with THAW_E2E_PROVIDER=kind: they use
#     this cluster instead of starting the local one. The process node's own
#     tests (cluster.rs) are left out.
#
# Needs docker, kind, kubectl, helm, cargo and curl. Environment: KIND_CLUSTER
# (default thaw), KIND_KUBECONFIG (default ~/.kube/kind-<cluster>).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"

cluster="${KIND_CLUSTER:-thaw}"
registry="${cluster}-registry"
registry_port="${KIND_REGISTRY_PORT:-5001}"
export KUBECONFIG="${KIND_KUBECONFIG:-$HOME/.kube/kind-$cluster}"
version="$(sed -n 's/^appVersion: *"\(.*\)"$/\1/p' charts/thaw/Chart.yaml)"
image="thaw.dev/thaw:$version"
samples=(thaw.dev/samples/hello thaw.dev/samples/testfn)
log() { printf '[kind-e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
sudo_if_needed() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

# --- 1. cluster and registry -------------------------------------------------
mkdir -p "$(dirname "$KUBECONFIG")"
if ! kind get clusters | grep -qx "$cluster"; then
  log "creating kind cluster $cluster"
  kind create cluster --name "$cluster" --config e2e/kind/cluster.yaml --wait 180s
fi
kind export kubeconfig --name "$cluster"
if [[ $(docker inspect -f '{{.State.Running}}' "$registry" 2>/dev/null) != true ]]; then
  docker rm -f "$registry" >/dev/null 2>&1 || true
  docker run -d --restart=always --name "$registry" -p "127.0.0.1:$registry_port:5000" registry:2
fi
docker network connect kind "$registry" 2>/dev/null || true
# Pulls of thaw.dev/<path> on every node go to the registry as <path>.
for node in $(kind get nodes --name "$cluster"); do
  docker exec "$node" mkdir -p /etc/containerd/certs.d/thaw.dev
  printf '[host."http://%s:5000"]\n  capabilities = ["pull", "resolve"]\n' "$registry" |
    docker exec -i "$node" cp /dev/stdin /etc/containerd/certs.d/thaw.dev/hosts.toml
done

# --- 2. images -----------------------------------------------------------------
log "building images"
make images
kind load docker-image --name "$cluster" "$image"
for sample in "${samples[@]}"; do
  # The tags the tests use; an untagged image means :latest.
  for tag in latest 1; do
    docker tag "$sample:latest" "localhost:$registry_port/${sample#thaw.dev/}:$tag"
    docker push "localhost:$registry_port/${sample#thaw.dev/}:$tag"
  done
done

# --- 3. helm install and smoke test ----------------------------------------------
log "installing the chart"
helm upgrade --install thaw charts/thaw --namespace thaw-system --create-namespace \
  --set image.pullPolicy=Never --set 'watchNamespaces={default}' --wait --timeout 5m
kubectl apply -f manifests/examples/hello.yaml
kubectl wait --for=condition=Ready fn/hello --timeout=120s
kubectl -n thaw-system port-forward svc/thaw-activator 18080:80 >/tmp/thaw-kind-port-forward.log 2>&1 &
forward=$!
trap 'kill "$forward" 2>/dev/null || true' EXIT
log "calling hello through the activator (cold start)"
curl -fsS --retry 20 --retry-connrefused --retry-delay 1 --max-time 60 \
  -H 'Host: hello.default.svc.cluster.local' http://127.0.0.1:18080/
echo

# --- 4. the e2e tests ------------------------------------------------------------
# Tests run thaw (and reach instances) from this machine: route the pod
# network through the kind node.
node_ip="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cluster-control-plane")"
sudo_if_needed ip route replace 10.244.0.0/16 via "$node_ip"
tests=()
for file in e2e/support/tests/*.rs; do
  name="$(basename "$file" .rs)"
  [[ $name == cluster ]] && continue # the process node's own tests
  tests+=(--test "$name")
done
log "running the e2e tests: ${tests[*]}"
cargo build -p thaw -p thaw-sample-functions
THAW_E2E_PROVIDER=kind cargo test -p thaw-e2e --no-fail-fast "${tests[@]}"
