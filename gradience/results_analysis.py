"""``mechanism_analysis.json`` and ``analysis_plan.json``: part of the one schema of
:mod:`gradience.results`, which re-exports every model here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gradience.results_base import _Result, _Versioned
from gradience.results_tournament import Tournament

# ---------------------------------------------------------------- analysis


class TestStat(_Result):
    statistic: float | None
    p: float | None
    reason: str | None = None


class McNemar(_Result):
    b: int = Field(description="Items A got right and B wrong.")
    c: int = Field(description="Items B got right and A wrong.")
    p: float


class PooledItemTest(_Result):
    method: str
    p: float | None
    ci95: tuple[float, float] | None
    reason: str | None = None
    estimate: float | None = Field(
        None, description="Observed mean item difference A - B (over seeds)."
    )
    resamples: int | None = Field(None, description="Bootstrap resamples.")
    rng_seed: int | None = Field(None, description="Bootstrap RNG seed (fixed: reruns agree).")


class ItemLevel(_Result):
    mcnemar: dict[str, McNemar]
    pooled: PooledItemTest


class Contrast(_Result):
    a: str
    b: str
    n_seeds: int
    mean_diff: float | None
    ci95: tuple[float, float] | None
    paired_t: TestStat
    welch_t: TestStat
    cohens_d: float | None
    cohens_dz: float | None
    holm_p: float | None
    item_level: ItemLevel
    seeds_for_80pct_power: int | None
    notes: list[str] = Field(default_factory=list)
    seeds: list[int | str] = Field(default_factory=list, description="The paired seeds used.")
    values_a: list[float] = Field(
        default_factory=list, description="A's per-seed scores, in `seeds` order."
    )
    values_b: list[float] = Field(
        default_factory=list, description="B's per-seed scores, in `seeds` order."
    )
    sd_diff: float | None = Field(None, description="Sample sd (ddof=1) of the paired differences.")
    threshold: float | None = Field(
        None, description="The hypothesis threshold this contrast is judged against."
    )
    power_at_threshold: float | None = Field(
        None,
        description="Power of the paired t at n_seeds for a true difference = threshold (observed sd).",
    )
    seeds_for_80pct_power_at_threshold: int | None = Field(
        None,
        description="Seeds for the target power at a true difference = threshold (observed sd).",
    )
    holm_family: bool = Field(
        False, description="Whether holm_p corrects over the primary contrasts."
    )
    param_ratio: float | None = Field(
        None, description="Mean trainable parameters of a / of b over the paired seeds."
    )
    role: str | None = Field(
        None, description="What the contrast stands for in the verdict, in words."
    )
    primary: bool | None = Field(
        None,
        description="In the primary family (Holm, the verdict's error rate). Files before schema 3 "
        "leave it null: read holm_family.",
    )
    outcome: Literal["pass", "fail", "undetermined"] | None = Field(
        None,
        description="The decision rule's outcome (gradience.stats.verdict) for a contrast the "
        "verdict judges; null for exploratory contrasts.",
    )
    decision_ci: tuple[float, float] | None = Field(
        None,
        description="The family-wise interval: two-sided at decision_confidence = 1 - 2*alpha/m "
        "(m primary contrasts); its upper end is the one-sided bound at alpha/m that FAIL reads. "
        "With m = 2 and alpha = 0.05 it is the 95% CI.",
    )
    decision_confidence: float | None = Field(None, description="Confidence of decision_ci.")
    decision_level: float | None = Field(
        None,
        description="One-sided level the power figures use: alpha/m in the primary family "
        "(the hardest Holm step), alpha for a fixed-sequence contrast.",
    )
    min_detectable_effect: float | None = Field(
        None,
        description="Smallest true difference the one-sided paired t detects with the target "
        "power at decision_level, from the observed sd of the paired differences and n_seeds.",
    )
    item_level_metric: str | None = Field(
        None, description="The metric item_level scores (null in older files: exact_match)."
    )
    item_level_exact_match: ItemLevel | None = Field(
        None,
        description="Item-level tests on exact_match as well, when the primary metric is strict_match.",
    )
    failures_as_loss: TestStat | None = Field(
        None,
        description="Sensitivity when a seed has one variant failed: the failed run scored 0 "
        "(a loss) instead of the seed being dropped; statistic = mean difference, p = one-sided "
        "paired t p. Null when no seed lost exactly one of the two variants.",
    )
    failures_as_loss_ci95: tuple[float, float] | None = Field(
        None, description="The 95% t interval of that sensitivity difference."
    )

    def is_primary(self) -> bool:
        """Whether the contrast is in the primary family (older files: its Holm membership)."""
        return self.holm_family if self.primary is None else self.primary


VerdictLabel = Literal[
    "real_mechanism", "heterogeneity_only", "compression_only", "no_benefit", "inconclusive"
]


class Verdict(_Result):
    label: VerdictLabel
    reasons: list[str]
    alpha_policy: str | None = Field(
        None, description="The alpha policy the verdict is conditional on."
    )


class Placement(_Result):
    """How much a placement contrast could even see in this run."""

    seed_rule_changed_fraction: float | None = Field(
        description="Fraction of modules whose rank the seed's shuffle changes (mean over seeds)."
    )
    within_type_changed_fraction: float | None = Field(
        description="The same for the within-type (parameter-matched) shuffle."
    )
    within_type_moved_fraction: float | None = Field(
        None,
        description="Share of per_layer's LoRA parameters the within-type shuffle puts in another "
        "module: sum |r_pl - r_sh|*(d_in + d_out) / (2 * per_layer's parameters), mean over seeds; "
        "null when the results carry no rank patterns or shapes.",
    )
    min_moved_fraction: float | None = Field(
        None,
        description="hypothesis.min_moved_fraction: below it a placement FAIL is undetermined.",
    )
    shuffle_permutation_significant: bool | None = Field(
        None, description="shuffle_permutation_p <= alpha (null without per_layer_shuffled_k)."
    )
    rank_agreement_across_seeds: float | None = Field(
        description="Mean Spearman correlation of per_layer's ranks between pairs of seeds."
    )
    shuffle_percentile: float | None = Field(
        description="per_layer's percentile among the k shuffles (mean accuracy over seeds); "
        "null without per_layer_shuffled_k."
    )
    shuffle_permutation_p: float | None = Field(
        None, description="(1 + shuffles scoring >= per_layer) / (k + 1); null without shuffles."
    )
    min_detectable_effect: float | None = Field(
        None,
        description="Smallest true placement difference the decision contrast detects with the "
        "target power, from its observed sd of paired differences and number of seeds.",
    )
    threshold: float | None = Field(None, description="hypothesis.mechanism_threshold.")
    decision_contrast: str | None = Field(
        None, description="The contrast placement was decided on."
    )
    notes: list[str] = Field(default_factory=list)


class RankDependence(_Result):
    """How strongly the size of a variant's update depends on its modules' ranks."""

    slope: float | None = Field(
        description="Slope of log ‖s·B·A‖_F on log r, within module type, pooled over seeds "
        "(0: update size independent of rank; 0.5: grows like √r)."
    )
    n_modules: int
    reason: str | None = None


class RegisteredPlan(_Versioned):
    """``analysis_plan.json``: the plan a run registers before its first seed trains
    (:mod:`gradience.stats.registered`)."""

    plan_hash: str
    plan: dict[str, object]


class MechanismAnalysis(_Versioned):
    contrasts: dict[str, Contrast]
    verdict: Verdict
    inputs: dict[str, object]
    placement: Placement | None = None
    update_norm_vs_rank: dict[str, RankDependence] = Field(default_factory=dict)
    plan_hash: str | None = Field(
        None,
        description="Hash of the analysis plan these settings give (gradience.stats.registered).",
    )
    registered_plan_hash: str | None = Field(
        None,
        description="Hash of the plan the run registered before its first seed (analysis_plan.json); "
        "null: none registered (a run before schema 3, or results analysed without their folder).",
    )
    sequential: dict[str, object] | None = Field(
        None, description="The sequential rule's summary (null: a fixed-sample analysis)."
    )
    looks: list[dict[str, object]] = Field(
        default_factory=list,
        description="Every sequential look: seeds so far, the boundary, each contrast's statistic, "
        "p-values and decision.",
    )
    tournament: Tournament | None = Field(
        None,
        description="Every allocator at one parameter budget against the within-type shuffles "
        "(schema 3, optional; null: no alloc_* variant ran).",
    )
