# The two commands: `make run` (the retraining flow, end to end) and `make test` (the test suite).
# Both create .venv if missing and install everything the project needs.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# onnxruntime and onnxruntime-gpu share one module folder: install exactly one of them.
ORT_EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.installed-$(ORT_EXTRA)
# The real data sets beside the checkout, unless the caller points elsewhere.
export MEDIMG_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
PYTEST_ARGS ?=

.PHONY: run test test-quick lint install clean-workspace

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(PY)
	# torch and torchvision first, in one call: they come from this machine's disk
	$(PY) -m pip install --disable-pip-version-check -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e ".[$(ORT_EXTRA),dev]"
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(VENV)/bin/medimg run

test: $(STAMP)
	@# The integration tests need the real servers: started here (and stopped after) unless the
	@# caller already exported MEDIMG_TEST_PREFECT_API_URL (as .ci/run does, or `eval "$$(scripts/services.sh env)"`).
	scripts/system_packages.sh
	if [ -z "$${MEDIMG_TEST_PREFECT_API_URL:-}" ]; then \
	  trap 'scripts/services.sh stop' EXIT; \
	  scripts/services.sh start && eval "$$(scripts/services.sh env)" || exit 1; \
	fi; \
	$(PY) -m pytest $(PYTEST_ARGS)

test-quick: $(STAMP)
	scripts/system_packages.sh
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

# ruff (lint and format check) over the code and tests, mypy over medimg/ (settings in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean-workspace:
	rm -rf .medimg
