#!/usr/bin/env bash
# Builds the local cluster's binaries once into a cache outside the repository
# and reuses them when present: kube-apiserver, kube-controller-manager,
# kube-scheduler and kubectl (from the k8s.io/kubernetes module), etcd and helm.
#
# k8s.io/kubernetes and etcd's server module replace their sibling modules with
# relative paths, so `go install mod@version` refuses them. We build from a
# small wrapper module that requires the upstream module and replaces each of
# those siblings with its published version, derived from the served go.mod.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../versions.env
source "$here/../versions.env"

cache="${THAW_CACHE:-$HOME/.cache/thaw}"
k8s_bin="$cache/k8s-$KUBERNETES_VERSION/bin"
etcd_bin="$cache/etcd-$ETCD_VERSION/bin"
helm_bin="$cache/helm-$HELM_VERSION/bin"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
# The checksum database is not reachable from these machines; modules come
# from the module proxy only.
export GOSUMDB=off
proxy="${GOPROXY:-https://proxy.golang.org}"
proxy="${proxy%%,*}"

log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# write_wrapper DIR MODULE VERSION REPLACE_VERSION: a go.mod that requires
# MODULE@VERSION, copies its go/godebug lines and replaces every module it
# replaces with a relative path by that module at REPLACE_VERSION.
write_wrapper() {
  local dir=$1 module=$2 version=$3 replace_version=$4 upstream
  mkdir -p "$dir"
  upstream="$(curl -fsSL "$proxy/$module/@v/$version.mod")"
  {
    echo "module thaw.dev/local-cluster-build"
    echo
    grep -E '^(go|godebug) ' <<<"$upstream"
    echo
    echo "require $module $version"
    echo
    echo "replace ("
    # Lines like "k8s.io/api => ./staging/src/k8s.io/api" or "go.etcd.io/etcd/api/v3 => ../api";
    # etcd also fences off modules with "=> ./FORBIDDEN_DEPENDENCY", which we leave out.
    awk -v v="$replace_version" '
      /=> \.\.?\// && !/FORBIDDEN/ { m = ($1 == "replace") ? $2 : $1; print "\t" m " => " m " " v }
    ' <<<"$upstream"
    echo ")"
  } >"$dir/go.mod"
  : >"$dir/go.sum"
}

build_kubernetes() {
  if [[ -x $k8s_bin/kube-apiserver && -x $k8s_bin/kube-controller-manager && -x $k8s_bin/kube-scheduler &&
    -x $k8s_bin/kubectl ]]; then
    return
  fi
  local src="$cache/k8s-$KUBERNETES_VERSION/src" start=$SECONDS
  log "building Kubernetes $KUBERNETES_VERSION control plane (a cold build takes a while on 2 cores)"
  write_wrapper "$src" k8s.io/kubernetes "$KUBERNETES_VERSION" "$KUBERNETES_STAGING_VERSION"
  local minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local date; date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  (
    cd "$src"
    log "downloading modules"
    go mod download k8s.io/kubernetes
    mkdir -p "$k8s_bin.tmp"
    # kubectl too, so the scripts and users get a client of the server's version.
    log "compiling kube-apiserver, kube-controller-manager, kube-scheduler, kubectl"
    go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$k8s_bin.tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl
  )
  rm -rf "$k8s_bin" && mv "$k8s_bin.tmp" "$k8s_bin"
  log "Kubernetes built in $((SECONDS - start)) s"
}

build_etcd() {
  [[ -x $etcd_bin/etcd ]] && return
  local src="$cache/etcd-$ETCD_VERSION/src" start=$SECONDS
  log "building etcd $ETCD_VERSION"
  write_wrapper "$src" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_VERSION"
  (
    cd "$src"
    mkdir -p "$etcd_bin.tmp"
    go build -trimpath -ldflags "-s -w" -o "$etcd_bin.tmp/etcd" go.etcd.io/etcd/server/v3
  )
  rm -rf "$etcd_bin" && mv "$etcd_bin.tmp" "$etcd_bin"
  log "etcd built in $((SECONDS - start)) s"
}

build_helm() {
  [[ -x $helm_bin/helm ]] && return
  local start=$SECONDS major=${HELM_VERSION%%.*}
  log "building helm $HELM_VERSION"
  GOBIN="$helm_bin.tmp" go install -trimpath -ldflags "-s -w" "helm.sh/helm/$major/cmd/helm@$HELM_VERSION"
  rm -rf "$helm_bin" && mv "$helm_bin.tmp" "$helm_bin"
  log "helm built in $((SECONDS - start)) s"
}

# Sourced by e2e/kind/build-node.sh for write_wrapper and the cache paths.
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0

case "${1:-all}" in
  all) build_etcd; build_kubernetes; build_helm ;;
  etcd) build_etcd ;;
  kubernetes) build_kubernetes ;;
  helm) build_helm ;;
  *) echo "usage: $0 [all|etcd|kubernetes|helm]" >&2; exit 2 ;;
esac
