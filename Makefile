# One command to set up, one to test, one to see it work.
#   make demo   installs, then runs the mechanism test on the embedded CPU default (offline)
#   make test   installs, then runs the whole test suite
# Users with a GPU: make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu124"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.gradience-installed

.PHONY: setup test demo lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, so that no later package pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(BIN)/python -m pip install -q -e ".[hf,bench,dev]"
	touch $(STAMP)

test: setup
	$(BIN)/ruff check gradience tests benchmarks experiments
	$(BIN)/python -m pytest -q tests

demo: setup
	./experiments/run_mechanism_test.sh experiments/configs/cpu_demo.yaml

lint: setup
	$(BIN)/ruff check gradience tests benchmarks experiments
	$(BIN)/ruff format --check gradience tests benchmarks experiments

bench: setup
	$(BIN)/python benchmarks/audit_speed.py
	$(BIN)/python benchmarks/eval_speed.py
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/callback_overhead.py
	$(BIN)/python benchmarks/compress_speed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
