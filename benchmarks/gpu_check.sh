#!/usr/bin/env bash
# The GPU path, proven in one command: <= 6 minutes on one H100 or H200, so that it can be
# rerun inside a 15-minute GPU budget.
#
#   benchmarks/gpu_check.sh [OUT.json]                     (default: gpu_check.json)
#   GPU_CHECK_SMOKE=1 benchmarks/gpu_check.sh OUT.json     the same wiring on a CPU, tiny sizes
#
# Python: $GPU_CHECK_PYTHON if set, else .venv/bin/python when this checkout has a .venv,
# else python3 from PATH (a GPU machine may have no package registry: nothing is installed;
# gradience is imported from this checkout). It first checks that torch with CUDA,
# transformers and peft (and what gradience itself needs) import, and otherwise refuses in
# one line naming what is missing (exit 2).
#
# Steps, in order, each under its own time limit (GPU_CHECK_LIMIT_<STEP>=SECONDS overrides
# one, e.g. GPU_CHECK_LIMIT_GENERATION=1; GPU_CHECK_STEPS=mfu,experiment_cost runs a subset,
# the others are recorded as skipped). Expected times on one H100/H200, from the estimates
# of issue 19 (python start + imports of torch/transformers/peft ~10 s in every step):
#
#   step            limit  expected  arithmetic
#   (import check)    20 s     8 s   imports only
#   mfu               55 s    25 s   train_variant on 16 of Mistral-7B's 32 layers (random, built
#                                    on the GPU ~3 s), Trainer set-up ~3 s; 5 warm-up + 20 timed
#                                    steps of ~23 TFLOP at >= 35% of 989 TFLOP/s = ~65 ms each,
#                                    ~2 s, first-step kernel selection ~5 s; adapter save 0.3 GB
#   mfu_flash         40 s    25 s   the same with flash_attention_2 (skipped, 0 s, without
#                                    flash-attn)
#   generation        90 s    70 s   32-layer model built ~5 s; one batch at the auto size for
#                                    500 items (~450 on 80 GB, 500 on 141 GB): 256 steps at
#                                    60-100 ms = 15-26 s; batches 32 and 128: 256 steps at
#                                    40-50 ms = 10-13 s each; one prompt alone 256 x ~35 ms =
#                                    9 s. Its own time box (limit - 10 s) drops the last first.
#   mechanism         50 s    35 s   4 layers of Mistral-7B width saved (2 GB, ~3 s) and loaded;
#                                    probe + per_layer, 20 steps each, 64 eval items x 32 tokens,
#                                    audit: ~20 s
#   vllm_parity       60 s    50 s   2-layer model; HF and vLLM greedy on 32 prompts; the vLLM
#                                    engine's start ~30 s (skipped, 0 s, without vLLM)
#   experiment_cost   25 s    12 s   a 1 GB load test ~2 s, an audit of 2 r=64 layers ~1 s
#   -----------------------------------------------------------------------------------------
#   total            340 s   225 s   worst case: the limits, plus 3 s a step when a step must be
#                                    KILLed after its TERM: 340 + 6 x 3 = 358 s < 6 min
#
# Every step writes its JSON as it goes, even when it fails or is stopped at its limit
# (benchmarks/step_io.py): status ok|failed|timeout|skipped, the reason, its numbers. Later
# steps read what exists (experiment_cost projects from assumptions, and says so, where
# mfu's or generation's numbers are missing). OUT.json has every step's status, wall time,
# limit, last log line and numbers; the exit code is 1 when a step failed or timed out.
#
# GPU_CHECK_SMOKE=1: every step on the CPU (--device cpu) at tiny sizes, CUDA not required;
# the CUDA-only steps (mfu_flash, vllm_parity) are skipped with the reason, every other step
# runs and writes the same JSON keys as on a GPU (the GPU-only numbers as null). Each step's
# limit is then 60 s; the whole takes about a minute (tests/test_gpu_check_smoke.py).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-gpu_check.json}"
[[ "$OUT" == /* ]] || OUT="$PWD/$OUT"  # relative to where it was called from
cd "$ROOT"
SMOKE="${GPU_CHECK_SMOKE:-0}"
if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then PYTHON="$GPU_CHECK_PYTHON"
elif [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python
else PYTHON="$(command -v python3)"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
export TMPDIR="$TMP"  # a step stopped at its limit leaves its temporary model folders here
started=$SECONDS

check_limit=20
[[ "$SMOKE" == 1 ]] && check_limit=60
missing="$(GPU_CHECK_SMOKE="$SMOKE" timeout "$check_limit" "$PYTHON" - 2>/dev/null <<'EOF'
import importlib, importlib.util, os
missing = []
for name in ("torch", "transformers", "peft"):  # imported: a broken install shows here
    try:
        importlib.import_module(name)
    except Exception:
        missing.append(name)
for name in ("accelerate", "safetensors", "tokenizers", "pydantic", "yaml", "numpy", "scipy"):
    if importlib.util.find_spec(name) is None:
        missing.append(name)
if "torch" not in missing and os.environ["GPU_CHECK_SMOKE"] != "1":
    import torch
    if not torch.cuda.is_available():
        missing.insert(0, f"torch with CUDA (torch {torch.__version__} sees no GPU)")
if not missing:
    try:
        importlib.import_module("gradience.config")
    except Exception as error:
        missing.append(f"gradience ({type(error).__name__}: {error})")
print(", ".join(missing) if missing else "none")
EOF
)" || missing="${missing:-python imports (the import check failed or ran past ${check_limit} s)}"
if [[ "$missing" != "none" ]]; then
  echo "gpu_check: refused: missing ${missing:-torch, transformers, peft (python $PYTHON failed)} (python: $PYTHON; GPU_CHECK_SMOKE=1 runs on a CPU)"
  exit 2
fi

STEPS=(mfu mfu_flash generation mechanism vllm_parity experiment_cost)
declare -A LIMIT=([mfu]=55 [mfu_flash]=40 [generation]=90 [mechanism]=50 [vllm_parity]=60 [experiment_cost]=25)
DEVICE=()
[[ "$SMOKE" == 1 ]] && DEVICE=(--device cpu)

limit_of() {  # the step's limit: GPU_CHECK_LIMIT_<STEP>, else 60 s in smoke mode, else LIMIT
  local override="GPU_CHECK_LIMIT_${1^^}" default=${LIMIT[$1]}
  [[ "$SMOKE" == 1 ]] && default=60
  echo "${!override:-$default}"
}

step() {  # step NAME SCRIPT ARGS...
  local name=$1 script=$2
  shift 2
  local limit
  limit=$(limit_of "$name")
  if [[ -n "${GPU_CHECK_STEPS:-}" && ",$GPU_CHECK_STEPS," != *",$name,"* ]]; then
    printf '{"selected": false, "reason": "not selected (GPU_CHECK_STEPS=%s)", "limit_s": %d}\n' \
      "$GPU_CHECK_STEPS" "$limit" >"$TMP/$name.status"
    return
  fi
  printf '==> %s (limit %ss)\n' "$name" "$limit"
  local begun=$SECONDS
  timeout --kill-after=3 "$limit" "$PYTHON" "benchmarks/$script" "${DEVICE[@]}" \
    --json "$TMP/$name.json" "$@" >"$TMP/$name.log" 2>&1
  local code=$?
  printf '{"selected": true, "exit_code": %d, "wall_s": %d, "limit_s": %d}\n' \
    "$code" $((SECONDS - begun)) "$limit" >"$TMP/$name.status"
  grep -v '^\s*$' "$TMP/$name.log" | tail -n 1 | cut -c1-300
}

if [[ "$SMOKE" == 1 ]]; then
  step mfu mfu.py --warmup 1 --steps 2 --batch-size 2
  step mfu_flash mfu.py --attn flash_attention_2 --warmup 1 --steps 2 --batch-size 2
else
  step mfu mfu.py
  step mfu_flash mfu.py --attn flash_attention_2
fi
gen_limit=$(limit_of generation)
step generation generation.py --budget-s $((gen_limit > 20 ? gen_limit - 10 : gen_limit))
if [[ "$SMOKE" == 1 ]]; then
  step mechanism gpu_check.py --eval-items 16 --new-tokens 8
else
  step mechanism gpu_check.py
fi
step vllm_parity vllm_parity.py
if [[ "$SMOKE" == 1 ]]; then
  cost_args=(--load-mb 32 --audit-layers 1)
else
  cost_args=()
fi
step experiment_cost experiment_cost.py --mfu-json "$TMP/mfu.json" \
  --generation-json "$TMP/generation.json" "${cost_args[@]}"

smoke_flag=()
[[ "$SMOKE" == 1 ]] && smoke_flag=(--smoke)
"$PYTHON" benchmarks/gpu_check_report.py "$TMP" "$OUT" "${STEPS[@]}" "${smoke_flag[@]}" \
  --wall-s $((SECONDS - started))
code=$?
echo "numbers: $OUT ($((SECONDS - started)) s)"
if [[ $code -ne 0 ]]; then
  echo "gpu_check: FAIL (a step failed or ran out of time; see $OUT)"
  exit 1
fi
echo "gpu_check: PASS (every step ok, or skipped with its reason; see $OUT)"
