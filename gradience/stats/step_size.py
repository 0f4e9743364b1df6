"""How strongly a variant's update size depends on rank: the step-size side of placement.

Under Adam the size of the update s·B·A a LoRA module makes grows with its rank unless the
scaling compensates (about √r under a constant α/r). Placing rank then also places an
effective learning rate, and a placement effect could be a step-size effect. The measure
is the slope of log ‖s·B·A‖_F on log r with one intercept per group: 0 means update size
does not depend on rank, 0.5 that it grows like √r.

* per variant: groups are module types (q_proj's norms compared only with other q_proj's),
  pooled over seeds;
* across variants (``pooled_dependence``): groups are (seed, module), so one module trained at
  different ranks by different variants of a seed is compared with itself: the cleanest
  reading of what rank alone does to the update's size.

Both are computed over *trained* variants only: the truncation arm's variants
(:data:`gradience.results.TRUNCATED_VARIANTS`) took no optimiser step; their norms are the
probe's spectrum cut at each rank, which grows with rank by construction and says nothing about
step size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from gradience.results import TRUNCATED_VARIANTS, AggregatedResults, RankDependence

#: Variants evaluated without training (0 steps): left out of every step-size slope.
EVALUATION_ONLY = frozenset(TRUNCATED_VARIANTS)


def module_type(name: str) -> str:
    """Last component of a module name: 'model.layers.3.self_attn.q_proj' -> 'q_proj'."""
    return name.rsplit(".", 1)[-1]


def rank_slope(points: list[tuple[str, int, float]]) -> RankDependence:
    """Within-group OLS slope of log norm on log rank over (group, rank, norm) points."""
    usable = [(g, r, n) for g, r, n in points if r > 0 and n > 0 and math.isfinite(n)]
    dropped = len(points) - len(usable)
    by_group: dict[str, list[tuple[float, float]]] = {}
    for group, rank, norm in usable:
        by_group.setdefault(group, []).append((math.log(rank), math.log(norm)))
    xs, ys = [], []
    for pairs in by_group.values():
        x = np.array([p[0] for p in pairs])
        y = np.array([p[1] for p in pairs])
        xs.append(x - x.mean())
        ys.append(y - y.mean())
    x = np.concatenate(xs) if xs else np.array([])
    y = np.concatenate(ys) if ys else np.array([])
    spread = float(x @ x)
    if spread <= 1e-12:
        return RankDependence(
            slope=None,
            n_modules=len(usable),
            reason="no rank variation within a group: the slope is undefined",
        )
    reason = f"{dropped} module(s) with a zero or non-finite norm left out" if dropped else None
    return RankDependence(slope=float(x @ y) / spread, n_modules=len(usable), reason=reason)


def variant_points(
    ranks: Mapping[str, int], norms: Mapping[str, float], group_prefix: str | None = None
) -> list[tuple[str, int, float]]:
    """(group, rank, norm) per module: the group is its type, or ``prefix:name`` when given."""
    return [
        (
            module_type(n) if group_prefix is None else f"{group_prefix}:{n}",
            int(ranks[n]),
            float(norms[n]),
        )
        for n in ranks
        if n in norms
    ]


def update_norm_dependence(results: AggregatedResults) -> dict[str, RankDependence]:
    """One RankDependence per trained variant whose runs recorded ranks and update norms."""
    out: dict[str, RankDependence] = {}
    for variant, aggregate in results.variants.items():
        if variant in EVALUATION_ONLY:
            continue
        points: list[tuple[str, int, float]] = []
        for run in aggregate.runs.values():
            if run.ranks and run.update_norms:
                points += variant_points(run.ranks, run.update_norms)
        if points:
            out[variant] = rank_slope(points)
    return out


def pooled_dependence(results: AggregatedResults) -> RankDependence:
    """Every trained variant together, one intercept per (seed, module): a module against
    itself (the truncation arm's evaluation-only variants left out)."""
    points: list[tuple[str, int, float]] = []
    for variant, aggregate in results.variants.items():
        if variant in EVALUATION_ONLY:
            continue
        for seed, run in aggregate.runs.items():
            if run.ranks and run.update_norms:
                points += variant_points(run.ranks, run.update_norms, group_prefix=seed)
    return rank_slope(points)
