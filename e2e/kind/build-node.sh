#!/usr/bin/env bash
# Offline path: builds kind's node image without `kind build node-image`
# (which fetches images with `ctr content fetch`; docs/kind.md says why) and
# everything in it, each piece cached under ~/.cache/thaw by its pinned
# version and rebuilt only when that changes:
#   kind                       kind-<KIND_VERSION>/bin/kind
#   kubelet kubeadm kube-proxy k8s-<KUBERNETES_VERSION>/node-bin (the control plane's own wrapper module)
#   coredns                    coredns-<COREDNS_VERSION>/bin/coredns
#   CNI plugins                cni-plugins-<CNI_PLUGINS_VERSION>/bin
#   pause                      pause-<PAUSE_VERSION>/pause (gcc -static of the kubernetes module's pause.c)
#   base root filesystem       kind-base-<DEBIAN_SUITE>-<hash of its package list>/rootfs.tar (debootstrap)
#   the node image             docker image thaw.dev/kind-node:<k8s>-kind-<kind>
# Needs dockerd (docker.sh start) for the images. Usage: build-node.sh [all|tools|base|image]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
# write_wrapper and build_kubernetes/build_etcd.
source "$repo/e2e/cluster/build-binaries.sh"
log() { printf '[kind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

node_bin="$cache/k8s-$KUBERNETES_VERSION/node-bin"
coredns_bin="$cache/coredns-$COREDNS_VERSION/bin"
cni_bin="$cache/cni-plugins-$CNI_PLUGINS_VERSION/bin"
pause_dir="$cache/pause-$PAUSE_VERSION"
base_packages=(systemd systemd-sysv dbus containerd runc iptables nftables iproute2 conntrack ethtool
  util-linux mount kmod libseccomp2 pigz ca-certificates procps bash jq e2fsprogs socat)
base_key="$(printf '%s\n' "${base_packages[@]}" | sha256sum | cut -c1-12)"
base_dir="$cache/kind-base-$DEBIAN_SUITE-$base_key"
kind_src="$(go env GOMODCACHE)/sigs.k8s.io/kind@$KIND_VERSION"

build_kind() {
  [[ -x $kind_bin/kind ]] && return
  local start=$SECONDS
  log "building kind $KIND_VERSION"
  GOBIN="$kind_bin.tmp" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kind@$KIND_VERSION"
  rm -rf "$kind_bin" && mv "$kind_bin.tmp" "$kind_bin"
  log "kind built in $((SECONDS - start)) s"
}

build_node_binaries() {
  [[ -x $node_bin/kubelet && -x $node_bin/kubeadm && -x $node_bin/kube-proxy ]] && return
  # Its own wrapper module (same content as the control plane's), so the two
  # builds can run at once without sharing a go.sum.
  local src="$cache/k8s-$KUBERNETES_VERSION/node-src" start=$SECONDS
  log "building kubelet, kubeadm, kube-proxy $KUBERNETES_VERSION"
  write_wrapper "$src" k8s.io/kubernetes "$KUBERNETES_VERSION" "$KUBERNETES_STAGING_VERSION"
  local minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  mkdir -p "$node_bin.tmp"
  (cd "$src" && go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$node_bin.tmp/" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kube-proxy)
  rm -rf "$node_bin" && mv "$node_bin.tmp" "$node_bin"
  log "node binaries built in $((SECONDS - start)) s"
}

build_coredns() {
  [[ -x $coredns_bin/coredns ]] && return
  local src="$cache/coredns-$COREDNS_VERSION/src" start=$SECONDS
  log "building coredns $COREDNS_VERSION"
  write_wrapper "$src" github.com/coredns/coredns "$COREDNS_VERSION" "$COREDNS_VERSION"
  mkdir -p "$coredns_bin.tmp"
  (cd "$src" && go build -trimpath -ldflags "-s -w" -o "$coredns_bin.tmp/coredns" github.com/coredns/coredns)
  rm -rf "$coredns_bin" && mv "$coredns_bin.tmp" "$coredns_bin"
  log "coredns built in $((SECONDS - start)) s"
}

build_cni() {
  [[ -x $cni_bin/bridge && -x $cni_bin/host-local && -x $cni_bin/portmap && -x $cni_bin/loopback ]] && return
  local start=$SECONDS m=github.com/containernetworking/plugins
  log "building CNI plugins $CNI_PLUGINS_VERSION"
  GOBIN="$cni_bin.tmp" go install -trimpath -ldflags "-s -w" \
    "$m/plugins/main/bridge@$CNI_PLUGINS_VERSION" "$m/plugins/ipam/host-local@$CNI_PLUGINS_VERSION" \
    "$m/plugins/meta/portmap@$CNI_PLUGINS_VERSION" "$m/plugins/main/loopback@$CNI_PLUGINS_VERSION"
  rm -rf "$cni_bin" && mv "$cni_bin.tmp" "$cni_bin"
  log "CNI plugins built in $((SECONDS - start)) s"
}

build_pause() {
  [[ -x $pause_dir/pause ]] && return
  local src
  src="$(cd "$cache/k8s-$KUBERNETES_VERSION/node-src" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  log "building pause $PAUSE_VERSION"
  mkdir -p "$pause_dir"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-thaw" -o "$pause_dir/pause.tmp" "$src"
  strip "$pause_dir/pause.tmp"
  mv "$pause_dir/pause.tmp" "$pause_dir/pause"
}

build_tools() {
  build_kind
  build_etcd
  build_kubernetes
  build_node_binaries
  build_coredns
  build_cni
  build_pause
}

# The node's root filesystem: Debian minbase plus what kind's base image
# installs (images/base/Dockerfile of the kind module), from Debian's mirror.
build_base() {
  [[ -f $base_dir/rootfs.tar ]] && return
  local start=$SECONDS root="$base_dir/root"
  log "debootstrap $DEBIAN_SUITE (log: $base_dir/debootstrap.log)"
  rm -rf "$root" && mkdir -p "$root"
  local include; include="$(IFS=,; echo "${base_packages[*]}")"
  debootstrap --variant=minbase --include="$include" "$DEBIAN_SUITE" "$root" \
    >"$base_dir/debootstrap.log" 2>&1 || { tail -20 "$base_dir/debootstrap.log" >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" --numeric-owner -cf "$base_dir/rootfs.tar.tmp" .
  mv "$base_dir/rootfs.tar.tmp" "$base_dir/rootfs.tar"
  rm -rf "$root"
  log "base root filesystem built in $((SECONDS - start)) s"
}


# The images kubeadm asks for, as `kubeadm config images list` prints them for
# the offline cluster's kubeadm configuration (its etcd tag is ours).
kubeadm_images() {
  "$node_bin/kubeadm" config images list --config <(kubeadm_config) 2>/dev/null
}
kubeadm_config() {
  cat <<CONFIG
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: $KUBERNETES_VERSION
etcd:
  local:
    imageTag: $etcd_tag
CONFIG
}
etcd_tag="${ETCD_VERSION#v}-0"

# image_from_binaries TAG ENTRYPOINT_JSON USER DIR FILE...: a one-layer
# image (`docker import`, no base) holding the static FILEs in DIR. With
# FILE_CAPS set, the files get those file capabilities; import keeps the
# xattr, a Dockerfile COPY does not.
image_from_binaries() {
  local tag=$1 entrypoint=$2 user=$3 dir=$4 ctx; shift 4
  ctx="$(mktemp -d)"
  mkdir -p "$ctx/root/$dir"
  cp "$@" "$ctx/root/$dir/"
  if [[ -n ${FILE_CAPS:-} ]]; then
    for f in "$@"; do setcap "$FILE_CAPS" "$ctx/root/$dir/$(basename "$f")"; done
  fi
  tar -C "$ctx/root" --xattrs --xattrs-include='security.*' --owner=0 --group=0 --numeric-owner -cf - . |
    docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change "USER $user" --change "ENTRYPOINT $entrypoint" - "$tag" >/dev/null
  rm -rf "$ctx"
}

# The component images, tagged exactly as kubeadm lists them; build_image
# fails if kubeadm asks for anything this does not build.
build_component_images() {
  local image name tag base_image=$1 built=()
  local k8s_bin="$cache/k8s-$KUBERNETES_VERSION/bin"
  while read -r image; do
    name="${image%:*}"; name="${name##*/}"; tag="${image##*:}"
    case "$name" in
      kube-apiserver | kube-controller-manager | kube-scheduler)
        [[ $tag == "$KUBERNETES_VERSION" ]] || { echo "kubeadm wants $image, not $KUBERNETES_VERSION" >&2; exit 1; }
        image_from_binaries "$image" "[\"/usr/local/bin/$name\"]" 0 /usr/local/bin "$k8s_bin/$name" ;;
      etcd) image_from_binaries "$image" '["/usr/local/bin/etcd"]' 0 /usr/local/bin "$cache/etcd-$ETCD_VERSION/bin/etcd" ;;
      coredns)
        [[ $tag == "$COREDNS_VERSION" ]] || { echo "kubeadm wants $image; set COREDNS_VERSION=$tag" >&2; exit 1; }
        # The upstream image's entrypoint, user (distroless nonroot) and file
        # capability: kubeadm's Deployment adds NET_BIND_SERVICE for port 53,
        # which a non-root process only gets from the file.
        FILE_CAPS=cap_net_bind_service=+ep image_from_binaries "$image" '["/coredns"]' 65532 / "$coredns_bin/coredns" ;;
      pause)
        [[ $tag == "$PAUSE_VERSION" ]] || { echo "kubeadm wants $image; set PAUSE_VERSION=$tag" >&2; exit 1; }
        image_from_binaries "$image" '["/pause"]' 65535 / "$pause_dir/pause" ;;
      kube-proxy)
        # It runs iptables: the node's base root filesystem plus the binary.
        local ctx; ctx="$(mktemp -d)"
        cp "$node_bin/kube-proxy" "$ctx/"
        printf 'FROM %s\nCOPY kube-proxy /usr/local/bin/kube-proxy\n' "$base_image" >"$ctx/Dockerfile"
        docker build -q -t "$image" "$ctx" >/dev/null
        rm -rf "$ctx" ;;
      *) echo "kubeadm wants $image, which build-node.sh does not build" >&2; exit 1 ;;
    esac
    built+=("$image")
  done < <(kubeadm_images)
  printf '%s\n' "${built[@]}"
}

# The recipe's own files: a change to them rebuilds the node image too.
recipe="$(cat "$0" "$kind_dir"/node/* | sha256sum | cut -c1-12)"

build_image() {
  local have
  have="$(docker image inspect -f '{{index .Config.Labels "dev.thaw.recipe"}}' "$node_image" 2>/dev/null || true)"
  [[ $have == "$recipe" ]] && return
  local start=$SECONDS base_image="thaw.dev/kind-base:$DEBIAN_SUITE-$base_key"
  docker image inspect "$base_image" >/dev/null 2>&1 || docker import "$base_dir/rootfs.tar" "$base_image" >/dev/null
  log "building the component images"
  local ctx images; ctx="$(mktemp -d)"
  build_component_images "$base_image" >"$ctx/images.list"
  mapfile -t images <"$ctx/images.list"
  ((${#images[@]} >= 7)) || { echo "kubeadm listed too few images: ${images[*]}" >&2; exit 1; }
  docker save "${images[@]}" >"$ctx/images.tar"

  log "building the node image $node_image"
  # kind's own node files (entrypoint, systemd units, kubelet drop-ins), but
  # our containerd config; no fuse-overlayfs (rootless only).
  cp -a "$kind_src/images/base/files" "$ctx/files"
  chmod -R u+w "$ctx/files"
  rm "$ctx/files/etc/systemd/system/containerd-fuse-overlayfs.service"
  mkdir -p "$ctx/bin" "$ctx/cni"
  cp "$node_bin/kubelet" "$node_bin/kubeadm" "$cache/k8s-$KUBERNETES_VERSION/bin/kubectl" "$ctx/bin/"
  cp "$cni_bin"/{bridge,host-local,portmap,loopback} "$ctx/cni/"
  echo "$KUBERNETES_VERSION" >"$ctx/version"
  sed "s|@PAUSE_IMAGE@|registry.k8s.io/pause:$PAUSE_VERSION|" "$kind_dir/node/containerd.toml" \
    >"$ctx/files/etc/containerd/config.toml"
  cp "$kind_dir/node/Dockerfile" "$ctx/Dockerfile"
  docker build -q --build-arg "BASE=$base_image" -t "$node_image-stage" "$ctx" >/dev/null

  # Preload the images the way kind's node-image build does: containerd in a
  # container of the image, `ctr import --no-unpack`, then commit.
  local c="thaw-kind-node-build"
  docker rm -f "$c" >/dev/null 2>&1 || true
  docker run -d --privileged --name "$c" --entrypoint sleep "$node_image-stage" infinity >/dev/null
  docker exec -d "$c" containerd
  local deadline=$((SECONDS + 30))
  until docker exec "$c" ctr version >/dev/null 2>&1; do
    ((SECONDS > deadline)) && { echo "containerd did not start in the build container" >&2; exit 1; }
    sleep 0.5
  done
  docker exec -i "$c" ctr -n k8s.io images import --all-platforms --no-unpack --digests - <"$ctx/images.tar" >/dev/null
  for image in "${images[@]}"; do
    docker exec "$c" ctr -n k8s.io images label "$image" io.cri-containerd.pinned=pinned >/dev/null
  done
  docker exec "$c" sh -c 'pkill containerd; while pgrep containerd >/dev/null; do sleep 0.2; done'
  docker commit "$c" "$node_image-preloaded" >/dev/null
  docker rm -f "$c" >/dev/null
  # docker commit/import cannot set STOPSIGNAL; a classic build on top can.
  docker build -q -t "$node_image" - >/dev/null <<DOCKERFILE
FROM $node_image-preloaded
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
CMD []
LABEL dev.thaw.recipe=$recipe
DOCKERFILE
  docker rmi "$node_image-preloaded" "$node_image-stage" >/dev/null
  # Images a previous build left untagged.
  docker image prune -f >/dev/null
  rm -rf "$ctx"
  log "node image built in $((SECONDS - start)) s"
}

case "${1:-all}" in
  all) build_tools; build_base; build_image ;;
  tools) build_tools ;;
  base) build_base ;;
  image) build_image ;;
  *) echo "usage: $0 [all|tools|base|image]" >&2; exit 2 ;;
esac
