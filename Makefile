# Two commands on a fresh machine: `make demo` and `make test` (each creates ./.venv if missing).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-all clean-cache

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $(VENV)/.installed

setup: $(VENV)/.installed

demo: setup
	$(PY) -m analysis.classify

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m ''

clean-cache:
	rm -rf .cache
