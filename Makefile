# The two commands a newcomer runs: `make demo` and `make test`.
# Both create .venv from scratch when it is missing, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.llcv-installed

.PHONY: install demo test bench docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/llcv demo

test: $(STAMP)
	$(PY) -m pytest --durations=15

bench: $(STAMP)
	$(PY) -m benchmarks

# docs/cli.md is generated from the Typer app; tests/test_docs.py fails when it is stale.
docs: $(STAMP)
	$(VENV)/bin/typer llcv.cli utils docs --name llcv --output docs/cli.md

clean:
	rm -rf $(VENV) results .pytest_cache
