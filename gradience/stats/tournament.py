"""The allocation tournament: does any allocator beat random placement at one parameter budget?

Pure statistics over an :class:`~gradience.results.AggregatedResults` (no I/O); the result is
the ``tournament`` section (:class:`~gradience.results_tournament.Tournament`).

**Entries.** Every ``alloc_<name>`` variant, plus ``per_layer`` (the audit's allocator at its
own budget), ``per_layer_crossfit``, ``uniform_matched`` and ``per_layer_reversed`` when they
ran. A run without any ``alloc_*`` variant is not a tournament: the section is ``None``.

**The null.** The within-type shuffles ``per_layer_shuffled_k<i>`` of the same seed: per_layer's
rank multiset permuted among modules of one type (same name suffix and shape), so each holds
exactly the budget's parameters and differs only in *where* the ranks go. H0 for an entry: it
scores like a random within-type placement at the budget, i.e. its score and that seed's
``k_s`` shuffle scores are exchangeable. An allocator also chooses its own amounts (its rank
multiset); a pass therefore says "this allocation, amounts and places, beats a random
placement of the audit's amounts at the same budget". A fixed allocation (``alloc_depth``)
carries a fixed effect of its own, so the question is its rank among the shuffles, not whether
it differs from their average. An entry off the budget (``param_ratio`` away from 1, e.g.
``uniform_matched`` within its band) is tested all the same: its capacity difference is not
removed, so read ``param_ratio`` beside its p.

**Per seed.** The entry's rank among that seed's shuffles, ``r_s = 1 + #{shuffles scoring >=
the entry}`` (1 = better than every shuffle). Ties count against the entry (conservative):
under H0 with ties broken at random the rank is exactly uniform on 1..k_s+1; counting ties as
losses only makes it larger, so the p below is valid with discrete accuracies (possibly
conservative): it never credits the entry with a tie.

**Across seeds** (``COMBINATION``). Seeds are independent training runs, so under H0 the
``r_s`` are independent and uniform on 1..k_s+1. The statistic is the rank sum ``T = sum_s
r_s``; its null distribution, the sum of independent discrete uniforms, is computed exactly by
integer convolution (:func:`rank_sum_counts`). One-sided p = P(T <= observed): small when the
entry ranks near the top in every seed. With one seed it is the permutation p (1 + #shuffles
>= entry) / (k + 1) of :func:`gradience.stats.placement.shuffle_percentile`. The smallest p the
design can reach (every seed ranks the entry first) is ``min_p = prod_s 1/(k_s + 1)``, i.e.
(1/(k+1))^S with k shuffles at each of S seeds.

**Multiplicity.** Holm over every entry of the tournament at ``alpha`` (an entry whose p is
undefined counts in the family as p = 1, as in :func:`gradience.stats.contrast.holm`); an entry
passes when ``p_holm < alpha``. Since Holm's first step multiplies the smallest p by the
number of entries m, no entry can pass when ``m * min_p >= alpha``: the outcome is then
``undetermined``, never "no allocator beats random placement".

**Description** (does not decide): the mean score over the test's seeds; the paired
difference from the shuffles' mean per seed with its mean and 95% t interval over seeds
(:func:`gradience.stats.seed_level.mean_diff`; needs 2 seeds); the percentile among the
shuffles (seed means over the seeds where the entry and every shuffle finished: share below,
ties half, as the placement section's); ``param_ratio``, the mean over seeds of the entry's
trainable parameters over the shuffles' (the budget); ``update_size_ratio``, the mean over
seeds of the entry's total update size over the shuffles' mean total, with total =
sqrt(sum_modules ||s·B·A||_F^2), the Frobenius norm of the whole adapter's update (1: the
entry moved the weights as far as random placement did); ``update_size_slope``, the slope of
log ||s·B·A||_F on log r within module type over the entry's modules and seeds
(:func:`gradience.stats.step_size.rank_slope`). Every undefined value is ``None`` with a
``reason``. The leaderboard orders entries by the mean difference, descending.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction

import numpy as np

from gradience.results import AggregatedResults, VariantRun
from gradience.results_tournament import Tournament, TournamentEntry, TournamentOutcome
from gradience.stats.contrast import holm_adjust
from gradience.stats.placement import PER_LAYER, SHUFFLE_K_PREFIX
from gradience.stats.seed_level import mean_diff
from gradience.stats.step_size import rank_slope, variant_points

ALLOCATOR_PREFIX = "alloc_"
#: Non-``alloc_`` variants judged in the tournament beside the allocators, when they ran.
CONTROL_ENTRIES = (PER_LAYER, "per_layer_crossfit", "uniform_matched", "per_layer_reversed")
COMBINATION = (
    "rank sum over seeds, exact null: the sum of independent discrete uniforms on 1..k_s+1 "
    "(integer convolution); one-sided p = P(sum <= observed)"
)
NULL = (
    "the entry scores like a random within-type placement at the budget: in each seed its "
    "score and the k_s within-type shuffles' are exchangeable, so its rank among them is "
    "uniform on 1..k_s+1, independently across seeds"
)


# ---------------------------------------------------------------- the exact null


def seed_rank(score: float, shuffle_scores: Sequence[float]) -> int:
    """1 + the number of shuffles scoring >= ``score`` (1 = best; ties count against it)."""
    return 1 + sum(other >= score for other in shuffle_scores)


def rank_sum_counts(sizes: Sequence[int]) -> list[int]:
    """``counts[t]``: how many rank tuples (r_1..r_S), r_s in 1..sizes[s], sum to S + t.

    Exact integers (Python ints never overflow); divided by prod(sizes) they are the null
    distribution of the rank sum. Each convolution step is a sliding-window sum.
    """
    counts = [1]
    for n in sizes:
        if n < 1:
            raise ValueError(f"every seed needs at least one possible rank, got {n}")
        prefix = [0]
        for c in counts:
            prefix.append(prefix[-1] + c)
        length = len(counts) + n - 1
        counts = [
            prefix[min(t + 1, len(counts))] - prefix[max(0, t - n + 1)] for t in range(length)
        ]
    return counts


def rank_sum_p(ranks: Sequence[int], sizes: Sequence[int]) -> float:
    """Exact one-sided P(T <= sum(ranks)) under independent uniform ranks on 1..sizes[s]."""
    if len(ranks) != len(sizes) or not ranks:
        raise ValueError("one rank per seed, at least one seed")
    for rank, n in zip(ranks, sizes, strict=True):
        if not 1 <= rank <= n:
            raise ValueError(f"rank {rank} outside 1..{n}")
    counts = rank_sum_counts(sizes)
    at_most = sum(counts[: sum(ranks) - len(ranks) + 1])
    return float(Fraction(at_most, math.prod(sizes)))


def min_p(sizes: Sequence[int]) -> float:
    """The smallest p the design can give: every seed ranks the entry first, prod 1/n_s."""
    return float(Fraction(1, math.prod(sizes)))


# ---------------------------------------------------------------- reading the results


def entry_variants(results: AggregatedResults) -> list[str]:
    """The tournament's entries: ``alloc_*`` variants (sorted), then the controls that ran."""
    allocators = sorted(v for v in results.variants if v.startswith(ALLOCATOR_PREFIX))
    return allocators + [v for v in CONTROL_ENTRIES if v in results.variants]


def shuffle_variants(results: AggregatedResults) -> list[str]:
    """The within-type shuffles ``per_layer_shuffled_k<i>``, in index order."""
    names = [v for v in results.variants if v.startswith(SHUFFLE_K_PREFIX)]
    return sorted(names, key=lambda v: (len(v), v))


def _seed_order(results: AggregatedResults) -> list[str]:
    listed = [str(s) for s in results.seeds]
    extra = {s for agg in results.variants.values() for s in agg.runs} - set(listed)
    return listed + sorted(extra)


def _shuffle_runs(
    results: AggregatedResults, shuffles: Sequence[str]
) -> dict[str, dict[str, VariantRun]]:
    """Per seed: {shuffle: run} for the shuffles that finished there (seeds with none left out)."""
    out: dict[str, dict[str, VariantRun]] = {}
    for seed in _seed_order(results):
        runs = {
            v: results.variants[v].runs[seed] for v in shuffles if seed in results.variants[v].runs
        }
        if runs:
            out[seed] = runs
    return out


def _total_update(run: VariantRun) -> float | None:
    if not run.update_norms:
        return None
    return math.sqrt(sum(n * n for n in run.update_norms.values()))


def _score(run: VariantRun, metric: str) -> float:
    return float(getattr(run, metric))


def _update_ratio(
    runs: Mapping[str, VariantRun], shuffle_runs: Mapping[str, Mapping[str, VariantRun]]
) -> tuple[float | None, str | None]:
    ratios = []
    for seed, run in runs.items():
        own = _total_update(run)
        others = [t for t in map(_total_update, shuffle_runs[seed].values()) if t]
        if own is not None and others:
            ratios.append(own / float(np.mean(others)))
    if not ratios:
        return None, "update size: no seed recorded update norms for the entry and a shuffle"
    return float(np.mean(ratios)), None


def _slope(runs: Mapping[str, VariantRun]) -> tuple[float | None, str | None]:
    points: list[tuple[str, int, float]] = []
    for run in runs.values():
        if run.ranks and run.update_norms:
            points += variant_points(run.ranks, run.update_norms)
    if not points:
        return None, "update-size slope: no ranks with update norms recorded"
    dependence = rank_slope(points)
    if dependence.slope is None:
        return None, f"update-size slope: {dependence.reason}"
    return dependence.slope, None


def _percentile(
    results: AggregatedResults, variant: str, shuffles: Sequence[str], metric: str
) -> tuple[float | None, str | None]:
    """The entry's seed mean among the shuffles' seed means (share below, ties half)."""
    seeds = set(results.variants[variant].runs)
    for name in shuffles:
        seeds &= set(results.variants[name].runs)
    if not seeds:
        return None, "percentile: no seed where the entry and every shuffle finished"

    def mean_score(name: str) -> float:
        runs = results.variants[name].runs
        return float(np.mean([_score(runs[s], metric) for s in sorted(seeds)]))

    own, others = mean_score(variant), [mean_score(name) for name in shuffles]
    below = sum(o < own for o in others) + 0.5 * sum(o == own for o in others)
    return 100.0 * below / len(others), None


def judge_entry(
    results: AggregatedResults,
    variant: str,
    shuffle_runs: Mapping[str, Mapping[str, VariantRun]],
    metric: str,
) -> TournamentEntry:
    """One entry's ranks, exact rank-sum p and description (p_holm is set by the section)."""
    allocator = variant.removeprefix(ALLOCATOR_PREFIX)
    own_runs = results.variants[variant].runs
    seeds = [s for s in shuffle_runs if s in own_runs]
    if not seeds:
        return TournamentEntry(
            variant=variant,
            allocator=allocator,
            reason="no seed where this entry and a within-type shuffle both finished",
        )
    runs = {s: own_runs[s] for s in seeds}
    scores = [_score(runs[s], metric) for s in seeds]
    shuffle_scores = {s: [_score(r, metric) for r in shuffle_runs[s].values()] for s in seeds}
    ranks = {s: seed_rank(score, shuffle_scores[s]) for s, score in zip(seeds, scores, strict=True)}
    sizes = [len(shuffle_scores[s]) + 1 for s in seeds]
    shuffle_means = [float(np.mean(shuffle_scores[s])) for s in seeds]
    difference = mean_diff(scores, shuffle_means)
    reasons = [f"ci95: {difference.reason}"] if difference.ci95 is None else []
    shuffles = sorted({v for s in seeds for v in shuffle_runs[s]})
    percentile, why_percentile = _percentile(results, variant, shuffles, metric)
    ratio, why_ratio = _update_ratio(runs, shuffle_runs)
    slope, why_slope = _slope(runs)
    reasons += [why for why in (why_percentile, why_ratio, why_slope) if why]
    budgets = [
        float(np.mean([r.trainable_params for r in shuffle_runs[s].values()])) for s in seeds
    ]
    return TournamentEntry(
        variant=variant,
        allocator=allocator,
        seeds=seeds,
        seed_ranks=ranks,
        k_per_seed={s: len(shuffle_scores[s]) for s in seeds},
        rank_sum=sum(ranks.values()),
        p=rank_sum_p(list(ranks.values()), sizes),
        min_p=min_p(sizes),
        mean_accuracy=float(np.mean(scores)),
        diffs=[a - b for a, b in zip(scores, shuffle_means, strict=True)],
        mean_diff_vs_shuffles=difference.mean,
        ci95=difference.ci95,
        percentile=percentile,
        param_ratio=float(
            np.mean([runs[s].trainable_params / b for s, b in zip(seeds, budgets, strict=True)])
        ),
        update_size_ratio=ratio,
        update_size_slope=slope,
        reason="; ".join(reasons) or None,
    )


def shuffle_spread(
    results: AggregatedResults, shuffles: Sequence[str], metric: str
) -> dict[str, float]:
    """Each shuffle's mean over seeds of (its score - the shuffles' mean at that seed), over the
    seeds where every shuffle finished: how far random placements land from their average."""
    seeds = [
        s for s in _seed_order(results) if all(s in results.variants[v].runs for v in shuffles)
    ]
    if not shuffles or not seeds:
        return {}
    table = np.array(
        [[_score(results.variants[v].runs[s], metric) for s in seeds] for v in shuffles]
    )
    return dict(zip(shuffles, (table - table.mean(axis=0)).mean(axis=1).tolist(), strict=True))


def _budgets(
    shuffle_runs: Mapping[str, Mapping[str, VariantRun]], notes: list[str]
) -> dict[str, int]:
    budgets = {}
    for seed, runs in shuffle_runs.items():
        counts = sorted({r.trainable_params for r in runs.values()})
        if len(counts) > 1:
            notes.append(
                f"seed {seed}: the shuffles' trainable parameters differ ({counts[0]:,} to "
                f"{counts[-1]:,}); the budget is their mean"
            )
        budgets[seed] = round(float(np.mean([r.trainable_params for r in runs.values()])))
    return budgets


def _leaderboard_key(entry: TournamentEntry) -> tuple[bool, float, str]:
    diff = entry.mean_diff_vs_shuffles
    return (diff is None, -(diff if diff is not None else 0.0), entry.variant)


def _outcome(
    entries: Sequence[TournamentEntry], design_min_p: float | None, alpha: float, k: int, n: int
) -> tuple[TournamentOutcome, str]:
    """The outcome and its sentence; ``entries`` in leaderboard order."""
    if design_min_p is None:
        return "undetermined", (
            "undetermined: no within-type shuffle (per_layer_shuffled_k) finished, so no "
            "allocator can be judged against random placement"
        )
    design = f"k = {k} shuffles, {n} seed(s): the smallest reachable p is {design_min_p:.3g}"
    if all(e.p is None for e in entries):
        return "undetermined", f"undetermined: no entry has a p ({design})"
    family = f"Holm over {len(entries)} entries at alpha = {alpha:g}"
    winners = [f"{e.variant} (p_holm = {e.p_holm:.3g})" for e in entries if e.passes]
    if winners:
        verb = "beats" if len(winners) == 1 else "beat"
        return "allocators_beat_random", (
            f"{', '.join(winners)} {verb} random placement at the budget ({family}; {design})"
        )
    if len(entries) * design_min_p >= alpha:
        return "undetermined", (
            f"undetermined: no entry could pass ({design}; {family} needs p < "
            f"{alpha / len(entries):.3g} for the best entry): add shuffles or seeds"
        )
    return "no_allocator_beats_random", f"no allocator beats random placement ({family}; {design})"


def tournament_section(results: AggregatedResults, metric: str, alpha: float) -> Tournament | None:
    """The ``tournament`` section (see the module docstring); None when no ``alloc_*`` ran."""
    names = entry_variants(results)
    if not any(name.startswith(ALLOCATOR_PREFIX) for name in names):
        return None
    shuffles = shuffle_variants(results)
    shuffle_runs = _shuffle_runs(results, shuffles)
    notes: list[str] = []
    entries = [judge_entry(results, name, shuffle_runs, metric) for name in names]
    adjusted = holm_adjust([e.p if e.p is not None else 1.0 for e in entries])
    for entry, p_holm in zip(entries, adjusted, strict=True):
        if entry.p is not None:
            entry.p_holm = float(p_holm)
            entry.passes = entry.p_holm < alpha
    sizes = [len(runs) + 1 for runs in shuffle_runs.values()]
    design_min_p = min_p(sizes) if sizes else None
    entries.sort(key=_leaderboard_key)
    outcome, summary = _outcome(entries, design_min_p, alpha, len(shuffles), len(sizes))
    return Tournament(
        metric=metric,
        null=NULL,
        combination=COMBINATION,
        k=len(shuffles),
        seeds=list(shuffle_runs),
        k_per_seed={s: len(runs) for s, runs in shuffle_runs.items()},
        min_p=design_min_p,
        alpha=alpha,
        budget_params=_budgets(shuffle_runs, notes),
        shuffle_diffs=shuffle_spread(results, shuffles, metric),
        entries=entries,
        outcome=outcome,
        winners=[e.variant for e in entries if e.passes],
        summary=summary,
        notes=notes,
    )
