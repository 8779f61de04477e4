#!/usr/bin/env bash
# `make bench-cold-test`: `make test` as on a fresh machine, timed. A clean
# clone of HEAD in a new directory with every cache of its own and empty:
# thaw's (~/.cache/thaw: Kubernetes binaries, kind, node image, Docker's
# data), cargo's registry and target, Go's module and build caches. What it
# cannot empty: the toolchains installed before a session (rustup, Go) and
# Debian packages already installed (docker.io, installed by the run when
# missing, takes about a minute more on a machine without it).
#
# Needs the machine to itself: the local cluster's fixed ports and the kind
# cluster's name are global, so stop them first (`make cluster-down
# kind-down`). Usage: bash e2e/bench/cold-make-test.sh [DIR] (default
# /tmp/thaw-cold); the log is DIR/make-test.log and the figure is printed.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
dir="${1:-/tmp/thaw-cold}"
rm -rf "$dir"
mkdir -p "$dir"
git clone -q "$repo" "$dir/repo"
export THAW_CACHE="$dir/cache"
export CARGO_HOME="$dir/cargo"
export GOMODCACHE="$dir/go/mod" GOCACHE="$dir/go/build" GOPATH="$dir/go/path"
# rustup's proxies and toolchains stay where they were installed.
export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
export PATH="$HOME/.cargo/bin:$PATH"
unset CARGO_TARGET_DIR KUBECONFIG DOCKER_HOST
start=$(date +%s)
status=0
(cd "$dir/repo" && make test) >"$dir/make-test.log" 2>&1 || status=$?
took=$(($(date +%s) - start))
printf 'cold make test: %dm%02ds, exit %d (commit %s; log %s)\n' \
  $((took / 60)) $((took % 60)) "$status" "$(git -C "$dir/repo" rev-parse --short HEAD)" \
  "$dir/make-test.log"
exit "$status"
