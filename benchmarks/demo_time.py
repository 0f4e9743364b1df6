"""Where the time of a mechanism-test run goes, and how much of each job is not training.

    python benchmarks/demo_time.py [RUN_DIR]

Without RUN_DIR, runs ``experiments/configs/cpu_demo.yaml`` (what ``make demo`` runs) into a
temporary folder first, timing the whole command. Then, from every train+eval job's own
records (``job.json``, ``train_result.json``, ``eval.json`` and the probe's ``base/`` and
``gate/`` evaluations):

* training loop: the time inside ``trainer.train()`` (``train_loop_s``);
* training set-up: the rest of the training call: model load (or borrow), tokenisation,
  LoRA construction, Trainer set-up, saving the adapter;
* evaluation: generation and scoring of the eval items (and the probe's gate and base-model
  evaluations);
* other: the rest of each job (records, digests, releasing the model).

Truncated variants (the probe cut by SVD, evaluated without training) are counted apart.
The ratio is "per-run overhead outside trainer.train()" = (set-up + other) / training loop,
over the trained jobs, both measured in the same run. Goal (issue 11): ≤ 10%. The last line
is the headline; the exit status is 1 when the goal is missed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.10


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def job_times(folder: Path) -> dict[str, float] | None:
    job, train, evaluation = (
        _json(folder / n) for n in ("job.json", "train_result.json", "eval.json")
    )
    if job.get("status") != "done" or not evaluation:
        return None
    extra_evals = sum(
        _json(folder / sub / "eval.json").get("wall_time_s", 0.0) for sub in ("base", "gate")
    )
    total = job["wall_time_s"]
    loop = train.get("train_loop_s") or 0.0
    setup = (train.get("wall_time_s") or 0.0) - loop if train else 0.0
    evals = evaluation["wall_time_s"] + extra_evals
    return {
        "total": total,
        "loop": loop,
        "setup": setup,
        "eval": evals,
        "other": total - loop - setup - evals,
        "truncated": float(not train.get("train_loop_s")),
    }


def main(argv: list[str]) -> int:
    command_s = None
    if argv:
        run_dir = Path(argv[0])
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="gradience-demo-time-")) / "run"
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "gradience",
                "mechanism",
                "run",
                "--config",
                str(REPO / "experiments" / "configs" / "cpu_demo.yaml"),
                "--output",
                str(run_dir),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        command_s = time.perf_counter() - started
    jobs = {
        folder.relative_to(run_dir).as_posix(): times
        for folder in sorted(run_dir.glob("seed_*/*"))
        if folder.is_dir() and (times := job_times(folder)) is not None
    }
    if not jobs:
        print(f"no finished train+eval job under {run_dir}")
        return 1
    trained = [t for t in jobs.values() if not t["truncated"]]
    truncated = [t for t in jobs.values() if t["truncated"]]
    total = {k: sum(t[k] for t in trained) for k in ("total", "loop", "setup", "eval", "other")}
    print(f"run folder: {run_dir}")
    if command_s is not None:
        print(f"whole command (process start, data, every job, aggregation): {command_s:.1f} s")
    print(
        f"{len(trained)} trained jobs, {sum(t['total'] for t in jobs.values()):.1f} job-seconds in all:"
    )
    for key, label in (
        ("loop", "training loop (trainer.train)"),
        ("setup", "training set-up"),
        ("eval", "evaluation"),
        ("other", "other"),
    ):
        print(f"  {label:<30} {total[key]:8.1f} s  {total[key] / total['total']:6.1%}")
    if truncated:
        print(
            f"{len(truncated)} truncated (evaluation-only) jobs: {sum(t['total'] for t in truncated):.1f} s"
        )
    overhead = (total["setup"] + total["other"]) / total["loop"] if total["loop"] else float("inf")
    ok = overhead <= GOAL
    print(
        f"per-run overhead outside trainer.train(): {overhead:.1%} of the training loop "
        f"(goal <= {GOAL:.0%}): {'met' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
