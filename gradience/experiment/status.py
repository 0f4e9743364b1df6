"""Read a run folder: its config and one row per job (``gradience mechanism status``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gradience.config import load_config
from gradience.errors import GradienceError
from gradience.experiment import plan
from gradience.experiment.aggregate import seed_states
from gradience.experiment.records import read_record


@dataclass(frozen=True)
class JobRow:
    job: str
    status: str
    attempts: int = 0
    wall_time_s: float | None = None
    progress: str = ""
    error: str | None = None


def load_run(run_dir: str | Path) -> plan.RunContext:
    """The run's context from the config.yaml it saved."""
    run_dir = Path(run_dir).resolve()
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise GradienceError("not a mechanism-test run folder (no config.yaml)", path=run_dir)
    return plan.RunContext(load_config(config_file), run_dir)


def job_table(ctx: plan.RunContext) -> list[JobRow]:
    """Every job of the run: its record if it has one, else why it has not run."""
    rows = []
    for seed in ctx.cfg.train.seeds:
        states, _ = seed_states(ctx, seed)
        for name in [plan.PROBE, plan.AUDIT, *plan.trained_variants(ctx.cfg)[1:]]:
            record = read_record(plan.job_dir(ctx.run_dir, seed, name))
            if record is not None:
                rows.append(
                    JobRow(
                        job=record.job,
                        status=record.status,
                        attempts=record.attempts,
                        wall_time_s=record.wall_time_s,
                        progress=progress_text(record.progress)
                        if record.status == "running"
                        else "",
                        error=record.error,
                    )
                )
                continue
            status, error = unrecorded_status(name, states)
            rows.append(JobRow(job=plan.job_id(seed, name), status=status, error=error))
    return rows


def unrecorded_status(name: str, states: dict) -> tuple[str, str | None]:
    """Status of a job without a record: its variant's state, or for the audit job the state
    of the variants it feeds when those are gated or skipped."""
    if name in states:
        return states[name].status, states[name].error
    downstream = [state for variant, state in states.items() if variant != plan.PROBE]
    if downstream and downstream[0].status in ("gated", "skipped"):
        return downstream[0].status, downstream[0].error
    return "pending", "not started"


def progress_text(progress) -> str:  # progress: JobProgress | None
    if progress is None:
        return ""
    text = f"{progress.phase} {progress.step}/{progress.max_steps}"
    return text + (f" loss {progress.loss:.4f}" if progress.loss is not None else "")
