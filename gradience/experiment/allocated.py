"""The model-dependent allocators' step inside their own train+eval job (EVA, AdaLoRA).

``alloc_eva`` and ``alloc_adalora`` need the base model and the training data, so the audit
job (CPU, seconds) does not place them: their own job runs PEFT's allocator
(:mod:`gradience.allocate`) on this seed's training order, rescales its ranks to the
tournament's budget with their shape kept (:func:`gradience.experiment.allocation.fit_allocation`)
and writes ``ranks/<variant>.json`` before training at those ranks from the same paired
initialisation as every other variant: only where and how much rank goes differs.
"""

from __future__ import annotations

from collections.abc import Mapping

from gradience.experiment import allocation, plan
from gradience.experiment.variants import make_pattern, module_shapes
from gradience.io import read_model, write_model
from gradience.results import AuditResult, RankPattern
from gradience.tasks import TaskData

RULES = {
    "alloc_eva": "PEFT's EVA rank redistribution on this seed's training batches (ranks only)",
    "alloc_adalora": "PEFT's AdaLoRA final rank masks after its own training (ranks only)",
}


def raw_ranks(ctx: plan.RunContext, seed: int, variant: str, task_data: TaskData) -> dict[str, int]:
    """The allocator's own ranks per module (before any rescaling), from PEFT's code."""
    from gradience.models import release_memory

    try:
        if variant == "alloc_eva":
            from gradience.allocate import eva_ranks_for_config

            return eva_ranks_for_config(ctx.cfg, seed, task_data=task_data)
        from gradience.allocate import adalora_ranks

        return adalora_ranks(ctx.cfg, seed, task_data=task_data)
    finally:
        release_memory()


def write_allocated_ranks(
    ctx: plan.RunContext,
    seed: int,
    variant: str,
    per_layer: Mapping[str, int],
    task_data: TaskData,
    reuse: bool = False,
) -> dict[str, int]:
    """Allocate, fit to the budget (checked within tolerance), write the rank file; the ranks.

    ``reuse``: the job resumes with the same inputs, so a rank file it wrote is current (the
    allocators are deterministic given the seed): read it instead of allocating again.
    """
    path = plan.ranks_file(ctx.run_dir, seed, variant)
    if reuse and path.is_file():
        return dict(read_model(path, RankPattern).ranks)
    audit = read_model(plan.audit_file(ctx.run_dir, seed), AuditResult)
    fitted = allocation.fit_allocation(
        audit, ctx.cfg, per_layer, raw_ranks(ctx, seed, variant, task_data), variant
    )
    allocation.check_budget(variant, fitted)
    rule = f"{RULES[variant]}, rescaled to {fitted.budget:,} parameters"
    pattern = make_pattern(
        variant, rule, fitted.ranks, module_shapes(audit), ctx.cfg, fitted.budget
    )
    write_model(path, pattern)
    return dict(pattern.ranks)
