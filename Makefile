# thaw: `make dev` runs thaw on a local cluster; `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
include e2e/versions.env
export KUBECONFIG := $(CURDIR)/.cluster/kubeconfig
# kubectl of the cluster's own version, built by `make tools`.
THAW_CACHE ?= $(HOME)/.cache/thaw
KUBECTL := $(THAW_CACHE)/k8s-$(KUBERNETES_VERSION)/bin/kubectl

.PHONY: help
help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  %-16s %s\n", $$1, $$2 }'

.PHONY: tools
tools: ## Build the local cluster's binaries (Kubernetes, etcd, helm) into ~/.cache/thaw once.
	bash e2e/prereqs.sh
	bash e2e/cluster/build-binaries.sh all

.PHONY: build
build: ## Build every crate.
	$(CARGO) build --workspace --all-targets

.PHONY: crds
crds: ## Regenerate crds/ from the Rust API types.
	$(CARGO) run --quiet -p thaw -- crd > crds/functions.thaw.dev.yaml

.PHONY: lint
lint: ## cargo fmt --check and clippy with warnings denied.
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: cluster-up
cluster-up: tools ## Start the local cluster (control plane and process node).
	$(CARGO) build -p thaw-node -p thaw-sample-functions
	bash e2e/cluster/up.sh

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and remove everything it made.
	bash e2e/cluster/down.sh

.PHONY: dev
dev: cluster-up ## Run thaw on the local cluster and print a curl that cold-starts a function.
	$(CARGO) build -p thaw
	bash e2e/dev.sh

.PHONY: test
test: tools lint build ## Every test: lint, unit tests, and tests against the local cluster.
	bash e2e/run-tests.sh
