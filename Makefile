# megatron-soda: `make demo` runs the main job end to end on the shipped corpus; `make test` runs the tests.
# Both create (or reuse) a virtual environment in $(VENV) and install the project with its C++ extension.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet --disable-pip-version-check
# The CPU wheel on these machines; on a GPU machine with torch already installed the venv sees
# that torch instead (VENV_FLAGS below) and nothing is installed over it.
TORCH_SPEC ?= torch==2.13.0
VENV_FLAGS ?= $(shell $(PYTHON) -c "import torch" >/dev/null 2>&1 && echo --system-site-packages)
PYTEST_ARGS ?=
# Two pytest-xdist workers: the suite's tests wait on many subprocesses, so two keep both cores busy.
# A module's tests (and the SLURM cluster's) stay on one worker, longest first (tests/conftest.py).
TEST_WORKERS ?= -n 2

.PHONY: help install lint format test demo isoflop-demo bench slurm clean

help:
	@echo "make demo     tokenizer, preprocess the shipped corpus, pack, blend, detokenize, train, export, generate, evaluate (CPU, ~2 min)"
	@echo "make isoflop-demo  an IsoFLOP scaling study on the shipped corpus: plan, launch, collect, fit, plot (CPU)"
	@echo "make test     check formatting and lint (ruff), then run the test suite (creates $(VENV) first)"
	@echo "make format   format the tree and apply safe lint fixes (ruff)"
	@echo "make bench    run bench/bench_builder.py and record results in bench/RESULTS.md"
	@echo "make install  only create $(VENV) and install megatron-soda into it (editable)"
	@echo "make slurm    install Debian's slurm-wlm and munge (root) for the tests that start a real SLURM cluster"
	@echo "make clean    remove build products and demo output (keeps $(VENV))"

$(PY):
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)

$(VENV)/.installed: $(PY) setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h)
	@$(PY) -c "import torch" >/dev/null 2>&1 || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install "setuptools>=64" "pybind11>=2.12" wheel
	$(PIP) install --no-build-isolation -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest $(TEST_WORKERS) $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo.py --output-dir demo_out

isoflop-demo: install
	$(PY) tools/isoflop.py demo --output-dir demo_out/isoflop

bench: install
	$(PY) bench/bench_builder.py --results bench/RESULTS.md

# The tests start their own single-node cluster from these packages (tests/slurm.py); without them they skip.
slurm:
	@command -v slurmctld >/dev/null && command -v munged >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null)

clean:
	rm -rf build megatron_soda/_C*.so demo_out .pytest_cache $(VENV)/.installed
