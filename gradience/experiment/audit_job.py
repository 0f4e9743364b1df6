"""The audit job: the probe gate, then the probe adapter's audit and every variant's ranks.

One job per seed between the probe and its variants (``plan.AUDIT``); it reads the probe's
adapter, writes ``probe/audit.json`` and ``ranks/<variant>.json``, and hands the variants
their ranks. The train+eval jobs and their shared plumbing are :mod:`gradience.experiment.jobs`.
"""

from __future__ import annotations

import json

from gradience.errors import GradienceError
from gradience.experiment import plan
from gradience.experiment.jobs import EventSink, JobOutcome, emit, gate_message
from gradience.experiment.records import JobClock, JobRecord, read_record, require_weights
from gradience.io import read_json, read_model, write_json_atomic, write_model
from gradience.results import AuditResult, RankPattern

#: Next to probe/audit.json: the adapter digest and audit settings it was computed from.
AUDIT_SOURCE = "audit_source.json"


def audit_job(
    ctx: plan.RunContext, seed: int, probe: JobOutcome, sink: EventSink | None = None
) -> JobOutcome:
    """Probe gate, then audit the probe adapter and write every variant's rank pattern."""
    job = plan.job_id(seed, plan.AUDIT)
    if not probe.ok:
        outcome = JobOutcome(job, "skipped", f"not run: {probe.job} {probe.status}")
        emit(sink, job, "finished", status=outcome.status, message=outcome.message)
        return outcome
    gate = gate_message(ctx, seed, probe.gate_score)
    if gate is not None:
        emit(sink, job, "message", text=gate)
        emit(sink, job, "finished", status="gated", message=gate)
        return JobOutcome(job, "gated", gate)
    folder = plan.job_dir(ctx.run_dir, seed, plan.AUDIT)
    inputs = plan.audit_inputs_hash(ctx.cfg, seed, probe.output_digest)
    previous = read_record(folder)
    variants = plan.audit_variants(ctx.cfg)
    if audit_finished(previous, inputs, ctx, seed, variants):
        ranks = {
            v: read_model(plan.ranks_file(ctx.run_dir, seed, v), RankPattern).ranks
            for v in variants
        }
        emit(sink, job, "finished", status="reused")
        return JobOutcome(job, "reused", ranks=ranks, eval_batch_size=probe.eval_batch_size)
    fresh = JobRecord(job=job, kind="audit", seed=seed, inputs_hash=inputs, status="running")
    clock = JobClock.start(folder, previous, fresh, keep_phases=False)
    emit(sink, job, "started", attempt=clock.record.attempts)
    try:
        patterns = audit_and_rank(ctx, seed, probe.output_digest)
        clock.finish()
    except Exception as error:  # noqa: BLE001 - recorded, shown, and the run goes on
        record = clock.fail(error)
        emit(sink, job, "finished", status="failed", message=record.error)
        return JobOutcome(job, "failed", record.error)
    emit(sink, job, "finished", status="done")
    return JobOutcome(
        job,
        "done",
        ranks={v: patterns[v].ranks for v in variants},
        eval_batch_size=probe.eval_batch_size,
    )


def audit_and_rank(
    ctx: plan.RunContext, seed: int, probe_digest: str | None
) -> dict[str, RankPattern]:
    """Audit the probe adapter (written to probe/audit.json), then one rank pattern per variant.

    An audit.json already made from these very adapter bytes with the same audit settings
    (``probe/audit_source.json`` says so) is read instead: the ranks then need no weights, so
    a run resumed from a copy of its jobs without weights (or a tournament reusing another
    run's probes) re-derives its rank patterns under its own compression settings.
    """
    from gradience.audit import audit_adapter
    from gradience.experiment.variants import rank_patterns

    c = ctx.cfg.compression
    probe_folder = plan.job_dir(ctx.run_dir, seed, plan.PROBE)
    source = {
        "probe_adapter": probe_digest,
        "policies": list(audit_policies(c.policy)),
        "allowed_ranks": list(c.allowed_ranks),
        "margin": c.margin,
    }
    audit = reusable_audit(ctx, seed, source)
    if audit is None:
        require_weights(probe_folder)
        (probe_folder / AUDIT_SOURCE).unlink(missing_ok=True)
        audit = audit_adapter(
            probe_folder / "adapter",
            policies=audit_policies(c.policy),
            allowed_ranks=c.allowed_ranks,
            margin=c.margin,
        )
        write_model(plan.audit_file(ctx.run_dir, seed), audit)
        if probe_digest is not None:
            write_json_atomic(probe_folder / AUDIT_SOURCE, source)
    patterns = rank_patterns(audit, ctx.cfg, seed)
    for variant, pattern in patterns.items():
        write_model(plan.ranks_file(ctx.run_dir, seed, variant), pattern)
    return patterns


def reusable_audit(
    ctx: plan.RunContext, seed: int, source: dict[str, object]
) -> AuditResult | None:
    """The seed's audit.json when it was computed from ``source`` (adapter digest and audit
    settings), else None."""
    path = plan.audit_file(ctx.run_dir, seed)
    recorded = path.with_name(AUDIT_SOURCE)
    if source["probe_adapter"] is None or not (path.is_file() and recorded.is_file()):
        return None
    try:
        if read_json(recorded) != json.loads(json.dumps(source)):
            return None
        return read_model(path, AuditResult)
    except GradienceError:
        return None


def audit_policies(policy: str) -> tuple[str, ...]:
    """The audit's default policies plus the configured one (so audit.json shows them all)."""
    from gradience.ranks import DEFAULT_POLICIES

    return tuple(dict.fromkeys([*DEFAULT_POLICIES, policy]))


def audit_finished(
    record: JobRecord | None, inputs: str, ctx: plan.RunContext, seed: int, variants: list[str]
) -> bool:
    return (
        record is not None
        and record.status == "done"
        and record.inputs_hash == inputs
        and plan.audit_file(ctx.run_dir, seed).is_file()
        and all(plan.ranks_file(ctx.run_dir, seed, v).is_file() for v in variants)
    )
