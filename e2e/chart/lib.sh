# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this
# Shared settings of the chart scripts. Sourced, not run.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=../versions.env
source "$repo/e2e/versions.env"
chart="$repo/charts/thaw"
# helm: $HELM, else the one `make tools` builds, else helm on PATH (kind/CI).
if [[ -z ${HELM:-} ]]; then
  HELM="${THAW_CACHE:-$HOME/.cache/thaw}/helm-$HELM_VERSION/bin/helm"
  [[ -x $HELM ]] || HELM=helm
fi
# The fixed release manifests/install.yaml is rendered for.
release=thaw
release_namespace=thaw-system
