# One-command set-up: every target creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo

.PHONY: demo test bench lint clean browser real-scans default-model

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned here and in pyproject: a range would make pip fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aidnet demo --out $(DEMO_OUT)

# The report test renders report.html in Debian's chromium; install it when we can (root + apt).
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the report's browser test"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else \
	    echo "note: chromium is missing and cannot be installed here (needs root and apt-get);" \
	      "the report's browser test will be skipped" >&2; \
	  fi; \
	fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# Two real chest CTs (pyradiomics 3.0.1 sdist) into $AIDNET_REAL_SCANS or .cache/real-scans for
# tests/test_real_scans.py; standard library only. aidnet itself never downloads anything.
real-scans: | $(BIN)/python
	$(BIN)/python -m benchmarks.real_scans

# The shipped default model (src/aidnet/weights/default.pt): phantom, train with
# src/aidnet/weights/recipe.yaml, evaluate on held-out subjects, copy; see docs/model-card.md.
default-model: $(STAMP)
	$(BIN)/python -m benchmarks.default_model --out runs/default-model --ship

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --out benchmarks/results

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache
