# MedWB: `make run` (main job on the demo model) and `make test` (the test suite).
# Both create what is missing first (two virtual environments, Jupyter kernels) and reuse
# what is there: each env is rebuilt only when its requirements file changes.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENVS := .venvs
MAIN := $(VENVS)/main
BIGDL := $(VENVS)/bigdl
IPEX := $(VENVS)/ipex
LLAMACPP := $(VENVS)/llamacpp
# Exact, hashed package sets (requirements/*.lock, compiled from requirements/*.txt by
# `make lock`): a rerun next year installs the same versions, and a tampered or different
# file fails its hash. torch is the CPU build (see requirements/constraints.txt);
# torchvision is left out of the locks: the registry's build is CUDA-only and breaks
# transformers' model imports next to CPU torch (optimum-intel declares it for vision models).
PIP := pip install --disable-pip-version-check -q
# This machine's pip config lists local index folders that may not exist; hide that noise
# (grep finding nothing is fine; pip's own failure still stops make, through pipefail).
QUIET := { grep -v "is ignored: it is neither a file nor a directory" || true; }
PYTEST_ARGS ?=
# Where a CPU build of torch lies besides the package index (used only by `make lock`).
FIND_LINKS ?= /opt/wheels
UV := $(VENVS)/tools/bin/uv
# Inside an intranet: `make setup WHEELHOUSE=wheelhouse` (also run/test) installs from a
# bundle's wheelhouse (`make bundle` on a connected machine) with no index at all; pip's
# own configuration (index URLs, find-links) is ignored, so nothing else is consulted.
WHEELHOUSE ?=
SOURCE := $(if $(WHEELHOUSE),--no-index --find-links $(abspath $(WHEELHOUSE)))
OFFLINE := $(if $(WHEELHOUSE),PIP_CONFIG_FILE=/dev/null)
BUNDLE_ARGS ?=
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	-c requirements/constraints.txt --no-emit-package torchvision \
	$(if $(wildcard $(FIND_LINKS)),--find-links $(FIND_LINKS))

.PHONY: setup cluster serve run test test-fast lint bytecode app browser demo-model demo-model-rebuild lab clean-envs lock bundle
.DEFAULT_GOAL := run

setup: $(MAIN)/.medwb-ready $(BIGDL)/.medwb-ready $(IPEX)/.medwb-ready $(LLAMACPP)/.medwb-ready

$(MAIN)/.medwb-ready: requirements/main.lock pyproject.toml
	@echo "== main environment ($(MAIN)): OpenVINO stack, Jupyter, papermill$(if $(WHEELHOUSE), (offline from $(WHEELHOUSE)))"
	$(if $(WHEELHOUSE),$(PYTHON) -m medwb.bundle check requirements/main.lock $(WHEELHOUSE))
	test -x $(MAIN)/bin/python || $(PYTHON) -m venv $(MAIN)
	$(OFFLINE) $(MAIN)/bin/$(PIP) $(SOURCE) --require-hashes --no-deps -r requirements/main.lock 2>&1 | $(QUIET)
	$(OFFLINE) $(MAIN)/bin/$(PIP) $(SOURCE) --no-deps $(if $(WHEELHOUSE),--no-build-isolation) -e . 2>&1 | $(QUIET)
	$(MAIN)/bin/python -m ipykernel install --prefix $(abspath $(MAIN)) --name medwb-main \
	    --display-name "MedWB main (OpenVINO)" > /dev/null
	touch $@

$(BIGDL)/.medwb-ready: requirements/bigdl.lock pyproject.toml $(MAIN)/.medwb-ready
	@echo "== bigdl environment ($(BIGDL)): bigdl-llm 2.4.0 on transformers 4.31"
	$(if $(WHEELHOUSE),$(PYTHON) -m medwb.bundle check requirements/bigdl.lock $(WHEELHOUSE))
	test -x $(BIGDL)/bin/python || $(PYTHON) -m venv $(BIGDL)
	$(OFFLINE) $(BIGDL)/bin/$(PIP) $(SOURCE) --require-hashes --no-deps -r requirements/bigdl.lock 2>&1 | $(QUIET)
	$(OFFLINE) $(BIGDL)/bin/$(PIP) $(SOURCE) --no-deps $(if $(WHEELHOUSE),--no-build-isolation) -e . 2>&1 | $(QUIET)
	@# Registered in the main env, where its Jupyter and papermill look for kernels.
	$(BIGDL)/bin/python -m ipykernel install --prefix $(abspath $(MAIN)) --name medwb-bigdl \
	    --display-name "MedWB bigdl (BigDL-LLM)" > /dev/null
	touch $@

# ipex-llm 2.2 (bigdl-llm's successor, archived upstream) on transformers 4.47, for the families
# bigdl-llm's transformers 4.31 cannot load (Qwen2, Llama-3.x, native GLM-4). No Jupyter kernel:
# only the benchmark's probes and the workers run there.
$(IPEX)/.medwb-ready: requirements/ipex.lock pyproject.toml
	@echo "== ipex environment ($(IPEX)): ipex-llm 2.2.0 on transformers 4.47"
	$(if $(WHEELHOUSE),$(PYTHON) -m medwb.bundle check requirements/ipex.lock $(WHEELHOUSE))
	test -x $(IPEX)/bin/python || $(PYTHON) -m venv $(IPEX)
	$(OFFLINE) $(IPEX)/bin/$(PIP) $(SOURCE) --require-hashes --no-deps -r requirements/ipex.lock 2>&1 | $(QUIET)
	$(OFFLINE) $(IPEX)/bin/$(PIP) $(SOURCE) --no-deps $(if $(WHEELHOUSE),--no-build-isolation) -e . 2>&1 | $(QUIET)
	touch $@

# The optional cluster extra (Ray) for `medwb bench/eval --cluster` and `medwb cluster`, into
# the main environment on top of main.lock (same pins for what they share). Not part of
# `make setup` or `make run`: without --cluster nothing imports Ray. `make test` installs it
# for the cluster test. Every server of a cluster needs it (`make setup cluster` there).
cluster: $(MAIN)/.medwb-cluster

$(MAIN)/.medwb-cluster: requirements/cluster.lock $(MAIN)/.medwb-ready
	@echo "== cluster extra (Ray) into $(MAIN)"
	$(if $(WHEELHOUSE),$(PYTHON) -m medwb.bundle check requirements/cluster.lock $(WHEELHOUSE))
	$(OFFLINE) $(MAIN)/bin/$(PIP) $(SOURCE) --require-hashes --no-deps -r requirements/cluster.lock 2>&1 | $(QUIET)
	touch $@

# The OpenAI-compatible endpoint's extra (FastAPI, uvicorn; the official openai client for its
# tests), into the main environment on top of main.lock. `make serve` runs the endpoint on
# configs/app.yaml's models (SERVE_ARGS: more `medwb serve` options); `make test` installs it.
SERVE_ARGS ?=
serve: setup $(MAIN)/.medwb-serve
	$(MAIN)/bin/medwb serve $(SERVE_ARGS)

$(MAIN)/.medwb-serve: requirements/serve.lock $(MAIN)/.medwb-ready
	@echo "== endpoint extra (FastAPI, uvicorn, openai) into $(MAIN)"
	$(if $(WHEELHOUSE),$(PYTHON) -m medwb.bundle check requirements/serve.lock $(WHEELHOUSE))
	$(OFFLINE) $(MAIN)/bin/$(PIP) $(SOURCE) --require-hashes --no-deps -r requirements/serve.lock 2>&1 | $(QUIET)
	touch $@

# llama.cpp, the peer users would pick instead: llama-cpp-python built from source for this
# CPU (a few minutes on 2 cores). A machine that cannot build it records why in
# $(LLAMACPP)/UNAVAILABLE and setup goes on; its benchmark variants become error records.
$(LLAMACPP)/.medwb-ready: requirements/llamacpp.lock pyproject.toml
	@echo "== llama.cpp environment ($(LLAMACPP)): llama-cpp-python built for this CPU"
	$(PYTHON) -m medwb.backends.toolchain.llamacpp_setup $(LLAMACPP) requirements/llamacpp.lock $(WHEELHOUSE)
	touch $@

# On a connected machine: dist/medwb-bundle-<version>/ for an intranet without a package
# index (source, demo model, a wheel for every locked package, SHA256SUMS, INSTALL.md).
# BUNDLE_ARGS="--archive" also writes one .tar.gz. Needs only the system Python and pip.
bundle:
	$(PYTHON) -m medwb.bundle build $(BUNDLE_ARGS)

# Regenerate the lock files after editing requirements/*.txt (needs the package index).
lock: $(UV)
	$(UV) pip compile requirements/main.txt $(LOCK_FLAGS) -o requirements/main.lock
	$(UV) pip compile requirements/bigdl.txt $(LOCK_FLAGS) -o requirements/bigdl.lock
	$(UV) pip compile requirements/ipex.txt $(LOCK_FLAGS) -o requirements/ipex.lock
	$(UV) pip compile requirements/llamacpp.txt $(LOCK_FLAGS) -o requirements/llamacpp.lock
	$(UV) pip compile requirements/cluster.txt $(LOCK_FLAGS) -c requirements/main.lock -o requirements/cluster.lock
	$(UV) pip compile requirements/serve.txt $(LOCK_FLAGS) -c requirements/main.lock -o requirements/serve.lock
	$(UV) pip compile requirements/lint.txt $(LOCK_FLAGS) -o requirements/lint.lock

$(UV):
	test -x $(VENVS)/tools/bin/python || $(PYTHON) -m venv $(VENVS)/tools
	$(VENVS)/tools/bin/$(PIP) uv 2>&1 | $(QUIET)

run: setup bytecode
	$(MAIN)/bin/medwb run

# Tests can run in several processes at once (pytest-xdist; 0: in pytest's own process). Most
# of a test's time is starting interpreters, kernels and conversions on one core, so two
# overlap well on a 2-core machine; tests/conftest.py gives each worker its share of the cores
# for model threads. Modules whose fixtures build something once stay on one worker
# (xdist_group marks, --dist loadgroup).
# Two at a time for the whole suite too: the notebook 04 hang that kept it serial (the copy
# button displayed inside an Output widget context; papermill lost the cell's reply) is mended in
# medwb.apps.core copy, and a clean-clone two-worker suite then ran through: 455 passed in
# 29 min 27 s, AMD EPYC AVX2 only (docs/architecture.md#tests). TEST_WORKERS=0: one at a time.
TEST_WORKERS ?= 2
FAST_WORKERS ?= 2
# A worker that dies (a crash, a hard timeout) ends the run with that test failed: a replaced
# worker under --dist loadgroup waits forever (pytest-xdist), and CI would only see its time limit.
XDIST = --dist loadgroup --max-worker-restart=0

# The whole suite (CI's command): the linter first, then every test.
test: setup browser cluster $(MAIN)/.medwb-serve lint bytecode
	$(MAIN)/bin/python -m pytest -n $(TEST_WORKERS) $(XDIST) $(PYTEST_ARGS)

# The edit loop: every test not marked slow (under 3 minutes on 2 cores once set up).
test-fast: setup lint bytecode
	$(MAIN)/bin/python -m pytest -n $(FAST_WORKERS) $(XDIST) -m "not slow" $(PYTEST_ARGS)

# MedWB's own modules compiled once (under a second; only changed files after that): where
# PYTHONDONTWRITEBYTECODE is set (this machine's image sets it) no process writes them, so
# every probe, worker and kernel compiled them from source again. A stale file is ignored.
bytecode:
	PYTHONDONTWRITEBYTECODE= $(MAIN)/bin/python -m compileall -q -j 0 medwb > /dev/null

# ruff (requirements/lint.lock, hashed) in its own small environment; the rules are in pyproject.toml.
LINT := $(VENVS)/lint
lint: $(LINT)/.medwb-ready
	$(LINT)/bin/ruff check medwb tests

$(LINT)/.medwb-ready: requirements/lint.lock
	test -x $(LINT)/bin/python || $(PYTHON) -m venv $(LINT)
	$(OFFLINE) $(LINT)/bin/$(PIP) $(SOURCE) --require-hashes --no-deps -r requirements/lint.lock 2>&1 | $(QUIET)
	touch $@

# The app's browser test drives Debian's chromium through Playwright (never Playwright's own
# browser download) and screenshots Chinese text (a CJK font). Installed once when missing
# (root, or sudo).
browser:
	@command -v chromium > /dev/null && fc-list 2> /dev/null | grep -qi wqy || { \
	  echo "== Debian packages for the browser test: chromium fonts-wqy-microhei"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    chromium fonts-wqy-microhei > /dev/null; }

# The clinical app as a web page (Voila) at a printed 127.0.0.1 URL with a token; APP=discharge
# for the discharge record. The models come from configs/app.yaml (one process each, shared).
APP ?= diagnosis
app: setup
	$(MAIN)/bin/medwb app $(APP)

demo-model: $(MAIN)/.medwb-ready
	$(MAIN)/bin/medwb demo-model

# Train the demo model from its recipe and ship it (about an hour on 2 cores; commit
# data/demo-model afterwards).
demo-model-rebuild: $(MAIN)/.medwb-ready
	$(MAIN)/bin/medwb demo-model --rebuild --out data/demo-model

lab: setup
	$(MAIN)/bin/jupyter lab notebooks/

clean-envs:
	rm -rf $(VENVS)
