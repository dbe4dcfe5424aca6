# Two entry points, each installing what it needs into .venv on first use:
#   make demo   the main job: train a small H-Deformable-DETR on a built-in dense synthetic
#               COCO-format set, one-to-one and with the hybrid branch, 5 paired seeds;
#               progress lines while it trains, then an AP table (early and end, the paired
#               difference with its 95 % interval) and outputs/demo/demo_ap.png
#   make test   the test suite
# More targets, installing the same way:
#   make pose-demo  the same comparison for the keypoint DETR (examples/pose) on synthetic stick
#               figures; prints a keypoint AP table and writes outputs/pose-demo/pose_ap.png
#   make segmentation-demo   the same comparison for the instance-segmentation example
#               (examples/segmentation): segm AP table, outputs/segmentation-demo/
#   make match-demo, make bench, make docs, make gpu-check (see README.md)
# TORCH picks the torch build; the default is the CPU wheel this project is tested with.
# The install compiles the native solver (CMakeLists.txt, scikit-build-core + nanobind; an
# editable install, rebuilt here when a C++ source changes); HYBRIDMATCH_CUDA=1 in the
# environment builds the CUDA solver too.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo pose-demo segmentation-demo match-demo test bench docs clean gpu-check gpu-wheels

NATIVE_SOURCES := CMakeLists.txt $(wildcard hybridmatch/csrc/*.h hybridmatch/csrc/*/*.h hybridmatch/csrc/*/*.cpp hybridmatch/csrc/*/*.cu)

$(BIN)/.installed: pyproject.toml Makefile $(NATIVE_SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,coco,examples,transformers]"
	touch $@

$(BIN)/.docs-installed: $(BIN)/.installed
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python -m examples.detection.main_job

pose-demo: $(BIN)/.installed
	$(BIN)/python -m examples.pose.main_job

segmentation-demo: $(BIN)/.installed
	$(BIN)/python -m examples.segmentation.main_job

match-demo: $(BIN)/.installed
	$(BIN)/python examples/demo.py

test: $(BIN)/.installed
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/solvers.py

docs: $(BIN)/.docs-installed
	$(BIN)/sphinx-build -W -b html docs docs/_build/html

# The CUDA solver's check on a GPU machine (benchmarks/gpu_check.sh; OUT or gpu-check-out/).
gpu-check:
	benchmarks/gpu_check.sh $(OUT)

# Wheels gpu-check installs on a machine without network (Python 3.12, x86-64), into .whl/:
# the package's build tools (it builds the CUDA solver there) and optional comparisons.
GPU_WHEELS ?= scikit-build-core==1.1.2 nanobind==3.1.0 pathspec==1.1.1 packaging==26.4 cmake==4.4.5 \
	lap==0.5.13 pycocotools==2.0.11 torch-linear-assignment==0.1.0
gpu-wheels:
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $(GPU_WHEELS)

clean:
	rm -rf $(VENV) docs/_build build *.egg-info hybridmatch/_lsap*.so
