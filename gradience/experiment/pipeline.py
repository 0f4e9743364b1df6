"""The mechanism test, top to bottom: the function the CLI and the run script call.

    config -> run folder (config.yaml) -> task data (once) -> jobs (local or Ray)
           -> seed_<s>/bench.json -> aggregated_results.json

Per seed the jobs are: train+eval the probe; the probe gate; audit the probe and build every
variant's rank pattern; train+eval each variant (see :mod:`gradience.experiment.plan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from gradience.config import ExperimentConfig
from gradience.experiment import plan
from gradience.experiment.aggregate import write_results
from gradience.experiment.executors import run_locally, run_on_ray
from gradience.experiment.jobs import EventSink, JobOutcome, emit
from gradience.experiment.reuse import check_source, copy_finished_jobs
from gradience.experiment.runfolder import CONFIG_FILE, open_run_folder
from gradience.io import read_model, write_model, write_text_atomic
from gradience.results import AggregatedResults, RegisteredPlan
from gradience.stats.registered import PLAN_FILE, analysis_plan, plan_differences, plan_hash


@dataclass(frozen=True)
class MechanismRun:
    """What a run produced: its folder, the aggregated results and every job's outcome."""

    run_dir: Path
    results: AggregatedResults
    outcomes: dict[str, JobOutcome]
    moved_aside: Path | None = None  # where ``fresh`` moved an earlier run

    @property
    def failed(self) -> list[JobOutcome]:
        return [o for o in self.outcomes.values() if o.status == "failed"]

    @property
    def gated(self) -> list[JobOutcome]:
        return [o for o in self.outcomes.values() if o.status == "gated"]

    @property
    def complete(self) -> bool:
        """Every job of every seed finished (no failure, no gated seed)."""
        return all(o.ok for o in self.outcomes.values())


def run_mechanism_test(
    cfg: ExperimentConfig,
    output_dir: str | Path | None = None,
    *,
    executor: str | None = None,
    ray_address: str | None = None,
    sink: EventSink | None = None,
    fresh: bool = False,
    reuse_from: str | Path | None = None,
) -> MechanismRun:
    """Run (or resume) the whole experiment and aggregate it; never raises for a failed job.

    ``output_dir`` defaults to ``env.output_base_dir``, ``executor`` to ``env.executor`` and
    ``ray_address`` to ``env.ray_address``. Finished jobs whose inputs are unchanged are
    reused; failures are recorded in the benches and in ``aggregated_results.json``. A run
    folder holding another config's results is refused unless ``fresh``, which moves it
    aside (see :mod:`gradience.experiment.runfolder`). ``reuse_from``: another run folder whose
    finished train+eval jobs are copied in first, each reused only where its inputs match this
    run's (see :mod:`gradience.experiment.reuse`).
    """
    if cfg.task.eval_backend == "vllm":  # stop before any training, not at the first eval
        from gradience.evaluate.vllm_backend import check_vllm_config, require_vllm

        require_vllm()
        check_vllm_config(cfg)
    if cfg.task.eval_backend == "lm_eval":
        from gradience.evaluate.lmeval_backend import require_lmeval

        require_lmeval()
    ctx = plan.RunContext(cfg, Path(output_dir or cfg.env.output_base_dir).resolve())
    source = None if reuse_from is None else check_source(Path(reuse_from), ctx.run_dir)
    with open_run_folder(ctx.run_dir, cfg, fresh=fresh) as folder:
        if folder.moved_aside is not None:
            emit(sink, "", "message", text=f"moved the earlier run to {folder.moved_aside}")
        save_config(ctx)
        register_plan(ctx, sink)
        if source is not None:  # checked above, before the run folder was touched
            copied = copy_finished_jobs(source, ctx)
            text = f"copied {len(copied)} finished job(s) from {reuse_from}" + (
                " (each reused only where its inputs match this run's)" if copied else ""
            )
            emit(sink, "", "message", text=text)
        task_data = load_task_data(cfg)
        if (executor or cfg.env.executor) == "ray":
            outcomes = run_on_ray(ctx, task_data, sink, ray_address or cfg.env.ray_address)
        else:
            outcomes = run_locally(ctx, task_data, sink)
        return MechanismRun(ctx.run_dir, write_results(ctx), outcomes, folder.moved_aside)


def save_config(ctx: plan.RunContext) -> Path:
    """The validated config (defaults and command-line overrides included) as RUN/config.yaml."""
    text = yaml.safe_dump(ctx.cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return write_text_atomic(ctx.run_dir / CONFIG_FILE, text)


def register_plan(ctx: plan.RunContext, sink: EventSink | None = None) -> Path:
    """Write RUN/analysis_plan.json before any seed trains; a plan already there stands.

    The verdict is to be decided the way the run said it would be before its data existed: a
    rerun with other hypothesis settings keeps the first plan (and says so), and an analysis
    whose settings differ from it says so in its first line.
    """
    cfg = ctx.cfg
    current = analysis_plan(cfg.hypothesis, cfg.compression.variants, len(cfg.train.seeds))
    path = ctx.run_dir / PLAN_FILE
    if path.is_file():
        registered = read_model(path, RegisteredPlan).plan
        if plan_hash(registered) != plan_hash(current):
            emit(
                sink,
                "",
                "message",
                text=f"the analysis plan registered before this run's data stands "
                f"({plan_hash(registered)}); these settings differ: "
                + "; ".join(plan_differences(registered, current)),
            )
        return path
    return write_model(path, RegisteredPlan(plan_hash=plan_hash(current), plan=current))


def load_task_data(cfg: ExperimentConfig):  # -> gradience.tasks.TaskData
    """The task's train items and fixed eval subset, loaded once for every job of the run."""
    from gradience.tasks import load_task

    return load_task(cfg.task)
