#!/usr/bin/env bash
# The thaw image and the sample function images without a registry: static
# binaries built on the host, each in a FROM scratch image whose USER,
# EXPOSE and ENTRYPOINT lines are read from the published Dockerfiles (so
# the two cannot drift), loaded into the kind cluster with `kind load`.
# Also two images only the kind tests use: hello-root (hello without USER,
# i.e. uid 0) and fetch (the sample HTTP client for in-cluster requests).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo"

version="$(sed -n 's/^appVersion: *"\(.*\)"$/\1/p' charts/thaw/Chart.yaml)"
target=x86_64-unknown-linux-gnu
out="target/$target/release"

# dockerfile_lines FILE STAGE: the USER, EXPOSE and ENTRYPOINT lines of the
# last stage of FILE, or of the stage named STAGE.
dockerfile_lines() {
  awk -v stage="$2" '
    /^FROM / { n++; keep = (stage == "") || ($NF == stage); if (stage == "") lines = "" }
    keep && /^(USER|EXPOSE|ENTRYPOINT) / { lines = lines $0 "\n" }
    END { printf "%s", lines }
  ' "$1"
}

# image TAG BINARY LINES [drop-user]: FROM scratch, the binary at the
# entrypoint's path, then LINES (without USER when asked).
image() {
  local tag=$1 binary=$2 lines=$3 drop_user=${4:-} ctx path
  path="$(sed -n 's/^ENTRYPOINT \["\([^"]*\)".*/\1/p' <<<"$lines")"
  [[ -n $path ]] || { echo "no ENTRYPOINT for $tag in its Dockerfile" >&2; exit 1; }
  grep -q '^USER ' <<<"$lines" || { echo "no USER for $tag in its Dockerfile" >&2; exit 1; }
  [[ -n $drop_user ]] && lines="$(grep -v '^USER ' <<<"$lines")"
  ctx="$(mktemp -d)"
  cp "$binary" "$ctx/bin"
  printf 'FROM scratch\nCOPY bin %s\n%s\n' "$path" "$lines" >"$ctx/Dockerfile"
  docker build -q -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
  echo "$tag"
}

log "building static binaries (release, $target, crt-static)"
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --target "$target" \
  -p thaw -p thaw-sample-functions --bins

thaw_lines="$(dockerfile_lines Dockerfile "")"
images=("$(image "thaw.dev/thaw:$version" "$out/thaw" "$thaw_lines")")
for fn in hello testfn; do
  lines="$(dockerfile_lines examples/functions/Dockerfile "$fn")"
  # The release's tag, as manifests/examples use: a :latest image would be
  # pulled on every start (imagePullPolicy Always), and nothing can be pulled.
  images+=("$(image "thaw.dev/samples/$fn:$version" "$out/$fn" "$lines")")
done
hello_lines="$(dockerfile_lines examples/functions/Dockerfile hello)"
images+=("$(image "thaw.dev/samples/hello-root:$version" "$out/hello" "$hello_lines" drop-user)")
images+=("$(image "thaw.dev/samples/fetch:$version" "$out/fetch" \
  "$(sed 's|"/hello"|"/fetch"|' <<<"$hello_lines" | grep -v '^EXPOSE')")")

log "loading ${#images[@]} images into kind cluster $cluster"
kind load docker-image --name "$cluster" "${images[@]}"
