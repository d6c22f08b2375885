# Two commands a new machine needs: `make test` and `make demo`. Both install first
# (a venv in .venv, idempotent: reinstalls only when pyproject.toml or constraints.txt changes;
# constraints.txt pins every package to the versions the tests last passed with).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= $(wildcard ../shared/data/animals15)
PYTEST_ARGS ?=

.PHONY: install test test-fast demo clean

include mk/jobs.mk

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# The multi-node tests start their own autoscaling Ray: a pytest process of their own.
test: install
	$(PY) -m pytest -q -m "not multinode" $(PYTEST_ARGS)
	$(PY) -m pytest -q -m multinode $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: install
	$(PY) ray_jobs/demo.py --data "$(DATA)" $(DEMO_ARGS)

clean:
	rm -rf runs .pytest_cache
