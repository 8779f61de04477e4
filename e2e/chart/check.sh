#!/usr/bin/env bash
# The chart's static checks, run by `make chart-lint` (and so by `make test`):
# helm lint, rendering with every option, values the schema must refuse, and
# that the generated copies (the chart's CRD, manifests/install.yaml) have not
# drifted from their sources. The cluster checks are e2e/support/tests/install.rs.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$repo"

failures=0
pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }

if "$HELM" lint --strict "$chart" >/tmp/thaw-chart-lint.$$ 2>&1; then
  pass "helm lint --strict"
else
  cat /tmp/thaw-chart-lint.$$; fail "helm lint --strict"
fi
rm -f /tmp/thaw-chart-lint.$$

# Every optional object on at once renders.
all_options=(
  --set 'watchNamespaces={apps}' --set activator.autoscaling.enabled=true
  --set activator.ingress.enabled=true --set 'activator.ingress.hosts={*.fn.example.com}'
  --set serviceMonitor.enabled=true --set networkPolicy.enabled=true
  --set activator.maxBodyBytes=1048576 --set activator.headerReadTimeout=10s
  --set 'stats.activatorServiceAccounts={thaw-system/thaw-activator,edge/activator}'
)
if out=$("$HELM" template t "$chart" "${all_options[@]}" 2>&1); then
  kinds=$(grep -c '^kind:' <<<"$out")
  pass "helm template with every option ($kinds objects)"
else
  echo "$out"; fail "helm template with every option"
fi

# expect_refused MESSAGE ARGS...: rendering with ARGS fails and says MESSAGE.
expect_refused() {
  local message=$1 out; shift
  if out=$("$HELM" template t "$chart" "$@" 2>&1); then
    fail "helm template $* was accepted"
  elif grep -qF -- "$message" <<<"$out"; then
    pass "refused $*: $message"
  else
    echo "$out"; fail "helm template $* failed without saying: $message"
  fi
}
expect_refused "at '/operator/replicas': got string, want integer" --set operator.replicas=two
expect_refused "at '/image/pullPolicy': value must be one of" --set image.pullPolicy=Sometimes
expect_refused "additional properties 'replica' not allowed" --set activator.replica=3
expect_refused "at '/logFormat'" --set logFormat=xml
expect_refused "watchNamespaces: thaw watches one namespace or all of them" --set 'watchNamespaces={a,b}'
expect_refused "at '/stats/activatorServiceAccounts/0'" --set 'stats.activatorServiceAccounts={thaw-activator}'
expect_refused "at '/stats/tokenExpirationSeconds'" --set stats.tokenExpirationSeconds=60

if diff -u crds/functions.thaw.dev.yaml "$chart/crds/functions.thaw.dev.yaml" >/dev/null; then
  pass "charts/thaw/crds matches crds/"
else
  fail "charts/thaw/crds/functions.thaw.dev.yaml differs from crds/functions.thaw.dev.yaml: run \`make manifests\`"
fi

if rendered=$(bash e2e/chart/render.sh) && diff -u manifests/install.yaml <(echo "$rendered") >/tmp/thaw-manifest-diff.$$; then
  pass "manifests/install.yaml matches helm template"
else
  head -40 /tmp/thaw-manifest-diff.$$
  fail "manifests/install.yaml differs from the chart's rendering: run \`make manifests\`"
fi
rm -f /tmp/thaw-manifest-diff.$$

app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$chart/Chart.yaml")
cargo_version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml)
if [[ $app_version == "$cargo_version" ]]; then
  pass "Chart appVersion $app_version is the workspace version"
else
  fail "Chart appVersion '$app_version' differs from the Cargo workspace version '$cargo_version'"
fi

if ((failures)); then
  echo "chart checks: $failures failed"
  exit 1
fi
echo "chart checks: all passed"
