"""What a job costs beyond its work: a local mechanism run with and without gradience.heap.

Runs the tiny test config (the embedded random model, 2 seeds, every variant kind: 18 jobs of a
few training steps, where fixed per-job costs dominate) with full garbage collections walking
every object in the process (the baseline: ``collections_skip_older_objects`` replaced by a
no-op) and with them walking only the objects the jobs made (gradience as it ships). Each
round runs both, in alternating order, into fresh folders; both load the same modules, which
a warm-up run imports first. The ratio is the median over rounds of the paired per-round
ratios (gradience / baseline), and the two runs' result files must be identical (a garbage
collection must not change a number).

Target: gradience's run takes at most 0.8x the baseline's. The last line is a one-line summary
with PASS/FAIL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.8
TINY_CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "tiny_test.yaml"


def timed_run(cfg, folder: Path, skip_older: bool) -> tuple[float, dict]:
    from gradience.experiment import executors, jobs, run_mechanism_test
    from gradience.heap import collections_skip_older_objects

    scope = collections_skip_older_objects if skip_older else contextlib.nullcontext
    # the two places a run enters the scope: around the local run, and around each job
    executors.collections_skip_older_objects = scope
    jobs.train_eval_job = _rewrap(jobs.train_eval_job, scope)
    try:
        started = time.perf_counter()
        run = run_mechanism_test(cfg, folder)
        seconds = time.perf_counter() - started
    finally:
        executors.collections_skip_older_objects = collections_skip_older_objects
        jobs.train_eval_job = _rewrap(jobs.train_eval_job, collections_skip_older_objects)
    if not run.complete:
        sys.exit(f"the run in {folder} did not complete")
    results = json.loads((folder / "aggregated_results.json").read_text())
    return seconds, {name: v["runs"] for name, v in results["variants"].items()}


def _rewrap(job, scope):
    """train_eval_job with its decorator replaced (the undecorated function is __wrapped__)."""
    inner = getattr(job, "__wrapped__", job)
    wrapped = scope()(inner) if scope is not contextlib.nullcontext else inner
    wrapped.__wrapped__ = inner
    return wrapped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds (default 2)")
    args = parser.parse_args(argv)

    import torch

    from gradience.config import load_config

    torch.set_num_threads(1)
    cfg = load_config(TINY_CONFIG)
    cfg.train.save_steps = None
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        timed_run(cfg, root / "warmup", skip_older=True)  # imports, the embedded model
        for index in range(args.repeats):
            order = (True, False) if index % 2 == 0 else (False, True)
            seconds, runs = {}, {}
            for skip_older in order:
                folder = root / f"round{index}-{'gradience' if skip_older else 'baseline'}"
                seconds[skip_older], runs[skip_older] = timed_run(cfg, folder, skip_older)
            if runs[True] != runs[False]:
                print("FAIL: the two runs' results differ")
                return 1
            ratios.append(seconds[True] / seconds[False])
            print(
                f"round {index + 1}: gradience {seconds[True]:.1f} s, "
                f"every-object collections {seconds[False]:.1f} s, ratio {ratios[-1]:.2f}"
            )
    ratio = statistics.median(ratios)
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(
        f"{verdict}: a tiny-config run (18 jobs) takes {ratio:.2f}x the time it takes when every "
        f"garbage collection walks the whole process (target <= {TARGET}x)"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
