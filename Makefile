# Two entry points: `make demo` and `make test`; both install first.
VENV ?= .venv
SYSTEM_PYTHON ?= /usr/bin/python3
PY := $(VENV)/bin/python
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)
# CNI mode's plugin (cni/, Go: it runs on nodes' hosts), beside `intercept` in the venv.
CNI_PLUGIN := $(VENV)/bin/intercept-proxy-cni
# nginx and wrk: the benchmark's upstream and HTTP/1.1 client (its smoke test runs in `make test`);
# containernetworking-plugins: the CNI plugins the cluster's node attaches its pods with.
DEBIAN_PACKAGES := ca-certificates containernetworking-plugins curl git iproute2 iptables nghttp2-client \
	nginx-light util-linux wrk

.PHONY: install tools test lint demo bench clean
.DEFAULT_GOAL := test

install: $(VENV)/.installed $(CNI_PLUGIN) tools

# The real engines (kube-apiserver, etcd, Kyverno, OPA, Helm) from their Go modules, pinned in
# tools/ and cached in /opt/intercept-tools: built once (long), then a check of a second.
tools:
	scripts/install-tools

# Re-run only when the dependency list changes; every step is idempotent anyway.
$(VENV)/.installed: Makefile pyproject.toml scripts/install-debian-packages scripts/check-reachable
	scripts/install-debian-packages $(DEBIAN_PACKAGES)
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	scripts/check-reachable $(PY)
	touch $@

# Static, as the image's copy: a node's host has no C library we could rely on.
$(CNI_PLUGIN): $(VENV)/.installed cni/go.mod $(wildcard cni/*.go)
	cd cni && GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0 $(GO) build -trimpath -o $(abspath $@) .

lint: install
	test -z "$$(cd cni && $(dir $(GO))gofmt -l .)" || { echo "gofmt: cni/ is not formatted"; exit 1; }
	cd cni && GOTOOLCHAIN=local $(GO) vet .
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

demo: install
	scripts/demo

# The side-by-side benchmark (about 10 minutes): Squid and mitmproxy first, outside our venv.
bench: install
	scripts/install-bench-tools
	$(VENV)/bin/intercept bench --json docs/performance.json --markdown docs/performance.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
