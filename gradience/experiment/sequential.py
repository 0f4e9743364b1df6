"""Sequential seeds: run the first ``min_seeds`` seeds, then one more at a time, until every
primary contrast is decided or ``max_seeds`` is reached (``mechanism run --until-decided``).

Each step is an ordinary :func:`gradience.experiment.run_mechanism_test` on the first n seeds
of ``train.seeds`` (finished jobs are reused, so a killed sequential run simply continues at
the next seed when rerun; a step adds ``env.workers`` seeds on the local executor, see
:func:`seeds_per_step`), followed by a look at every seed: the group-sequential rule of
:mod:`gradience.stats.sequential`, replayed on the aggregated results exactly as the analysis
replays it, decides whether to go on. The boundaries depend on ``max_seeds``, so it is fixed
in the config (and the registered plan) before the first seed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradience.config import ExperimentConfig
from gradience.errors import GradienceError
from gradience.experiment.jobs import EventSink, emit
from gradience.experiment.parallel import shared_workers
from gradience.experiment.pipeline import MechanismRun, run_mechanism_test


def sequential_config(cfg: ExperimentConfig, max_seeds: int | None) -> ExperimentConfig:
    """``cfg`` with the sequential rule on and its cap fixed (``max_seeds``, else the config's,
    else every seed of train.seeds); raises GradienceError when the seeds cannot cover it."""
    cfg = cfg.model_copy(deep=True)
    hypothesis = cfg.hypothesis
    hypothesis.until_decided = True
    cap = max_seeds or hypothesis.max_seeds or len(cfg.train.seeds)
    if cap > len(cfg.train.seeds):
        raise GradienceError(
            f"max seeds {cap} but train.seeds lists {len(cfg.train.seeds)}: list the seeds the "
            "run may add, in the order it should add them",
            field="--max-seeds / hypothesis.max_seeds",
        )
    if cap < hypothesis.min_seeds:
        raise GradienceError(
            f"max seeds {cap} is below hypothesis.min_seeds = {hypothesis.min_seeds}",
            field="--max-seeds / hypothesis.max_seeds",
        )
    hypothesis.max_seeds = cap
    return cfg


def look_now(run: MechanismRun, cfg: ExperimentConfig) -> dict[str, Any]:
    """The sequential rule's summary on what the run has so far."""
    from gradience.stats.analyze import sequential_look

    return sequential_look(run.results, cfg.hypothesis)


def run_until_decided(
    cfg: ExperimentConfig,
    output_dir: str | Path | None = None,
    *,
    max_seeds: int | None = None,
    sink: EventSink | None = None,
    fresh: bool = False,
    executor: str | None = None,
    ray_address: str | None = None,
    reuse_from: str | Path | None = None,
    runner: Callable[..., MechanismRun] = run_mechanism_test,
) -> MechanismRun:
    """Add seeds until the sequential rule stops (see the module doc); the last run's results.

    ``runner`` runs one step (the first n seeds); :func:`run_mechanism_test` unless a caller
    has its own way to produce a step's results. ``reuse_from``: as for
    :func:`run_mechanism_test`, at every step (each copies only the jobs not yet here)."""
    cfg = sequential_config(cfg, max_seeds)
    cap = cfg.hypothesis.max_seeds or len(cfg.train.seeds)
    seeds = list(cfg.train.seeds[:cap])
    n = cfg.hypothesis.min_seeds
    stride = seeds_per_step(cfg, executor)
    with shared_workers():  # one set of worker processes serves every step
        while True:
            step = cfg.model_copy(deep=True)
            step.train.seeds = seeds[:n]
            run = runner(
                step,
                output_dir,
                sink=sink,
                fresh=fresh,
                executor=executor,
                ray_address=ray_address,
                reuse_from=reuse_from,
            )
            fresh = False  # only the first step may move an earlier run aside
            summary = look_now(run, step)
            emit(
                sink, "", "message", text=f"sequential look after {n} seed(s): {summary['reason']}"
            )
            if summary["stopped"] or n >= cap:
                return run
            n = min(n + stride, cap)


def seeds_per_step(cfg: ExperimentConfig, executor: str | None = None) -> int:
    """Seeds added per step: ``env.workers`` on the local executor, so that every worker has a
    seed's probe to train (one seed at a time leaves all but one idle while its probe trains).
    The rule still looks after every seed; a seed beyond the look that decides is reported as
    not used by the rule. Ray: one (its cluster runs a seed's variants side by side)."""
    if (executor or cfg.env.executor) != "local":
        return 1
    return max(1, cfg.env.workers)
