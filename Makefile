# The two commands a newcomer needs:
#   make run    install into .venv, run the whole pipeline on the embedded defaults, then serve
#   make test   install into .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rayrec-installed
CONSTRAINTS := constraints.txt
ARGS ?=

.PHONY: install run test test-faults test-cluster lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[test,lint]"
	touch $(STAMP)

run: install
	$(PY) -m pipelines.main $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

# the serving job under signals: Ray and Serve of its own per case, about 1-2 min each on 2 cores
test-faults: install
	$(PY) -m pytest -p no:cacheprovider tests/faults -o addopts="-ra" $(ARGS)

# ruff (pyflakes, pycodestyle, bugbear, pyupgrade) and mypy: configured in pyproject.toml
lint: install
	$(PY) -m ruff check platform pipelines serve_apps tests
	$(PY) -m mypy

bench: install
	for f in tests/perf/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf artifacts .pytest_cache

# A real two-node Ray cluster on this machine (head + worker raylet, token auth): the README's
# "From laptop to cluster" commands, Train workers and Serve replicas on both nodes, a node lost mid-training.
test-cluster: install
	$(PY) -m pytest -m cluster -s tests/cluster $(ARGS)
