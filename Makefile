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
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  %-16s %s\n", $$1, $$2 }'

.PHONY: tools
tools: ## Build the local cluster's binaries (Kubernetes, etcd, helm) into ~/.cache/thaw once.
	bash e2e/prereqs.sh
	bash e2e/cluster/build-binaries.sh all

.PHONY: build
build: ## Build every crate.
	$(CARGO) build --workspace --all-targets

# `kubectl thaw`: kubectl runs any `kubectl-<name>` on PATH as `kubectl <name>`.
PREFIX ?= $(HOME)/.local
.PHONY: install-plugin
install-plugin: ## Install `kubectl thaw`: target/release/thaw copied to $(PREFIX)/bin/thaw, linked as kubectl-thaw.
	$(CARGO) build --release -p thaw
	install -d $(PREFIX)/bin
	install -m 0755 target/release/thaw $(PREFIX)/bin/thaw
	ln -sf thaw $(PREFIX)/bin/kubectl-thaw
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) ;; *) echo "add $(PREFIX)/bin to PATH for kubectl to find kubectl-thaw" ;; esac
	@echo "installed: $(PREFIX)/bin/kubectl-thaw (try: kubectl thaw status <function>)"

.PHONY: crds
crds: ## Regenerate crds/ from the Rust API types, and the chart's copy and manifests/install.yaml with it.
	$(CARGO) run --quiet -p thaw -- crd > crds/functions.thaw.dev.yaml
	$(MAKE) manifests

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

.PHONY: bench-haproxy
bench-haproxy: # haproxy for the activator benchmarks (Debian package; any version, printed by the bench).
	@command -v haproxy >/dev/null 2>&1 || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy; }

.PHONY: bench-activator
bench-activator: bench-haproxy ## hello directly, through haproxy, the activator, activator + gate: latency, throughput, CPU/request (release; docs/benchmarks.md).
	$(CARGO) build --release -p thaw -p thaw-sample-functions
	$(CARGO) bench -p thaw-activator --bench proxy

.PHONY: bench-dataplane
bench-dataplane: bench-haproxy ## Open loop, 1,000 req/s for 60 s at a 100 ms handler, direct vs proxies: p95 (release; docs/benchmarks.md).
	$(CARGO) build --release -p thaw -p thaw-sample-functions
	BENCH_MODE=dataplane $(CARGO) bench -p thaw-activator --bench proxy

.PHONY: bench-hostile
bench-hostile: ## RSS of activator and operator under 10,000 idle/slow connections and full queues (release build; docs/benchmarks.md).
	$(CARGO) build --release -p thaw -p thaw-sample-functions
	python3 e2e/bench/hostile.py --target-dir target/release

.PHONY: chart-lint
chart-lint: ## Chart checks: helm lint, rendering, schema refusals, no drift of its CRD and manifests/install.yaml.
	bash e2e/chart/check.sh

.PHONY: manifests
manifests: ## Copy the CRD into charts/thaw and render manifests/install.yaml from the chart.
	cp crds/functions.thaw.dev.yaml charts/thaw/crds/functions.thaw.dev.yaml
	bash e2e/chart/render.sh > manifests/install.yaml.tmp
	mv manifests/install.yaml.tmp manifests/install.yaml

# Images (Docker needed; not on the development machines).
DOCKER ?= docker
THAW_VERSION := $(shell sed -n 's/^appVersion: *"\(.*\)"$$/\1/p' charts/thaw/Chart.yaml)
IMAGE ?= thaw.dev/thaw:$(THAW_VERSION)

.PHONY: images
images: ## Build the thaw image and the sample function images with docker.
	$(DOCKER) build -t $(IMAGE) .
	$(DOCKER) build -f examples/functions/Dockerfile --target hello -t thaw.dev/samples/hello:$(THAW_VERSION) .
	$(DOCKER) build -f examples/functions/Dockerfile --target testfn -t thaw.dev/samples/testfn:$(THAW_VERSION) .

# kind (docs/kind.md). THAW_KIND_MODE=offline (default: builds Docker's
# daemon setup, the node image and every image here, no registry needed) or
# stock (kind's stock node image on a Docker that can pull, as in CI).
.PHONY: kind-up
kind-up: ## Create the kind cluster (offline by default; THAW_KIND_MODE=stock for stock kind).
	bash e2e/kind/up.sh

.PHONY: kind-down
kind-down: ## Delete the kind cluster (and stop the offline path's dockerd).
	bash e2e/kind/down.sh

.PHONY: kind-install
kind-install: kind-up ## Build and load the images, helm install thaw with the chart's defaults.
	bash e2e/kind/images.sh
	bash e2e/kind/install.sh

.PHONY: dev-kind
dev-kind: kind-install ## thaw as users run it (chart defaults on kind), hello applied, a port-forward, and the curl.
	bash e2e/kind/dev.sh

.PHONY: kind-e2e
kind-e2e: kind-install ## The kind tests against the chart-installed thaw (e2e/support/tests/kind*.rs, crd.rs).
	bash e2e/kind/test.sh

.PHONY: bench-cold-start
bench-cold-start: kind-install ## Cold starts of hello and testfn on kind: breakdown p50/p95 (docs/benchmarks.md).
	bash e2e/bench/kind-cold-start.sh

.PHONY: bench-scale-from-zero
bench-scale-from-zero: kind-install ## 25 and 100 Functions from zero at once on kind: time to first 200 (docs/benchmarks.md).
	bash e2e/bench/kind-scale-from-zero.sh

.PHONY: bench-cold-test
bench-cold-test: ## `make test` from a clean clone with every cache empty, timed (needs the machine to itself; docs/benchmarks.md).
	bash e2e/bench/cold-make-test.sh

.PHONY: bench-follower
bench-follower: cluster-up ## Two operators, two activators, 200 Functions for 10 min: the follower's RSS (docs/benchmarks.md).
	$(CARGO) build --workspace
	bash e2e/bench/follower-rss.sh

.PHONY: bench-scale
bench-scale: cluster-up ## 1000 Functions on one operator and activator: time to Ready, RSS, idle API writes, routing latency.
	$(CARGO) build -p thaw
	bash e2e/bench/scale.sh

.PHONY: bench-pod-start
bench-pod-start: cluster-up ## Time pods of the sample function from creation to Ready on the local cluster.
	bash e2e/bench/pod-start.sh

.PHONY: test
test: tools lint build chart-lint ## Every test: lint, unit tests, chart checks, and tests against the local cluster.
	bash e2e/run-tests.sh
