#!/usr/bin/env bash
# Installs the system tools the local cluster needs, when missing, from
# Debian's packages. The cluster makes network namespaces, so it runs as root.
# Go 1.26 or newer and Rust (cargo) must already be installed: Debian's Go is
# too old to build Kubernetes 1.36.
set -euo pipefail
if [[ $(id -u) -ne 0 ]]; then
  echo "the local cluster needs root (it creates network namespaces and veths)" >&2
  exit 1
fi
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v flock >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
if ((go_minor < 26)); then
  echo "Go $(go env GOVERSION) is too old: building Kubernetes $(grep KUBERNETES_VERSION "$(dirname "$0")/versions.env" | cut -d= -f2) needs Go 1.26 or newer" >&2
  exit 1
fi
