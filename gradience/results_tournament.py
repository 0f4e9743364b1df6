"""The ``tournament`` section of ``mechanism_analysis.json``: every allocator against random placement.

Written by :func:`gradience.stats.tournament.tournament_section`, whose docstring defines each
statistic; rendered by :mod:`gradience.report.tournament`. Every field is optional or defaulted
where it can be undefined, and a ``None`` value comes with a ``reason``: the section never
carries a made-up number. Kept apart from :mod:`gradience.results` (whose ``MechanismAnalysis``
holds it as ``tournament``) so that each file stays readable.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gradience.results_base import _Result

TournamentOutcome = Literal["allocators_beat_random", "no_allocator_beats_random", "undetermined"]


class TournamentEntry(_Result):
    """One allocator (or control) at the budget, judged by its rank among the shuffles."""

    variant: str = Field(description="The variant's name, e.g. alloc_energy or per_layer.")
    allocator: str = Field(
        description="The allocator: the name after 'alloc_' (energy, eva, ...), else the variant."
    )
    seeds: list[str] = Field(
        default_factory=list,
        description="Seeds where the entry and at least one shuffle finished (the test's seeds).",
    )
    seed_ranks: dict[str, int] = Field(
        default_factory=dict,
        description="Per seed: 1 + the number of that seed's shuffles scoring >= the entry "
        "(1 = better than every shuffle; ties count against the entry).",
    )
    k_per_seed: dict[str, int] = Field(
        default_factory=dict, description="Per seed: the number of shuffles the rank is among."
    )
    rank_sum: int | None = Field(None, description="Sum of seed_ranks (the test statistic).")
    p: float | None = Field(
        None,
        description="One-sided exact p: P(rank sum <= observed) when each seed's rank is "
        "uniform on 1..k_s+1, independently across seeds.",
    )
    p_holm: float | None = Field(None, description="p Holm-adjusted over the tournament's entries.")
    passes: bool | None = Field(
        None, description="p_holm < alpha: the entry beats random placement (null: no p)."
    )
    min_p: float | None = Field(
        None, description="The smallest p this entry's seeds can give: prod_s 1/(k_s + 1)."
    )
    mean_accuracy: float | None = Field(None, description="Mean of the metric over `seeds`.")
    diffs: list[float] = Field(
        default_factory=list,
        description="Per seed (in `seeds` order): entry minus the mean of that seed's shuffles.",
    )
    mean_diff_vs_shuffles: float | None = Field(None, description="Mean of `diffs`.")
    ci95: tuple[float, float] | None = Field(
        None, description="95% t interval of mean_diff_vs_shuffles over seeds (needs >= 2)."
    )
    percentile: float | None = Field(
        None,
        description="Share (%) of shuffles whose seed-mean score lies below the entry's (ties "
        "count half), over the seeds where the entry and every shuffle finished.",
    )
    param_ratio: float | None = Field(
        None,
        description="Mean over seeds of the entry's trainable parameters / the shuffles' (the "
        "budget) at that seed.",
    )
    update_size_ratio: float | None = Field(
        None,
        description="Mean over seeds of the entry's total update size / the shuffles' mean total, "
        "total = sqrt(sum over modules of ||s·B·A||_F^2) (the whole adapter's update, Frobenius).",
    )
    update_size_slope: float | None = Field(
        None,
        description="Slope of log ||s·B·A||_F on log r within module type over the entry's "
        "modules and seeds (gradience.stats.step_size.rank_slope): 0 = size independent of rank.",
    )
    reason: str | None = Field(
        None, description="Why a field above is null ('; '-separated when several)."
    )


class Tournament(_Result):
    """The allocators' leaderboard and the decision: which of them beats random placement?"""

    metric: str = Field(description="The score compared (the analysis's primary metric).")
    null: str = Field(description="The null hypothesis each entry is tested against, in words.")
    combination: str = Field(description="How the per-seed ranks are combined, named.")
    k: int = Field(description="Number of within-type shuffle variants (the null's size).")
    seeds: list[str] = Field(
        default_factory=list, description="Seeds where at least one shuffle finished."
    )
    k_per_seed: dict[str, int] = Field(
        default_factory=dict, description="Shuffles that finished, per seed."
    )
    min_p: float | None = Field(
        None,
        description="The smallest p the design can reach: prod over `seeds` of 1/(k_s + 1) "
        "(null without shuffles).",
    )
    alpha: float = Field(description="hypothesis.alpha: an entry passes when p_holm < alpha.")
    budget_params: dict[str, int] = Field(
        default_factory=dict,
        description="Per seed: the shuffles' trainable parameters, the budget every entry is "
        "matched to (the per_layer pattern's count, which differs between seeds' audits).",
    )
    shuffle_diffs: dict[str, float] = Field(
        default_factory=dict,
        description="Per shuffle: its mean over seeds of (its score - the shuffles' mean at that "
        "seed), over the seeds where every shuffle finished: the spread of random placement.",
    )
    entries: list[TournamentEntry] = Field(
        default_factory=list,
        description="The leaderboard: mean_diff_vs_shuffles descending (undefined last).",
    )
    outcome: TournamentOutcome = Field(
        description="allocators_beat_random (winners below), no_allocator_beats_random, or "
        "undetermined (no shuffles, no p, or a design whose min_p cannot pass Holm)."
    )
    winners: list[str] = Field(default_factory=list, description="Entries that pass.")
    summary: str = Field(description="The outcome in one sentence, with min_p, k and seeds.")
    notes: list[str] = Field(default_factory=list)
