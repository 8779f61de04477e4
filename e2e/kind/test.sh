#!/usr/bin/env bash
# The kind tests (e2e/support/tests/kind*.rs, cargo feature `kind`) against the
# cluster of up.sh with thaw installed by install.sh, and the CRD tests
# (tests/crd.rs) against the CRD the chart installed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo"
# kind_plugin.rs runs this build's thaw binary on the host as kubectl-thaw.
cargo build -p thaw
THAW_E2E_PROVIDER=kind cargo test -p thaw-e2e --features kind --test 'kind*' --test crd --no-fail-fast -- "$@"
