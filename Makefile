# The two commands of the README, on a fresh machine with Python 3.11 and pip:
#   make demo   sets up .venv and runs the main job
#   make test   sets up .venv and runs the test suite
# On a machine that already has torch and triton and no network (the GPU machine), use what is
# there:  make test PYTHON=python3   (installs only this package, --no-deps).

BOOT_PYTHON ?= python3
VENV ?= .venv
ifdef PYTHON
PY := $(PYTHON)
STAMP := build/.installed-system
else
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
endif
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cuda/*.cu)
PYTEST_ARGS ?= -q

.PHONY: setup demo test bench bench-gpu lint info clean

setup: $(STAMP)

# torch only if missing: `torch==2.13.0` resolves to the local CPU wheel on the dev/CI machines.
$(VENV)/.installed: $(SOURCES)
	test -x $(VENV)/bin/python || $(BOOT_PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install numpy "triton>=3.6" pybind11 ninja "setuptools>=64" wheel \
		pytest pytest-benchmark hypothesis networkx scikit-learn scipy mnist1d matplotlib tqdm \
		torch-pruning optuna statsmodels pyyaml psycopg2-binary ripser
	test -d build/triton-3.6/triton || $(PY) -m pip install -q --no-deps --target build/triton-3.6 \
		triton==3.6.0 || echo "Triton 3.6 not installed: test_sm90_compile skips its 3.6 checks"
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

build/.installed-system: $(SOURCES)
	mkdir -p build
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

# the main job, short version (under 3 minutes on 2 cores): `morpho compare --quick`;
# the full table of the README: OMP_NUM_THREADS=1 $(PY) -m morphonet.cli compare  (writes results/compare/, ~43 min)
demo: setup
	$(PY) -m morphonet.cli compare --quick --out build/compare-quick

test: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests

info: setup
	$(PY) -m morpho_kernels.info

bench: setup
	$(PY) bench/bench_masked_linear.py
	$(PY) bench/bench_block_sparse.py
	$(PY) bench/bench_ext.py

bench-gpu: setup
	$(PY) bench/bench_masked_linear.py --device cuda
	$(PY) bench/bench_block_sparse.py --device cuda
	$(PY) bench/bench_ext.py --device cuda

lint: setup
	$(PY) -m pip install -q ruff
	$(PY) -m ruff check .

clean:
	rm -rf build *.egg-info morpho_kernels/_C*.so morpho_kernels/_build_info.json
