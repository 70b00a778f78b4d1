# The two commands a newcomer runs: `make demo` and `make test`.
# Both create .venv from scratch when it is missing, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.llcv-installed

.PHONY: install demo test test-all bench docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/llcv demo

# One pytest worker per core (pytest-xdist): the tests pin torch to one thread each, so on
# 2 cores two workers halve the suite's time. worksteal: idle workers take queued tests, so one
# slow file does not hold the run up.
test: $(STAMP)
	$(PY) -m pytest -n auto --dist worksteal --durations=15

# The default tier plus the heavier checks marked `slow` (full-size known cases, Ray scopes,
# kill -9 of device workers, the calibration's end-to-end recoveries).
test-all: $(STAMP)
	$(PY) -m pytest -n auto --dist worksteal -m "not gpu" --durations=15

bench: $(STAMP)
	$(PY) -m benchmarks

# docs/cli.md is generated from the Typer app; tests/test_docs.py fails when it is stale.
docs: $(STAMP)
	$(VENV)/bin/typer llcv.cli utils docs --name llcv --output docs/cli.md

clean:
	rm -rf $(VENV) results .pytest_cache
