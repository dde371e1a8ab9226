# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all venv clean

venv: $(VENV)/.installed

# torch is installed first and pinned: the CPU build (2.13.0) lies on local disk here,
# and nothing after it may pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

## Build the tiny preset, turn real photographs (skimage.data) into WAVs, print timings.
demo: venv
	$(PY) -m img2music.export.demo --out out/demo

## Lint (pyflakes + import order, pyproject's [tool.ruff]) and the test suite without the
## tests marked slow (what CI runs: ~15 min on 2 cores).
test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra --durations=30 -m "not slow"

## Everything, the slow tests included (~25 min on 2 cores).
test-all: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra --durations=30

clean:
	rm -rf $(VENV) out
