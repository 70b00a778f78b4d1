# The two commands a newcomer runs: `make demo` and `make test`.
# Both create .venv from scratch when it is missing, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.llcv-installed

.PHONY: install demo test bench clean

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

clean:
	rm -rf $(VENV) results .pytest_cache
