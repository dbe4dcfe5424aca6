# Two entry points, each installing what it needs into .venv on first use:
#   make demo   the main job: train a small H-Deformable-DETR on a built-in dense synthetic
#               COCO-format set, one-to-one and with the hybrid branch, 3 seeds in parallel;
#               prints an AP table (mean, min-max) and writes outputs/demo/demo_ap.png
#   make test   the test suite
# TORCH picks the torch build; the default is the CPU wheel this project is tested with.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo match-demo test bench docs clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,coco,examples]"
	touch $@

$(BIN)/.docs-installed: $(BIN)/.installed
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python -m examples.detection.main_job

match-demo: $(BIN)/.installed
	$(BIN)/python examples/demo.py

test: $(BIN)/.installed
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/solvers.py

docs: $(BIN)/.docs-installed
	$(BIN)/sphinx-build -W -b html docs docs/_build/html

clean:
	rm -rf $(VENV) docs/_build build *.egg-info
