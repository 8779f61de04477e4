# Shared by the e2e/kind scripts: pinned versions, cache paths, the mode and
# the Docker endpoint. Source it; it sets no shell options of its own.
kind_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$kind_dir/../.." && pwd)"
# shellcheck source=../versions.env
source "$repo/e2e/versions.env"

cache="${THAW_CACHE:-$HOME/.cache/thaw}"
# offline: this machine builds everything (no registry); stock: plain kind and
# its stock node image on a Docker that can pull (a laptop, GitHub Actions).
# Chosen explicitly, never by probing the network.
mode="${THAW_KIND_MODE:-offline}"
case "$mode" in
  offline | stock) ;;
  *) echo "THAW_KIND_MODE must be offline or stock, not '$mode'" >&2; exit 2 ;;
esac
cluster="${KIND_CLUSTER:-thaw}"
export KUBECONFIG="${KIND_KUBECONFIG:-$repo/.kind/kubeconfig}"

# The offline path runs its own dockerd; everything it owns lives here.
docker_state="$cache/kind-docker"
if [[ $mode == offline ]]; then
  export DOCKER_HOST="unix://$docker_state/run/docker.sock"
  kind_bin="$cache/kind-$KIND_VERSION/bin"
  node_image="thaw.dev/kind-node:$KUBERNETES_VERSION-kind-$KIND_VERSION"
  export PATH="$kind_bin:$cache/k8s-$KUBERNETES_VERSION/bin:$cache/helm-$HELM_VERSION/bin:$PATH"
else
  node_image="$KIND_STOCK_NODE_IMAGE"
fi

# Subnets: the local process-node cluster on the same host uses 10.244.0.0/24
# and 10.96.0.0/16.
pod_subnet=10.246.0.0/16
node_pod_subnet=10.246.0.0/24
service_subnet=10.98.0.0/16
node_name="$cluster-control-plane"

log() { printf '[kind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# On the offline path use Debian's docker CLI, the same release as its daemon
# (another docker earlier on PATH may be a different version); kind runs
# `docker` from PATH too, so the shim directory goes first.
if [[ $mode == offline ]]; then
  mkdir -p "$docker_state/cli"
  ln -sf /usr/bin/docker "$docker_state/cli/docker"
  export PATH="$docker_state/cli:$PATH" DOCKER_BUILDKIT=0
fi
