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
The audit job is never copied (its inputs include the compression settings, which differ
between a mechanism test and a tournament): it reruns here, reading the copied probe's
audit.json when that was computed from the same adapter bytes with the same audit settings,
else auditing the copied adapter.

:func:`copy_without_weights` makes a source that travels: a run's finished train+eval jobs
without adapter weights or checkpoints (a few hundred kB a job), each weights file replaced
by a marker holding its sha256. Committed to git, it lets another machine or a later session
resume the run with ``--reuse-jobs-from``: such a job counts as finished, and only a job that
reads another's weights (a truncation of the probe, or an audit that cannot reuse audit.json)
needs them retrained.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gradience.errors import GradienceError
from gradience.experiment import plan
from gradience.experiment.records import (
    ADAPTER_WEIGHTS,
    JOB_FILE,
    WEIGHTS_REMOVED,
    JobRecord,
    file_digest,
    read_record,
    weights_accounted_for,
)
from gradience.experiment.runfolder import CONFIG_FILE
from gradience.io import write_json_atomic

#: Left out of a copy: what a finished job no longer needs (its training checkpoints).
SKIPPED = shutil.ignore_patterns("checkpoint-*")
#: Left out by copy_without_weights as well: the adapter weights (replaced by a marker).
WITHOUT_WEIGHTS = shutil.ignore_patterns("checkpoint-*", ADAPTER_WEIGHTS.name)


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
        staging = stage_copy(origin, target, SKIPPED)
        copy_own_ranks(source, ctx.run_dir, seed, name)
        staging.rename(target)  # a killed copy leaves only the staging folder, never half a job
        copied.append(plan.job_id(seed, name))
    return copied


def copy_without_weights(run: Path, dest: Path) -> list[str]:
    """Copy ``run``'s config and its finished train+eval jobs into ``dest``, without adapter
    weights or checkpoints; the copied job ids. Copying again after more jobs finished brings
    ``dest`` up to date: a job already there with the same record and a marker of its digest
    is left as it is (and not listed), any other is replaced.

    Each removed weights file leaves :data:`WEIGHTS_REMOVED` with its sha256, checked against
    the job record's ``output_digest`` first: a job whose weights do not match its record is
    left out (it would not count as finished anywhere).
    """
    config = run / CONFIG_FILE
    if not config.is_file():
        raise GradienceError(f"holds no {CONFIG_FILE}: is this a run folder?", path=run)
    if dest.resolve() == run.resolve() or run.resolve() in dest.resolve().parents:
        raise GradienceError("is inside the run folder; give a folder outside it", path=dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, dest / CONFIG_FILE)
    copied = []
    for folder in sorted(run.glob("seed_*/*/")):
        record = read_record(folder)
        if record is None or record.kind != "train_eval" or record.status != "done":
            continue
        target = dest / folder.relative_to(run)
        if already_carried(folder, target, record):
            continue
        if not weights_accounted_for(folder, record):
            continue
        weights = folder / ADAPTER_WEIGHTS
        if weights.is_file() and file_digest(weights) != record.output_digest:
            continue
        staging = stage_copy(folder, target, WITHOUT_WEIGHTS)
        if not (staging / WEIGHTS_REMOVED).is_file():
            write_json_atomic(staging / WEIGHTS_REMOVED, {"sha256": record.output_digest})
        if record.variant is not None:
            copy_own_ranks(run, dest, record.seed, record.variant)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        copied.append(record.job)
    return copied


def already_carried(folder: Path, target: Path, record: JobRecord) -> bool:
    """``target`` is a weight-free copy of the finished job in ``folder``: the same record bytes
    and a marker of its output digest (so the weights need not be hashed again)."""
    copy = target / JOB_FILE
    return (
        copy.is_file()
        and copy.read_bytes() == (folder / JOB_FILE).read_bytes()
        and not (target / ADAPTER_WEIGHTS).exists()
        and weights_accounted_for(target, record)
    )


def copy_own_ranks(source: Path, run_dir: Path, seed: int, variant: str) -> None:
    """A variant that writes its own rank file (allocated, cross-seed) counts as finished only
    with it: copy it along with its job (copied before the job folder lands)."""
    origin = plan.ranks_file(source, seed, variant)
    if variant in plan.OWN_RANKS and origin.is_file():
        target = plan.ranks_file(run_dir, seed, variant)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(origin, target)


def stage_copy(origin: Path, target: Path, ignore) -> Path:
    """Copy ``origin`` next to ``target`` as ``<target>.copying`` (a stale one replaced); the
    caller renames it into place, so a killed copy never leaves half a job at ``target``."""
    staging = target.with_name(target.name + ".copying")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(origin, staging, ignore=ignore)
    return staging
