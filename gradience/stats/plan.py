"""The power plan of a mechanism test, before any training (``gradience mechanism power``).

For each primary contrast of the verdict (:mod:`gradience.stats.verdict`: compression efficacy
per_layer vs probe at ``compression_threshold``; placement per_layer vs
per_layer_shuffled_within_type, or the seed's shuffle standing in, at ``mechanism_threshold``),
at the configured seeds n and eval items N': the smallest difference the run can detect, and
the seeds needed to detect the threshold. Both are exactly what
:func:`gradience.stats.contrast.set_power` reports after the run: the one-sided paired t at
the family-wise level α/m (m primary contrasts), target power ``hypothesis.power``, from the
sd of the paired per-seed differences. So a plan from a pilot, at the pilot's own seeds and
items, gives the pilot analysis's ``min_detectable_effect``.

**Where the sd comes from.** A pilot run (its paired differences' sd, as the analysis
computes it), or the config's prior ``hypothesis.assumed_diff_sd`` at
``assumed_diff_sd_items`` items.

**Eval items.** The variants of one seed are scored on the same N fixed items, and the
per-seed difference is d = (1/N)·Σᵢ (aᵢ − bᵢ). Between two training runs an item's outcome
flips; if the two runs disagree on a share q of the items (the discordant fraction
(b + c)/N of McNemar), the item terms add about q/N to the variance of d (each term
aᵢ − bᵢ ∈ {−1, 0, 1} has variance at most its discordance; the bound is close when the
variants are close). That part shrinks with more items; the seed-to-seed part (one run
doing better or worse on every item) does not. So the variance at N' items is

    var' = var − q/N + q/N'.

The item part cannot exceed the whole variance: when var < q/N (an sd estimated from few
seeds, or discordances that repeat in every seed, which q/N counts but which do not vary
between seeds) all of var is taken as item noise and scaled by N/N', so var' stays positive:
var' = (var − i) + i·N/N' with i = min(q/N, var).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gradience.results import AggregatedResults
from gradience.stats.contrast import item_metric, paired_seeds
from gradience.stats.power import min_detectable_effect, paired_t_power, seeds_for_power
from gradience.stats.registered import PlannedContrast
from gradience.stats.seed_level import mean_diff


@dataclass(frozen=True)
class Variance:
    """The sd of a contrast's paired per-seed differences, at ``n_items`` eval items."""

    sd: float
    n_items: int
    discordant_fraction: float  # q: share of items the paired runs score differently
    source: str  # "pilot" or "prior"
    detail: str  # where exactly it comes from, in words


def rescale_sd(sd: float, n_items: int, new_items: int, discordant_fraction: float) -> float:
    """The sd at ``new_items`` eval items (module docstring: var' = var − i + i·N/N')."""
    if new_items == n_items:
        return sd
    var = sd * sd
    item_part = min(discordant_fraction / n_items, var)
    return math.sqrt(var - item_part + item_part * n_items / new_items)


def pilot_variance(
    results: AggregatedResults, contrast: PlannedContrast, metric: str, source: str
) -> Variance:
    """The sd of the pilot's paired differences (as ``compare`` computes it) and its mean
    discordant fraction over the paired seeds. Raises ValueError naming the key when the pilot
    cannot give them (variant missing, fewer than 2 paired seeds, zero sd)."""
    for variant in (contrast.a, contrast.b):
        if variant not in results.variants:
            raise ValueError(
                f"variants.{variant}: not in the pilot run; the primary contrast "
                f"{contrast.name} needs it (the pilot must run the config's variants)"
            )
    seeds = paired_seeds(results, contrast.a, contrast.b)
    runs_a, runs_b = results.variants[contrast.a].runs, results.variants[contrast.b].runs
    diff = mean_diff(
        [float(getattr(runs_a[s], metric)) for s in seeds],
        [float(getattr(runs_b[s], metric)) for s in seeds],
    )
    if diff.sd is None or diff.sd <= 0:
        raise ValueError(
            f"variants.{contrast.b}.runs: {contrast.name} has {len(seeds)} paired seed(s) and sd "
            f"{diff.sd}; a pilot needs at least 2 paired seeds with differences that vary"
        )
    n_items = len(results.eval_item_ids)
    strict = item_metric(results, contrast.a, contrast.b, seeds, metric) == "strict_match"
    fractions = []
    for seed in seeds:
        if strict:
            a, b = runs_a[seed].item_strict_correct or [], runs_b[seed].item_strict_correct or []
        else:
            a, b = runs_a[seed].item_correct, runs_b[seed].item_correct
        fractions.append(sum(x != y for x, y in zip(a, b, strict=True)) / n_items)
    q = sum(fractions) / len(fractions)
    return Variance(
        sd=diff.sd,
        n_items=n_items,
        discordant_fraction=q,
        source="pilot",
        detail=f"pilot {source}: sd over {len(seeds)} paired seeds at {n_items} items, "
        f"discordant fraction {q:.3f}",
    )


def prior_variance(sd: float, n_items: int, discordant_fraction: float) -> Variance:
    return Variance(
        sd=sd,
        n_items=n_items,
        discordant_fraction=discordant_fraction,
        source="prior",
        detail=f"prior hypothesis.assumed_diff_sd = {sd:g} at {n_items} items "
        f"(assumed_diff_sd_items), discordant fraction {discordant_fraction:g} "
        "(assumed_discordant_fraction)",
    )


@dataclass(frozen=True)
class ContrastPlan:
    """One primary contrast's power at the planned seeds and items (None: undefined)."""

    name: str
    role: str
    threshold: float
    sd: float
    detectable_effect: float | None
    seeds_needed: int | None
    seeds_needed_reason: str | None
    power_at_threshold: float | None
    variance_source: str
    variance_detail: str
    n_seeds: int
    n_eval_items: int
    level: float
    power: float

    @property
    def detectable(self) -> bool:
        """The threshold is detectable with the target power at the planned seeds."""
        return self.detectable_effect is not None and self.detectable_effect <= self.threshold


def plan_contrast(
    contrast: PlannedContrast,
    threshold: float,
    variance: Variance,
    *,
    n_seeds: int,
    n_eval_items: int,
    level: float,
    power: float,
) -> ContrastPlan:
    """The plan of one contrast, with :func:`gradience.stats.contrast.set_power`'s definitions."""
    sd = rescale_sd(variance.sd, variance.n_items, n_eval_items, variance.discordant_fraction)
    needed = seeds_for_power(threshold / sd if threshold > 0 else None, level, power)
    reason = needed.reason if threshold > 0 else "the threshold is not positive"
    return ContrastPlan(
        name=contrast.name,
        role=contrast.role,
        threshold=threshold,
        sd=sd,
        detectable_effect=min_detectable_effect(sd, n_seeds, level, power),
        seeds_needed=needed.n,
        seeds_needed_reason=reason,
        power_at_threshold=(
            paired_t_power(threshold / sd, n_seeds, level)
            if n_seeds >= 2 and threshold > 0
            else None
        ),
        variance_source=variance.source,
        variance_detail=variance.detail,
        n_seeds=n_seeds,
        n_eval_items=n_eval_items,
        level=level,
        power=power,
    )
