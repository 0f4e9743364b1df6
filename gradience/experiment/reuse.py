"""Start a run with another run's finished jobs (``mechanism run --reuse-jobs-from RUN``).

A tournament on the setting of a finished mechanism test trains the same probe, per_layer
and within-type shuffle for every seed they share: same model, data, training settings, seed
and ranks, hence the same bytes. Before any job runs, :func:`copy_finished_jobs` copies into
the new run folder, for each of its train+eval jobs that has no folder there yet, the job
folder of ``source`` when that job finished there. Copies, never links: a job redone here must
not touch ``source``.

Nothing copied is trusted. A copied job is reused only when its recorded inputs hash equals
the one this run computes for it (the ordinary resume check: training identity with library
versions and data, seed, variant, ranks); otherwise it is retrained here like any stale job.
The audit is never copied (its inputs include the compression settings, which differ between
a mechanism test and a tournament): it reruns here, on the copied probe's adapter.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gradience.errors import GradienceError
from gradience.experiment import plan
from gradience.experiment.records import read_record
from gradience.experiment.runfolder import CONFIG_FILE

#: Left out of a copy: what a finished job no longer needs (its training checkpoints).
SKIPPED = shutil.ignore_patterns("checkpoint-*")


def check_source(source: Path, run_dir: Path) -> Path:
    """``source`` resolved, or a GradienceError naming it (not a run folder, or the run itself)."""
    resolved = source.resolve()
    problem = None
    if not resolved.exists():
        problem = "does not exist"
    elif not resolved.is_dir():
        problem = "is a file"
    elif not (resolved / CONFIG_FILE).is_file():
        problem = f"holds no {CONFIG_FILE}"
    elif resolved == run_dir.resolve():
        problem = "is the run folder itself (its finished jobs are reused anyway)"
    if problem is not None:
        raise GradienceError(
            f"{problem}: give the folder of another 'gradience mechanism run'",
            path=source,
            field="--reuse-jobs-from",
        )
    return resolved


def copy_finished_jobs(source: Path, ctx: plan.RunContext) -> list[str]:
    """Copy ``source``'s finished train+eval jobs that this run has and has not started; the
    copied job ids. ``source``: a run folder :func:`check_source` accepted."""
    copied = []
    for seed, name in plan.local_schedule(ctx.cfg):
        if name == plan.AUDIT:
            continue
        target = plan.job_dir(ctx.run_dir, seed, name)
        origin = plan.job_dir(source, seed, name)
        record = read_record(origin)
        if target.exists() or record is None or record.status != "done":
            continue
        staging = target.with_name(target.name + ".copying")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(origin, staging, ignore=SKIPPED)
        staging.rename(target)  # a killed copy leaves only the staging folder, never half a job
        copied.append(plan.job_id(seed, name))
    return copied
