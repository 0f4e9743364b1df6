"""Can this run even see placement? Pure summaries of the rank patterns and the shuffles.

* changed fractions: a shuffle that moves few modules' ranks cannot differ much from
  per_layer, whatever placement is worth;
* rank agreement across seeds: if the audit's per-module ranks do not replicate across seeds,
  "where the audit puts rank" is itself noise;
* moved share: how much of per_layer's parameters the within-type shuffle holds in other
  modules (a placement FAIL needs at least ``hypothesis.min_moved_fraction``);
* the k-shuffle percentile: per_layer against a null distribution of within-type placements
  (a permutation p-value, (1 + #shuffles >= per_layer) / (k + 1), significant at p <= α;
  with k shuffles it can be no smaller than 1/(k + 1));
* the smallest placement effect detectable at the target power and the decision's level,
  from the observed sd of the decision contrast's paired differences.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy import stats

from gradience.ranks import controls
from gradience.results import AggregatedResults, Contrast, Placement

PER_LAYER = "per_layer"
SEED_RULE_SHUFFLE = "per_layer_shuffled"
WITHIN_TYPE_SHUFFLE = "per_layer_shuffled_within_type"
SHUFFLE_K_PREFIX = "per_layer_shuffled_k"


def _paired_patterns(
    results: AggregatedResults, control: str
) -> list[tuple[dict[str, int], dict[str, int]]]:
    """(per_layer's ranks, ``control``'s ranks) for every seed where both recorded them."""
    if PER_LAYER not in results.variants or control not in results.variants:
        return []
    pairs = []
    for seed, run in results.variants[PER_LAYER].runs.items():
        other = results.variants[control].runs.get(seed)
        if run.ranks is not None and other is not None and other.ranks is not None:
            pairs.append((run.ranks, other.ranks))
    return pairs


def changed_fraction(results: AggregatedResults, control: str) -> float | None:
    """Mean over seeds of the fraction of modules whose rank differs between per_layer and ``control``."""
    fractions = [
        sum(mine[n] != theirs.get(n) for n in mine) / len(mine)
        for mine, theirs in _paired_patterns(results, control)
    ]
    return float(np.mean(fractions)) if fractions else None


def rank_agreement(results: AggregatedResults) -> tuple[float | None, str | None]:
    """Mean pairwise Spearman rho of per_layer's ranks across seeds, or None with a reason."""
    if PER_LAYER not in results.variants:
        return None, "no per_layer results"
    patterns = [r.ranks for r in results.variants[PER_LAYER].runs.values() if r.ranks]
    if len(patterns) < 2:
        return None, "rank agreement needs per_layer ranks from at least two seeds"
    rhos = []
    for first, second in combinations(patterns, 2):
        names = [n for n in first if n in second]
        x, y = [first[n] for n in names], [second[n] for n in names]
        if len(set(x)) < 2 or len(set(y)) < 2:
            continue  # a constant pattern has no ordering to agree with
        rhos.append(float(stats.spearmanr(x, y).statistic))
    if not rhos:
        return None, "per_layer gives every module the same rank: no ordering to compare"
    return float(np.mean(rhos)), None


def shuffle_percentile(
    results: AggregatedResults, metric: str
) -> tuple[float | None, float | None, str | None]:
    """per_layer's percentile among the k shuffles and the permutation p-value (seed means)."""
    shuffles = [v for v in results.variants if v.startswith(SHUFFLE_K_PREFIX)]
    if not shuffles or PER_LAYER not in results.variants:
        return None, None, "per_layer_shuffled_k did not run"
    seeds = set(results.variants[PER_LAYER].runs)
    for name in shuffles:
        seeds &= set(results.variants[name].runs)
    if not seeds:
        return None, None, "no seed where per_layer and every shuffle finished"

    def mean_score(variant: str) -> float:
        runs = results.variants[variant].runs
        return float(np.mean([getattr(runs[s], metric) for s in sorted(seeds)]))

    own = mean_score(PER_LAYER)
    others = [mean_score(name) for name in shuffles]
    below = sum(o < own for o in others) + 0.5 * sum(o == own for o in others)
    at_least = sum(o >= own for o in others)
    return 100.0 * below / len(others), (1 + at_least) / (len(others) + 1), None


def moved_fraction(results: AggregatedResults, control: str) -> float | None:
    """Mean over seeds of the share of per_layer's parameters ``control`` holds elsewhere
    (:func:`gradience.ranks.controls.moved_fraction`); None without ranks or module costs."""
    if results.module_costs is None:
        return None
    shares = [
        controls.moved_fraction(mine, theirs, results.module_costs)
        for mine, theirs in _paired_patterns(results, control)
    ]
    known = [share for share in shares if share is not None]
    return float(np.mean(known)) if known else None


def placement_summary(
    results: AggregatedResults,
    decision: Contrast | None,
    metric: str,
    alpha: float,
    threshold: float,
    min_moved: float,
) -> Placement:
    notes: list[str] = []
    agreement, why = rank_agreement(results)
    if why:
        notes.append(why)
    percentile, perm_p, why = shuffle_percentile(results, metric)
    if why:
        notes.append(f"shuffle percentile: {why}")
    mde = None if decision is None else decision.min_detectable_effect
    if decision is not None and mde is None:
        notes.append(
            "smallest detectable effect: needs >= 2 paired seeds and a positive sd of the "
            f"differences in {decision.a} vs {decision.b}"
        )
    for name, control in (("seed's", SEED_RULE_SHUFFLE), ("within-type", WITHIN_TYPE_SHUFFLE)):
        if changed_fraction(results, control) is None:
            notes.append(f"{name} shuffle changed fraction: no recorded ranks for {control}")
    moved = moved_fraction(results, WITHIN_TYPE_SHUFFLE)
    if moved is None and WITHIN_TYPE_SHUFFLE in results.variants:
        notes.append(
            "moved share of parameters: unknown (the results carry no rank patterns or module "
            "costs, as files written before schema 3): a placement FAIL is judged without it"
        )
    return Placement(
        seed_rule_changed_fraction=changed_fraction(results, SEED_RULE_SHUFFLE),
        within_type_changed_fraction=changed_fraction(results, WITHIN_TYPE_SHUFFLE),
        within_type_moved_fraction=moved,
        min_moved_fraction=min_moved,
        rank_agreement_across_seeds=agreement,
        shuffle_percentile=percentile,
        shuffle_permutation_p=perm_p,
        shuffle_permutation_significant=None if perm_p is None else perm_p <= alpha,
        min_detectable_effect=mde,
        threshold=threshold,
        decision_contrast=None if decision is None else f"{decision.a}_vs_{decision.b}",
        notes=notes,
    )
