#!/usr/bin/env bash
# The kind tests (e2e/support/tests/kind.rs, cargo feature `kind`) against the
# cluster of up.sh with thaw installed by install.sh.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo"
THAW_E2E_PROVIDER=kind cargo test -p thaw-e2e --features kind --test kind --no-fail-fast -- "$@"
