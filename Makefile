# Two commands do all the set-up: `make demo` and `make test`.
# The virtualenv is created on first use. `make test` installs every extra and,
# when missing, Debian's Prometheus, nginx (the gate benchmark's reference
# proxy), chromium (the upload page's browser test), gcc and Python's headers
# (mypyc compiles the simulator's engine with them). `make demo` needs less: the
# extras the local cluster and its plot use, and Prometheus; a virtualenv that
# `make test` installed serves it as it is.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= test,local-cluster,plot,inspect,model-server,uvloop
# No torch, transformers or test tools: the demo's pods run the fake model.
DEMO_EXTRAS ?= local-cluster,plot,uvloop
DEMO_STAMP  := $(VENV)/.installed-demo
# Pinned and installed first: an unpinned torch resolves to the newest build
# with gigabytes of CUDA packages; this one is the CPU build.
TORCH_SPEC ?= torch==2.13.0
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
OPERATOR_IMAGE     ?= ghcr.io/vlm-operator/vlm-operator:$(VERSION)
MODEL_SERVER_IMAGE ?= ghcr.io/vlm-operator/model-server:$(VERSION)

.PHONY: help venv demo-venv system-deps demo-system-deps debian-packages test lint typecheck unit demo crd install-manifest golden engine bench-gate bench-policy bench-operator image-operator image-model-server clean

help:
	@echo "make demo   - run the closed loop on the embedded local cluster"
	@echo "make test   - lint, type-check and run every test"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet '$(TORCH_SPEC)'
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

venv: $(STAMP)

# The demo's subset. A full install newer than pyproject.toml already holds it.
$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then :; else \
		$(BIN)/pip install --quiet --upgrade pip && \
		$(BIN)/pip install --quiet -e '.[$(DEMO_EXTRAS)]'; fi
	touch $(DEMO_STAMP)

demo-venv: $(DEMO_STAMP)

# Debian packages the tests run for real...
system-deps:
	@$(MAKE) --no-print-directory debian-packages DEBIAN_PACKAGES="prometheus nginx chromium gcc python3-dev"

# ...and those the demo does.
demo-system-deps:
	@$(MAKE) --no-print-directory debian-packages DEBIAN_PACKAGES="prometheus"

# Each package is checked by the command it installs (python3-dev: Python.h).
debian-packages:
	@missing=""; \
	for package in $(DEBIAN_PACKAGES); do \
		case $$package in \
		python3-dev) $(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
			|| missing="$$missing $$package";; \
		*) command -v $$package >/dev/null 2>&1 || missing="$$missing $$package";; \
		esac; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends $$missing; \
	fi

lint: venv
	$(BIN)/ruff check operator tests e2e benchmarks
	$(BIN)/ruff format --check operator tests e2e benchmarks

typecheck: venv
	$(BIN)/mypy --strict

# The simulator's engine compiled with mypyc (about 30 s; nothing to do when the
# build matches the sources). Without it the engine runs interpreted, slower.
engine: venv system-deps
	$(BIN)/python -c 'import sys; from vlm_operator.simulator._compiled import main; sys.exit(main())'

# VLM_OPERATOR_EXPECT_COMPILED_ENGINE: the test that compares the compiled
# engine with the interpreted one fails, instead of skipping, without a build.
unit: venv system-deps engine
	VLM_OPERATOR_EXPECT_COMPILED_ENGINE=1 $(BIN)/pytest

test: lint typecheck unit

# The measured load test replayed on the embedded local cluster (about six minutes).
demo: demo-venv demo-system-deps
	$(BIN)/python -m e2e.demo $(DEMO_ARGS)

crd: venv
	$(BIN)/vlm-operator crd > crds/vlmservice.yaml
	cp crds/vlmservice.yaml charts/vlm-operator/crds/vlmservice.yaml

# The plain install (kubectl apply -f manifests/install.yaml): the chart with default values.
install-manifest: crd
	$(BIN)/python -m e2e.cluster.chart > manifests/install.yaml

golden: venv
	$(BIN)/pytest tests/test_render.py --update-golden

# Gate overhead: direct vs through the gate vs through nginx (docs/benchmarks.md).
bench-gate: venv system-deps
	$(BIN)/python benchmarks/bench_gate.py

# Ours versus the anchors on every shipped trace, in the simulator (six to ten minutes).
bench-policy: venv engine
	$(BIN)/python benchmarks/bench_policy.py

# The operator with 1,000 VLMServices against the emulated API and a real Prometheus (~2 min).
bench-operator: venv system-deps
	$(BIN)/python benchmarks/bench_operator.py

# Container images; they need a Docker engine (docker info must answer).
image-operator:
	@docker info >/dev/null 2>&1 || { echo "image-operator: no Docker engine answers (docker info); cannot build $(OPERATOR_IMAGE)" >&2; exit 1; }
	docker build -f docker/operator.Dockerfile -t $(OPERATOR_IMAGE) .

image-model-server:
	@docker info >/dev/null 2>&1 || { echo "image-model-server: no Docker engine answers (docker info); cannot build $(MODEL_SERVER_IMAGE)" >&2; exit 1; }
	docker build -f docker/model-server.Dockerfile --build-arg TORCH_SPEC='$(TORCH_SPEC)' -t $(MODEL_SERVER_IMAGE) .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache operator/vlm_operator/simulator/_native
