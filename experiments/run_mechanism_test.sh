#!/usr/bin/env bash
# Run the mechanism test end to end: checks, the experiment, the statistical analysis.
#
#   ./experiments/run_mechanism_test.sh [--accept-underpowered] [--reuse-jobs-from RUN] [CONFIG]
#                                                     (default: experiments/mechanism_test_config.yaml)
#
# 1. checks up front, each with what to do: gradience importable; the power plan
#    (`gradience mechanism power`): when a primary threshold is not detectable at the config's
#    seeds the script stops (exit 4) unless --accept-underpowered is given or the config sets
#    hypothesis.accept_underpowered: true; a CUDA GPU where the config needs one; the base
#    model reachable (Hugging Face login / cache / HF_HUB_OFFLINE);
# 2. `gradience mechanism run --config CONFIG` (rerunning resumes: finished jobs are kept;
#    --reuse-jobs-from RUN also starts from another run's finished jobs, e.g. a copy without
#    weights made by experiments/carry_jobs.py);
# 3. `python experiments/analyze_mechanism_test.py RUN/aggregated_results.json`.
# Uses .venv/bin/python when a .venv exists here, else python3 from PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

ACCEPT_UNDERPOWERED=0
CONFIG=""
REUSE=()
USAGE="usage: $0 [--accept-underpowered] [--reuse-jobs-from RUN] [CONFIG]"
while [[ $# -gt 0 ]]; do
  case $1 in
    --accept-underpowered) ACCEPT_UNDERPOWERED=1 ;;
    --reuse-jobs-from)
      [[ $# -ge 2 ]] || { printf 'error: --reuse-jobs-from needs a folder (%s)\n' "$USAGE" >&2; exit 2; }
      REUSE=(--reuse-jobs-from "$2"); shift ;;
    -*) printf 'error: unknown option %s (%s)\n' "$1" "$USAGE" >&2; exit 2 ;;
    *) [[ -z "$CONFIG" ]] || { printf 'error: more than one CONFIG given\n' >&2; exit 2; }; CONFIG="$1" ;;
  esac
  shift
done
CONFIG="${CONFIG:-experiments/mechanism_test_config.yaml}"
if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON="$(command -v python3 || true)"; fi

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$1" >&2; exit "${2:-1}"; }

[[ -n "$PYTHON" ]] || die "no python3 on PATH and no .venv here: run 'make setup'"
[[ -f "$CONFIG" ]] || die "config not found: $CONFIG"
"$PYTHON" -c "import gradience" 2>/dev/null \
  || die "gradience is not importable with $PYTHON: run 'make setup' (or: pip install -e '.[hf,bench]')"

say "power plan of $CONFIG (before any training)"
set +e
"$PYTHON" -m gradience mechanism power --config "$CONFIG" --require-detectable
status=$?
set -e
case $status in
  0) ;;
  3)
    if [[ $ACCEPT_UNDERPOWERED -eq 1 ]]; then
      say "underpowered (see above), accepted by --accept-underpowered: training anyway"
    else
      die "underpowered: a primary threshold is not detectable at the config's seeds (see above), so not training; add seeds to train.seeds (the plan says how many), or rerun with --accept-underpowered (or set hypothesis.accept_underpowered: true) to train anyway" 4
    fi ;;
  2) die "fix the config above and rerun" 2 ;;
  *) die "the power plan failed (exit code $status, see above)" 3 ;;
esac

say "checking $CONFIG"
set +e
RUN_DIR="$("$PYTHON" -m gradience.experiment.preflight "$CONFIG")"
status=$?
set -e
case $status in
  0) ;;
  2) die "fix the config above and rerun" 2 ;;
  *) die "a check above failed; fix it and rerun (finished jobs of an earlier run are kept)" 3 ;;
esac

checks_s=$SECONDS
say "running the experiment into $RUN_DIR"
set +e
# --no-estimate: the checks above have just printed the memory and disk estimate
"$PYTHON" -m gradience mechanism run --config "$CONFIG" --no-estimate "${REUSE[@]}"
run_status=$?
set -e
[[ -f "$RUN_DIR/aggregated_results.json" ]] || die "no results written (exit code $run_status)" "$run_status"
if [[ $run_status -ne 0 ]]; then
  say "some jobs failed or a seed was gated (see above); analysing what finished"
fi
say "time so far: checks ${checks_s} s, experiment $((SECONDS - checks_s)) s (where it went: $PYTHON benchmarks/demo_time.py $RUN_DIR)"
say "status of every job: $PYTHON -m gradience mechanism status $RUN_DIR"

say "analysing $RUN_DIR/aggregated_results.json"
# Ends with the verdict in one sentence, the table of variants and the report's path.
"$PYTHON" experiments/analyze_mechanism_test.py "$RUN_DIR/aggregated_results.json"
exit "$run_status"
