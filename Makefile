# Two commands on a fresh machine: `make demo` and `make test` (each creates ./.venv if missing).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo docs-figures ship-demo-weights test test-all clean-cache

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $(VENV)/.installed

setup: $(VENV)/.installed

demo: setup
	$(PY) -m analysis.classify

# The README's and docs/table2.md's demo tables, from the demo's own output (analysis/demo/docs.py), and the
# naturalness report's numbers and figure (README, docs/prior.md) from its --quick run (analysis/naturalness/docs.py),
# and the h-space study's and probe's tables and figures (README, docs/hspace.md; analysis/hspace/docs.py).
docs-figures: setup
	$(PY) -m analysis.classify --out runs/demo-table2
	$(PY) -m analysis.demo.docs runs/demo-table2
	$(PY) -m analysis.naturalness --quick --out runs/naturalness-quick
	$(PY) -m analysis.naturalness.docs runs/naturalness-quick
	$(PY) -m analysis.hspace --quick --out runs/hspace-quick
	$(PY) -m analysis.hprobe --quick --out runs/hprobe-quick
	$(PY) -m analysis.hspace.docs runs/hspace-quick runs/hprobe-quick

# Retrain the demo's classifiers and restorers from scratch and rewrite analysis/demo/weights/ (tens of minutes).
ship-demo-weights: setup
	$(PY) -m analysis.demo.ship --cache runs/demo-ship

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m ''

# The generated data (mini-CUB, the demo's networks and sets): $DIFFLOSS_CACHE, default ~/.cache/diffloss-toolkit.
clean-cache:
	rm -rf "$${DIFFLOSS_CACHE:-$$HOME/.cache/diffloss-toolkit}"
