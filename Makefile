# MedWB: `make run` (main job on the demo model) and `make test` (the test suite).
# Both create what is missing first (two virtual environments, Jupyter kernels) and reuse
# what is there: each env is rebuilt only when its requirements file changes.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENVS := .venvs
MAIN := $(VENVS)/main
BIGDL := $(VENVS)/bigdl
# torch pinned by constraint for every install (anything else pulls a multi-GB CUDA build).
PIP := pip install --disable-pip-version-check -q -c requirements/constraints.txt
# This machine's pip config lists local index folders that may not exist; hide that noise.
QUIET := grep -v "is ignored: it is neither a file nor a directory" || true
PYTEST_ARGS ?=

.PHONY: setup run test demo-model lab clean-envs
.DEFAULT_GOAL := run

setup: $(MAIN)/.medwb-ready $(BIGDL)/.medwb-ready

$(MAIN)/.medwb-ready: requirements/main.txt requirements/constraints.txt pyproject.toml
	@echo "== main environment ($(MAIN)): OpenVINO stack, Jupyter, papermill"
	test -x $(MAIN)/bin/python || $(PYTHON) -m venv $(MAIN)
	$(MAIN)/bin/$(PIP) -r requirements/main.txt 2>&1 | $(QUIET)
	@# optimum-intel declares torchvision, but the registry's build is CUDA-only and breaks
	@# transformers' model imports next to CPU torch; it is only needed for vision models.
	$(MAIN)/bin/pip uninstall -y -q torchvision 2>&1 | $(QUIET)
	$(MAIN)/bin/$(PIP) --no-deps -e . 2>&1 | $(QUIET)
	$(MAIN)/bin/python -m ipykernel install --prefix $(abspath $(MAIN)) --name medwb-main \
	    --display-name "MedWB main (OpenVINO)" > /dev/null
	touch $@

$(BIGDL)/.medwb-ready: requirements/bigdl.txt requirements/constraints.txt pyproject.toml $(MAIN)/.medwb-ready
	@echo "== bigdl environment ($(BIGDL)): bigdl-llm 2.4.0 on transformers 4.31"
	test -x $(BIGDL)/bin/python || $(PYTHON) -m venv $(BIGDL)
	$(BIGDL)/bin/$(PIP) -r requirements/bigdl.txt 2>&1 | $(QUIET)
	$(BIGDL)/bin/pip uninstall -y -q torchvision 2>&1 | $(QUIET)
	$(BIGDL)/bin/$(PIP) --no-deps -e . 2>&1 | $(QUIET)
	@# Registered in the main env, where its Jupyter and papermill look for kernels.
	$(BIGDL)/bin/python -m ipykernel install --prefix $(abspath $(MAIN)) --name medwb-bigdl \
	    --display-name "MedWB bigdl (BigDL-LLM)" > /dev/null
	touch $@

run: setup
	$(MAIN)/bin/medwb run

test: setup
	$(MAIN)/bin/python -m pytest $(PYTEST_ARGS)

demo-model: $(MAIN)/.medwb-ready
	$(MAIN)/bin/medwb demo-model

lab: setup
	$(MAIN)/bin/jupyter lab notebooks/

clean-envs:
	rm -rf $(VENVS)
