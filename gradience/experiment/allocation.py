"""The allocation tournament's rank patterns: every allocator at one parameter budget (pure).

``compression.budget`` names the budget (:func:`gradience.ranks.budget.budget_from`): the
parameters of the audit's per_layer ranks (default), or a fraction of the probe's. Each data-free
``alloc_<name>`` variant is :func:`gradience.ranks.allocators.allocate` of the seed's probe audit
at that budget, every rank in [1, lora.probe_r]; the model-dependent ones (``alloc_eva``,
``alloc_adalora``: :mod:`gradience.allocate`) are fitted to the same budget by their own jobs
(:func:`fit_allocation`). The tournament's null, the k within-type shuffles, moves the ranks of
:func:`shuffle_source`: per_layer itself at the per_layer budget (so every shuffle is exactly at
the budget), else ``alloc_energy``'s pattern at the fractional budget (every shuffle exactly at
its parameters, which lie within half a rank unit of the budget).
"""

from __future__ import annotations

from collections.abc import Mapping

from gradience.config import ExperimentConfig
from gradience.errors import GradienceError
from gradience.ranks.allocators import allocate
from gradience.ranks.budget import BudgetAllocation, BudgetError, budget_from, fit_to_budget
from gradience.results import ALLOCATOR_VARIANTS, MODEL_ALLOCATED_VARIANTS, AuditResult

#: An alloc_* pattern's parameters may differ from the budget by at most this share.
BUDGET_TOLERANCE = 0.02
PREFIX = "alloc_"


def energy_tau(cfg: ExperimentConfig) -> float:
    """alloc_energy's τ: the configured policy's when it is ``energy@τ``, else 0.90."""
    policy = cfg.compression.policy
    return float(policy.split("@", 1)[1]) if policy.startswith("energy@") else 0.9


def tournament_budget(
    audit: AuditResult, cfg: ExperimentConfig, per_layer: Mapping[str, int]
) -> int:
    """The parameter budget ``compression.budget`` names, for this seed's audit."""
    shapes = {m.name: (m.d_in, m.d_out) for m in audit.modules}
    probe = {m.name: m.r for m in audit.modules}
    try:
        return budget_from(cfg.compression.budget, per_layer, probe, shapes)
    except ValueError as exc:
        raise GradienceError(str(exc), field="compression.budget") from None


def _allocation(
    audit: AuditResult, cfg: ExperimentConfig, name: str, budget: int
) -> BudgetAllocation:
    try:
        return allocate(audit, name, budget, r_max=cfg.lora.probe_r, tau=energy_tau(cfg))
    except (BudgetError, ValueError) as exc:
        raise GradienceError(f"alloc_{name}: {exc}", field="compression.budget") from None


def data_free_allocations(
    audit: AuditResult, cfg: ExperimentConfig, per_layer: Mapping[str, int]
) -> dict[str, BudgetAllocation]:
    """Every data-free ``alloc_*`` variant the config lists, at the budget."""
    budget = tournament_budget(audit, cfg, per_layer)
    return {
        variant: _allocation(audit, cfg, variant.removeprefix(PREFIX), budget)
        for variant in cfg.compression.variants
        if variant in ALLOCATOR_VARIANTS and variant not in MODEL_ALLOCATED_VARIANTS
    }


def shuffle_source(
    audit: AuditResult, cfg: ExperimentConfig, per_layer: Mapping[str, int]
) -> tuple[str, dict[str, int]]:
    """The pattern the within-type k shuffles move, and its name (see the module docstring)."""
    if cfg.compression.budget == "per_layer":
        return "per_layer", dict(per_layer)
    budget = tournament_budget(audit, cfg, per_layer)
    return "alloc_energy", dict(_allocation(audit, cfg, "energy", budget).ranks)


def fit_allocation(
    audit: AuditResult,
    cfg: ExperimentConfig,
    per_layer: Mapping[str, int],
    raw_ranks: Mapping[str, int],
    variant: str,
) -> BudgetAllocation:
    """A model-dependent allocator's raw ranks (every audited module; 0 allowed) rescaled to
    the budget with their shape kept, every rank in [1, lora.probe_r]."""
    missing = sorted(m.name for m in audit.modules if m.name not in raw_ranks)
    if missing:
        raise GradienceError(
            f"{variant} named no rank for {len(missing)} audited module(s), e.g. {missing[:3]}",
            field="compression.variants",
        )
    shapes = {m.name: (m.d_in, m.d_out) for m in audit.modules}
    # a module the allocator dropped keeps the smallest preference, not none: ranks stay >= 1
    weights = {m.name: float(raw_ranks[m.name]) or 0.5 for m in audit.modules}
    budget = tournament_budget(audit, cfg, per_layer)
    try:
        return fit_to_budget(weights, shapes, budget, cfg.lora.probe_r)
    except (BudgetError, ValueError) as exc:
        raise GradienceError(f"{variant}: {exc}", field="compression.budget") from None


def check_budget(variant: str, allocation: BudgetAllocation) -> None:
    """An alloc_* pattern trains within BUDGET_TOLERANCE of the budget, or the run stops."""
    if abs(allocation.ratio - 1.0) > BUDGET_TOLERANCE:
        raise GradienceError(
            f"{variant} trains {allocation.params:,} LoRA parameters against a budget of "
            f"{allocation.budget:,} (ratio {allocation.ratio:.3f}, allowed ±{BUDGET_TOLERANCE:.0%})",
            field="compression.budget",
        )
