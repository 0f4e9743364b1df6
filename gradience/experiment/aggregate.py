"""Per-seed benches and ``aggregated_results.json``, read back from the run folder.

Everything here reads only what the jobs wrote (job records, eval/train results, rank
files, predictions), so the same code serves a run that just finished, a resumed run, and
``gradience mechanism status``. A job counts as done only if its record is ``done`` for the
inputs the current config implies (a result left from other settings is "pending").
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from gradience.errors import GradienceError
from gradience.experiment import plan
from gradience.experiment.jobs import BASE_DIR, gate_message, gate_score, variant_inputs_hash
from gradience.experiment.records import JobRecord, read_record
from gradience.faults import fault_point
from gradience.io import read_model, write_model
from gradience.ranks.controls import rank_histogram
from gradience.results import (
    AggregatedResults,
    AuditResult,
    BaseModelEval,
    EvalResult,
    Failure,
    JobStatus,
    Prediction,
    RankPattern,
    SeedBench,
    SeedVariantSummary,
    TrainResult,
    ValueStats,
    VariantAggregate,
    VariantRun,
)

AGGREGATED_FILE = "aggregated_results.json"
BENCH_FILE = "bench.json"


@dataclass(frozen=True)
class VariantState:
    """One variant of one seed as the run folder shows it."""

    status: JobStatus
    error: str | None = None
    eval: EvalResult | None = None
    train: TrainResult | None = None
    ranks_file: str | None = None


# ---------------------------------------------------------------- reading one seed


def seed_states(ctx: plan.RunContext, seed: int) -> tuple[dict[str, VariantState], str | None]:
    """Every trained variant's state for ``seed``, and why the seed stopped early (if it did)."""
    variants = plan.trained_variants(ctx.cfg)
    probe = train_eval_state(ctx, seed, plan.PROBE, None)
    states = {plan.PROBE: probe}
    blocked = upstream_block(ctx, seed, probe)
    for variant in variants[1:]:
        if blocked is not None:
            states[variant] = blocked
            continue
        if variant in plan.CROSS_SEED:
            states[variant] = crossseed_state(ctx, seed, variant)
            continue
        path = plan.ranks_file(ctx.run_dir, seed, plan.audit_ranks_of(variant))
        if not path.is_file():
            states[variant] = VariantState("pending", f"no rank pattern yet ({path.name})")
            continue
        states[variant] = train_eval_state(ctx, seed, variant, read_model(path, RankPattern).ranks)
    stop = blocked.error if blocked is not None and blocked.status != "pending" else None
    return states, stop


def crossseed_state(ctx: plan.RunContext, seed: int, variant: str) -> VariantState:
    """A cross-seed truncation's state: it also waits for its rank source's audit, and it is
    current only for that audit's per_layer ranks as they are now (``ranks/per_layer.json``)."""
    source = plan.rank_source_seed(ctx.cfg, seed, variant)
    block = upstream_block(ctx, source, train_eval_state(ctx, source, plan.PROBE, None))
    if block is not None:  # never "gated": that would exclude this seed, which passed its gate
        status: JobStatus = "pending" if block.status == "pending" else "skipped"
        return VariantState(status, f"its ranks come from seed {source}'s audit: {block.error}")
    path = plan.ranks_file(ctx.run_dir, source, "per_layer")
    if not path.is_file():
        return VariantState("pending", f"no rank pattern yet (seed {source}'s {path.name})")
    ranks = read_model(path, RankPattern).ranks
    return train_eval_state(ctx, seed, variant, ranks, rank_source=source)


def train_eval_state(
    ctx: plan.RunContext,
    seed: int,
    variant: str,
    ranks: dict[str, int] | None,
    rank_source: int | None = None,
) -> VariantState:
    """``ranks``: the ones the job's inputs hash holds (a cross-seed variant's: its
    ``rank_source`` seed's per_layer ranks)."""
    folder = plan.job_dir(ctx.run_dir, seed, variant)
    record = read_record(folder)
    ranks_path = plan.ranks_file(ctx.run_dir, seed, variant)
    ranks_file = ranks_path.relative_to(ctx.run_dir).as_posix() if ranks_path.is_file() else None
    if record is None:
        return VariantState("pending", "not started", ranks_file=ranks_file)
    if record.inputs_hash != variant_inputs_hash(ctx, seed, variant, ranks, rank_source):
        return VariantState("pending", "stale: ran with other inputs", ranks_file=ranks_file)
    if record.status == "failed":
        return VariantState("failed", record.error, ranks_file=ranks_file)
    if record.status == "running" or not (folder / "eval.json").is_file():
        return VariantState("pending", "unfinished (running or interrupted)", ranks_file=ranks_file)
    return VariantState(
        "done",
        eval=read_model(folder / "eval.json", EvalResult),
        train=read_model(folder / "train_result.json", TrainResult),
        ranks_file=ranks_file,
    )


def upstream_block(ctx: plan.RunContext, seed: int, probe: VariantState) -> VariantState | None:
    """Why the seed's variants cannot have run (probe not done, gate, audit), or None."""
    if probe.status != "done":
        status: JobStatus = "pending" if probe.status == "pending" else "skipped"
        return VariantState(status, f"not run: probe {probe.status}: {probe.error}")
    probe_dir = plan.job_dir(ctx.run_dir, seed, plan.PROBE)
    gate = gate_message(ctx, seed, gate_score(probe_dir))
    if gate is not None:
        return VariantState("gated", gate)
    audit = read_record(plan.job_dir(ctx.run_dir, seed, plan.AUDIT))
    if audit is None or audit.status == "running" or not audit_current(ctx, seed, audit):
        return VariantState("pending", "not run: audit not finished")
    if audit.status == "failed":
        return VariantState("skipped", f"not run: audit failed: {audit.error}")
    return None


def audit_current(ctx: plan.RunContext, seed: int, audit: JobRecord) -> bool:
    probe = read_record(plan.job_dir(ctx.run_dir, seed, plan.PROBE))
    digest = probe.output_digest if probe else None
    return audit.inputs_hash == plan.audit_inputs_hash(ctx.cfg, seed, digest)


# ---------------------------------------------------------------- bench.json


def seed_bench(ctx: plan.RunContext, seed: int) -> SeedBench:
    states, stop = seed_states(ctx, seed)
    metric = ctx.cfg.hypothesis.primary_metric
    probe_score = score(states[plan.PROBE], metric)
    summaries = {
        name: variant_summary(state, metric, probe_score) for name, state in states.items()
    }
    return SeedBench(
        seed=seed,
        config_hash=plan.experiment_hash(ctx.cfg),
        status=seed_status(states),
        message=stop or first_error(states),
        variants=summaries,
        primary_metric=metric,
    )


def variant_summary(
    state: VariantState, metric: str, probe_score: float | None
) -> SeedVariantSummary:
    own = score(state, metric)
    return SeedVariantSummary(
        status=state.status,
        exact_match=state.eval.exact_match if state.eval else None,
        strict_match=state.eval.strict_match if state.eval else None,
        delta_vs_probe=own - probe_score if own is not None and probe_score is not None else None,
        trainable_params=state.train.trainable_params if state.train else None,
        rank_histogram=rank_histogram(state.train.ranks) if state.train else {},
        ranks_file=state.ranks_file,
        error=state.error if state.status != "done" else None,
    )


def seed_status(states: dict[str, VariantState]) -> str:
    statuses = {state.status for state in states.values()}
    if statuses == {"done"}:
        return "done"
    if "gated" in statuses:
        return "gated"
    others = [state.status for name, state in states.items() if name != plan.PROBE]
    if states[plan.PROBE].status != "done" or (others and set(others) == {"skipped"}):
        return "failed"
    return "partial"


def first_error(states: dict[str, VariantState]) -> str | None:
    return next((f"{name}: {s.error}" for name, s in states.items() if s.status != "done"), None)


def score(state: VariantState, metric: str) -> float | None:
    return float(getattr(state.eval, metric)) if state.eval is not None else None


def write_seed_bench(ctx: plan.RunContext, seed: int) -> SeedBench:
    bench = seed_bench(ctx, seed)
    write_model(plan.seed_dir(ctx.run_dir, seed) / BENCH_FILE, bench)
    return bench


# ---------------------------------------------------------------- aggregated_results.json


def aggregate(ctx: plan.RunContext) -> AggregatedResults:
    """All seeds' finished runs per variant, with every missing run listed as a failure.

    A seed stopped by the probe gate is excluded as a whole (its probe is listed as a
    failure too), so that every variant's values come from the same seeds where they exist.
    ``values`` follow the order of ``seeds``; pair seeds through ``runs``.
    """
    metric = ctx.cfg.hypothesis.primary_metric
    variants = plan.trained_variants(ctx.cfg)
    runs: dict[str, dict[str, VariantRun]] = {v: {} for v in variants}
    failures: list[Failure] = []
    item_ids: list[str] | None = None
    gated_seeds: list[int] = []
    for seed in ctx.cfg.train.seeds:
        states, stop = seed_states(ctx, seed)
        gated = any(state.status == "gated" for state in states.values())
        if gated:
            gated_seeds.append(seed)
        for variant, state in states.items():
            if state.status != "done" or gated:
                failures.append(
                    Failure(seed=seed, variant=variant, error=state.error or f"excluded: {stop}")
                )
                continue
            assert state.eval is not None
            item_ids = item_ids if item_ids is not None else list(state.eval.item_ids)
            if list(state.eval.item_ids) != item_ids:
                error = "its eval items differ from the other runs' (eval_item_ids)"
                failures.append(Failure(seed=seed, variant=variant, error=error))
                continue
            folder = plan.job_dir(ctx.run_dir, seed, variant)
            try:
                runs[variant][str(seed)] = variant_run(state, folder, item_ids)
            except GradienceError as error:
                failures.append(Failure(seed=seed, variant=variant, error=str(error)))
    return AggregatedResults(
        primary_metric=metric,
        seeds=list(ctx.cfg.train.seeds),
        config_hash=plan.experiment_hash(ctx.cfg),
        alpha_policy=ctx.cfg.lora.alpha_policy,
        eval_item_ids=item_ids or [],
        variants={v: variant_aggregate(runs[v], metric) for v in variants},
        failures=failures,
        gated_seeds=gated_seeds,
        paired_init=ctx.cfg.lora.paired_init,
        base_model=base_model_eval(ctx, item_ids or []),
        module_costs=module_costs(ctx),
    )


def module_costs(ctx: plan.RunContext) -> dict[str, int] | None:
    """LoRA parameters per rank (d_in + d_out) of every audited module, from the first audit."""
    for seed in ctx.cfg.train.seeds:
        path = plan.audit_file(ctx.run_dir, seed)
        if path.is_file():
            audit = read_model(path, AuditResult)
            return {m.name: m.d_in + m.d_out for m in audit.modules}
    return None


def base_model_eval(ctx: plan.RunContext, item_ids: list[str]) -> BaseModelEval | None:
    """The base model's score from the first seed whose probe job measured it on these items."""
    for seed in ctx.cfg.train.seeds:
        path = plan.job_dir(ctx.run_dir, seed, plan.PROBE) / BASE_DIR / "eval.json"
        if not path.is_file():
            continue
        result = read_model(path, EvalResult)
        if list(result.item_ids) == item_ids:
            return BaseModelEval(
                exact_match=result.exact_match,
                strict_match=result.strict_match,
                n_items=result.n_items,
                seed=seed,
            )
    return None


def variant_run(state: VariantState, folder: Path, item_ids: list[str]) -> VariantRun:
    assert state.eval is not None and state.train is not None
    correct, strict_correct = item_correct(folder / "predictions.jsonl", item_ids)
    return VariantRun(
        exact_match=state.eval.exact_match,
        strict_match=state.eval.strict_match,
        trainable_params=state.train.trainable_params,
        ranks_file=state.ranks_file or "",
        item_correct=correct,
        item_strict_correct=strict_correct,
        ranks=dict(state.train.ranks),
        update_norms=dict(state.train.update_norms) or None,
        lmeval_strict_match=state.eval.lmeval_strict_match,
        lmeval_flexible_extract=state.eval.lmeval_flexible_extract,
    )


def item_correct(path: Path, item_ids: list[str]) -> tuple[list[int], list[int]]:
    """0/1 per eval item in ``item_ids`` order, from one read of the job's predictions.jsonl:
    exact_match's correctness, and strict_match's (the number after ``####`` only)."""
    correct: dict[str, tuple[bool, bool]] = {}
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                prediction = Prediction.model_validate(json.loads(line))
            except ValueError as error:
                raise GradienceError(
                    f"line {line_no} is not a prediction record: {error}", path=path
                ) from None
            correct[prediction.id] = (prediction.correct, prediction.strict_correct)
    missing = [item for item in item_ids if item not in correct]
    if missing:
        raise GradienceError(f"no prediction for eval item(s) {missing[:3]}", path=path)
    return (
        [int(correct[item][0]) for item in item_ids],
        [int(correct[item][1]) for item in item_ids],
    )


def variant_aggregate(runs: dict[str, VariantRun], metric: str) -> VariantAggregate:
    """``runs`` in the run's seed order; ``values`` follow it."""
    return VariantAggregate(
        accuracy=value_stats([getattr(run, metric) for run in runs.values()]),
        trainable_params=value_stats([float(run.trainable_params) for run in runs.values()]),
        runs=runs,
    )


def value_stats(values: list[float]) -> ValueStats:
    """Mean and sample standard deviation (ddof=1; None with fewer than two values)."""
    return ValueStats(
        mean=statistics.fmean(values) if values else None,
        std=statistics.stdev(values) if len(values) >= 2 else None,
        values=values,
    )


def write_results(ctx: plan.RunContext) -> AggregatedResults:
    """Every seed's bench.json, then aggregated_results.json."""
    for seed in ctx.cfg.train.seeds:
        write_seed_bench(ctx, seed)
    fault_point("aggregate")
    results = aggregate(ctx)
    write_model(ctx.run_dir / AGGREGATED_FILE, results)
    return results
