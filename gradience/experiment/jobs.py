"""The jobs of a mechanism test, shared by every executor: the probe and the variants here
(train + eval), the audit between them in :mod:`gradience.experiment.audit_job`.

Each job takes its upstream job's :class:`JobOutcome` (the local executor passes it directly,
Ray passes it through an object ref), does its work in its own folder, and returns an
outcome. A job never raises for a failure of its own: it records the error in its
``job.json`` and returns ``status="failed"``, so one failure never stops the other jobs.
Training, evaluation and the audit are imported inside the jobs, so that reading a run
(``gradience mechanism status``) does not import torch.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gradience.experiment import plan
from gradience.experiment.records import (
    ADAPTER_WEIGHTS,
    JobClock,
    JobProgress,
    JobRecord,
    file_digest,
    read_record,
    weights_accounted_for,
)
from gradience.experiment.trained import (
    TrainedModel,
    job_batch_size,
    load_trained,
    train,
    truncate_probe,
)
from gradience.heap import collections_skip_older_objects
from gradience.io import read_model, write_model
from gradience.results import EvalResult

if TYPE_CHECKING:
    from gradience.evaluate.batch_size import BatchSize
    from gradience.tasks import TaskData

OutcomeStatus = Literal["done", "reused", "failed", "skipped", "gated"]
EventSink = Callable[["JobEvent"], None]

#: Files a train+eval job writes; removed when its inputs change so no stale result survives.
TRAIN_EVAL_OUTPUTS = ("train_result.json", "eval.json", "predictions.jsonl")
#: The probe gate's own evaluation: on training items, never on the eval items (judging seeds
#: on their test-set score would select them on the outcome).
GATE_DIR = "gate"
GATE_ITEMS = 64
#: The base model's own evaluation (no LoRA), written by the first seed's probe job.
BASE_DIR = "base"


@dataclass(frozen=True)
class JobEvent:
    """What a job tells the progress view: started, progress, finished or message."""

    job: str
    kind: Literal["started", "progress", "finished", "message"]
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobOutcome:
    """A job's result as seen by the jobs downstream of it and by the executor."""

    job: str
    status: OutcomeStatus
    message: str | None = None
    exact_match: float | None = None
    output_digest: str | None = None
    ranks: Mapping[str, Mapping[str, int]] | None = None
    gate_score: float | None = None
    #: The generation batch size the seed's probe chose (``task.eval_batch_size: auto``);
    #: the audit passes it on, so that every variant of the seed evaluates in the same batches.
    eval_batch_size: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("done", "reused")


def emit(sink: EventSink | None, job: str, kind: str, **data: Any) -> None:
    if sink is not None:
        sink(JobEvent(job, kind, data))  # type: ignore[arg-type]


# ---------------------------------------------------------------- train + eval


def probe_job(
    ctx: plan.RunContext, seed: int, task_data: TaskData, sink: EventSink | None = None
) -> JobOutcome:
    """Train and evaluate the uniform ``probe_r`` adapter that the audit will read."""
    return train_eval_job(ctx, seed, plan.PROBE, None, task_data, sink)


def variant_job(
    ctx: plan.RunContext,
    seed: int,
    variant: str,
    audit: JobOutcome,
    task_data: TaskData,
    sink: EventSink | None = None,
    source: JobOutcome | None = None,
) -> JobOutcome:
    """Train and evaluate one variant at the ranks the audit job chose for it.

    A cross-seed variant (``plan.CROSS_SEED``) also takes ``source``, the outcome of the audit
    of the seed its ranks come from (:func:`plan.rank_source_seed`): it is cut to that audit's
    per_layer ranks (or their within-type shuffle), and skipped if that audit did not finish.
    """
    job = plan.job_id(seed, variant)
    if not audit.ok or audit.ranks is None:
        return skipped(sink, job, f"not run: {audit.job} {audit.status}")
    if variant not in plan.CROSS_SEED:
        ranks = audit.ranks[plan.audit_ranks_of(variant)]
        return train_eval_job(ctx, seed, variant, ranks, task_data, sink, audit.eval_batch_size)
    source_seed = plan.rank_source_seed(ctx.cfg, seed, variant)
    source_job = plan.job_id(source_seed, plan.AUDIT)
    if source is None or source.job != source_job:
        raise ValueError(f"{job} needs the outcome of {source_job}, its ranks' source")
    if not source.ok or source.ranks is None:
        return skipped(
            sink, job, f"not run: its ranks come from {source.job}, which is {source.status}"
        )
    return train_eval_job(
        ctx,
        seed,
        variant,
        source.ranks["per_layer"],
        task_data,
        sink,
        audit.eval_batch_size,
        rank_source=source_seed,
    )


def skipped(sink: EventSink | None, job: str, message: str) -> JobOutcome:
    outcome = JobOutcome(job, "skipped", message)
    emit(sink, job, "finished", status=outcome.status, message=outcome.message)
    return outcome


@collections_skip_older_objects()
def train_eval_job(
    ctx: plan.RunContext,
    seed: int,
    variant: str,
    ranks: Mapping[str, int] | None,
    task_data: TaskData,
    sink: EventSink | None = None,
    eval_batch_size: int | None = None,
    rank_source: int | None = None,
) -> JobOutcome:
    """Train (unless this job's training already finished) and evaluate; skip if all done.

    ``eval_batch_size``: the seed's generation batch size as its probe chose it (None: this
    job chooses, see :func:`~gradience.experiment.trained.job_batch_size`).
    ``rank_source``: for a cross-seed truncation, the seed whose audit chose ``ranks`` (its
    per_layer ranks); the job derives its own pattern from them and writes its rank file.
    """
    job = plan.job_id(seed, variant)
    folder = plan.job_dir(ctx.run_dir, seed, variant)
    inputs = variant_inputs_hash(ctx, seed, variant, ranks, rank_source)
    previous = read_record(folder)
    own_ranks = plan.ranks_file(ctx.run_dir, seed, variant)
    if train_eval_finished(previous, inputs, folder, gated_probe(ctx, variant)) and (
        variant not in plan.OWN_RANKS or own_ranks.is_file()
    ):
        outcome = reused_train_eval(job, folder, previous)
        emit(sink, job, "finished", status="reused", exact_match=outcome.exact_match)
        return outcome
    same_inputs = previous is not None and previous.inputs_hash == inputs
    if not same_inputs:
        remove_outputs(folder)
    fresh = JobRecord(
        job=job, kind="train_eval", seed=seed, variant=variant, inputs_hash=inputs, status="running"
    )
    clock = JobClock.start(folder, previous, fresh, keep_phases=same_inputs)
    emit(
        sink,
        job,
        "started",
        attempt=clock.record.attempts,
        phases_done=list(clock.record.phases_done),
    )
    quiet_library_progress()
    model = None
    try:
        if rank_source is not None and ranks is not None:
            ranks = write_crossseed_ranks(ctx, seed, variant, rank_source, ranks)
        elif variant in plan.MODEL_ALLOCATED and ranks is not None:
            from gradience.experiment.allocated import write_allocated_ranks

            ranks = write_allocated_ranks(ctx, seed, variant, ranks, task_data, same_inputs)
        if not training_finished(clock.record, folder):
            if variant in plan.TRUNCATED and ranks is not None:
                model = truncate_probe(ctx, seed, variant, ranks, folder)
            else:
                model = train(
                    ctx, seed, variant, ranks, folder, task_data, reporter(clock, sink, "train")
                )
            clock.phase_done("train")
        else:  # only the evaluation was interrupted: load the saved adapter
            model = load_trained(ctx, folder)
        batch = job_batch_size(ctx, model, task_data, eval_batch_size)
        if gated_probe(ctx, variant):
            gate_evaluation(ctx, model, folder, task_data, reporter(clock, sink, "gate"), batch)
            clock.phase_done("gate")
        result = model.evaluate(ctx, folder, task_data, reporter(clock, sink, "eval"), batch)
        clock.phase_done("eval")
        if evaluates_base_model(ctx, seed, variant):
            progress = reporter(clock, sink, "base")
            model.evaluate(ctx, folder / BASE_DIR, task_data, progress, batch, base_model=True)
            clock.phase_done("base")
        record = clock.finish(output_digest=file_digest(folder / ADAPTER_WEIGHTS))
    except Exception as error:  # noqa: BLE001 - recorded, shown, and the run goes on
        record = clock.fail(error)
        emit(sink, job, "finished", status="failed", message=record.error)
        return JobOutcome(job, "failed", record.error)
    finally:
        if model is not None:
            model.release()
    emit(sink, job, "finished", status="done", exact_match=result.exact_match)
    return JobOutcome(
        job,
        "done",
        exact_match=result.exact_match,
        output_digest=record.output_digest,
        gate_score=gate_score(folder),
        eval_batch_size=result.eval_batch_size_final or result.eval_batch_size,
    )


def variant_inputs_hash(
    ctx: plan.RunContext,
    seed: int,
    variant: str,
    ranks: Mapping[str, int] | None,
    rank_source: int | None = None,
) -> str:
    """A train+eval job's inputs hash; a truncation of the probe also depends on the probe's
    adapter bytes (a retrained probe must be truncated again). For a cross-seed truncation
    ``ranks`` are ``rank_source``'s per_layer ranks (its pattern is a function of them, of this
    seed and of this probe's modules), so a changed upstream audit redoes the job."""
    upstream = None
    if variant in plan.TRUNCATED:
        probe = read_record(plan.job_dir(ctx.run_dir, seed, plan.PROBE))
        upstream = probe.output_digest if probe is not None else None
    return plan.train_inputs_hash(
        ctx.cfg, seed, variant, ranks, ctx.identity, upstream, rank_source
    )


def write_crossseed_ranks(
    ctx: plan.RunContext,
    seed: int,
    variant: str,
    source_seed: int,
    source_ranks: Mapping[str, int],
) -> dict[str, int]:
    """The cross-seed variant's pattern on this seed's modules (its audit.json), written to
    ``ranks/<variant>.json``; returns its ranks."""
    from gradience.experiment.variants import crossseed_patterns
    from gradience.results import AuditResult

    audit = read_model(plan.audit_file(ctx.run_dir, seed), AuditResult)
    pattern = crossseed_patterns(audit, source_ranks, ctx.cfg, seed, source_seed)[variant]
    write_model(plan.ranks_file(ctx.run_dir, seed, variant), pattern)
    return dict(pattern.ranks)


def evaluates_base_model(ctx: plan.RunContext, seed: int, variant: str) -> bool:
    """The first seed's probe job also scores the base model (greedy: the same for any seed)."""
    return variant == plan.PROBE and ctx.cfg.task.eval_base_model and seed == ctx.cfg.train.seeds[0]


def gated_probe(ctx: plan.RunContext, variant: str) -> bool:
    return variant == plan.PROBE and ctx.cfg.compression.probe_gate > 0


def gate_evaluation(
    ctx: plan.RunContext,
    model: TrainedModel,
    folder: Path,
    task_data: TaskData,
    progress: Callable[[dict], None],
    batch: BatchSize | None = None,
) -> EvalResult:
    """The probe's exact match on its first GATE_ITEMS training items (``probe/gate/eval.json``)."""
    from gradience.tasks import TaskData as Data

    items = Data(train=task_data.train, eval=task_data.train[:GATE_ITEMS], name=task_data.name)
    return model.evaluate(ctx, folder / GATE_DIR, items, progress, batch)


def gate_score(folder: Path) -> float | None:
    """The probe's training-item exact match, if its gate evaluation ran."""
    path = folder / GATE_DIR / "eval.json"
    return read_model(path, EvalResult).exact_match if path.is_file() else None


def quiet_library_progress() -> None:
    """The run's own view shows each job's progress: no per-job weight-loading bars beside it."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def reporter(clock: JobClock, sink: EventSink | None, phase: str) -> Callable[[dict], None]:
    """The progress callback handed to training/evaluation: job.json and the live view."""

    def report(info: dict) -> None:
        # Training reports {"step", "max_steps", "loss"}; evaluation {"done", "total"} items.
        loss = info.get("loss")
        progress = JobProgress(
            phase=phase,
            step=info.get("step", info.get("done")),
            max_steps=info.get("max_steps", info.get("total")),
            loss=float(loss) if loss is not None and math.isfinite(float(loss)) else None,
        )
        clock.progress(progress)
        emit(sink, clock.record.job, "progress", **progress.model_dump())

    return report


def training_finished(record: JobRecord, folder: Path) -> bool:
    """This attempt's inputs were already trained (e.g. only the evaluation was interrupted)."""
    outputs = (folder / "train_result.json").is_file() and (folder / ADAPTER_WEIGHTS).is_file()
    return "train" in record.phases_done and outputs


def train_eval_finished(
    record: JobRecord | None, inputs: str, folder: Path, gated: bool = False
) -> bool:
    """Done with these very inputs, and every output (the gate's too, if gated) still on disk;
    the adapter weights may have been removed on purpose (see ``weights_accounted_for``)."""
    return (
        record is not None
        and record.status == "done"
        and record.inputs_hash == inputs
        and all((folder / name).is_file() for name in TRAIN_EVAL_OUTPUTS)
        and weights_accounted_for(folder, record)
        and (not gated or (folder / GATE_DIR / "eval.json").is_file())
    )


def reused_train_eval(job: str, folder: Path, record: JobRecord) -> JobOutcome:
    result = read_model(folder / "eval.json", EvalResult)
    return JobOutcome(
        job,
        "reused",
        exact_match=result.exact_match,
        output_digest=record.output_digest,
        gate_score=gate_score(folder),
        eval_batch_size=result.eval_batch_size_final or result.eval_batch_size,
    )


def remove_outputs(folder: Path) -> None:
    """Remove a job's results from other inputs (checkpoints are checked by training itself)."""
    for name in TRAIN_EVAL_OUTPUTS:
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "adapter", ignore_errors=True)
    shutil.rmtree(folder / GATE_DIR, ignore_errors=True)


# ---------------------------------------------------------------- the probe gate


def gate_message(ctx: plan.RunContext, seed: int, train_score: float | None) -> str | None:
    """Why this seed stops after its probe, or None if the probe passes the gate.

    ``train_score`` is the probe's exact match on training items (``probe/gate/eval.json``),
    never its eval score: the gate must not select seeds on the outcome it is judged by.
    """
    gate = ctx.cfg.compression.probe_gate
    if gate <= 0 or train_score is None or train_score >= gate:
        return None
    return (
        f"seed {seed}: probe exact_match on {GATE_ITEMS} training items {train_score:.3f} is "
        f"below compression.probe_gate {gate:.3f}; its variants are not trained (see the loss "
        f"curve in {plan.job_id(seed, plan.PROBE)}/train_result.json)"
    )
