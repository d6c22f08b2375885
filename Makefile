# Two commands a new machine needs: `make test` and `make demo`. Both install first
# (a venv in .venv, idempotent: reinstalls only when pyproject.toml or constraints.txt changes;
# constraints.txt pins every package to the versions the tests last passed with).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= $(wildcard ../shared/data/animals15)
PYTEST_ARGS ?=
DURATIONS ?= --durations=30  # the slowest tests, printed after the suite: where its time goes

.PHONY: install test test-fast demo clean

include mk/jobs.mk

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# The multi-node tests start their own autoscaling Ray: a pytest process of their own, run alongside
# the others (the suite leaves about a third of the CPUs idle: docs/testing.md); its output follows.
MULTINODE_LOG ?= .pytest_cache/multinode.log
test: install
	@mkdir -p $(dir $(MULTINODE_LOG))
	@$(PY) -m pytest -q -m multinode $(PYTEST_ARGS) > $(MULTINODE_LOG) 2>&1 & mn=$$!; \
	$(PY) -m pytest -q -m "not multinode" $(DURATIONS) $(PYTEST_ARGS); rc=$$?; \
	wait $$mn; mrc=$$?; echo "== the multi-node tests (tests/test_multinode.py, their own pytest process) =="; \
	cat $(MULTINODE_LOG); test $$rc = 0 && test $$mrc = 0

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: install
	$(PY) ray_jobs/demo.py --data "$(DATA)" $(DEMO_ARGS)

clean:
	rm -rf runs .pytest_cache
