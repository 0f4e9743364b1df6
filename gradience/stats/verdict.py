"""The verdict: which of the seed's scenarios the data support, or "inconclusive".

Contrasts (τ_E = hypothesis.compression_threshold, τ_M = hypothesis.mechanism_threshold,
α = hypothesis.alpha, d_min = hypothesis.min_effect_size):

* E, compression efficacy: per_layer vs probe.
* M, placement: per_layer vs per_layer_shuffled_within_type (ranks permuted only among modules
  of one name suffix and shape, so both train exactly as many parameters). The seed's shuffle
  (per_layer vs per_layer_shuffled) also moves rank between module types of different sizes;
  it stands in for M only when no within-type shuffle ran and its parameter ratio lies within
  0.95-1.05, and is otherwise secondary: reported with its ratio, outside the family.
* H, heterogeneity: per_layer vs uniform_matched (one uniform rank at per_layer's parameter
  budget), judged with τ_M at α as a fixed sequence after E passes and M fails. Its parameter
  ratio must lie within 0.95-1.05, else H is UNDETERMINED (a difference could be capacity).

**One family, one error rate.** The primary family is E and M (m = the number present: 2
whenever a placement contrast can be computed). For each primary contrast, over its paired
seeds:

* PASS   Holm-adjusted one-sided paired t p < α (significant against 0 at the family-wise
         level), the point estimate above τ, and for E Cohen's d > d_min: the seed's rule. The
         reason says whether the family-wise interval also excludes values below τ, or
         whether the rule passed on the point estimate alone.
* FAIL   the one-sided upper confidence bound at level α/m lies below τ: a benefit as large
         as the threshold is ruled out at the same family-wise error rate as PASS (with m = 2
         and α = 0.05 that bound is the upper end of the familiar two-sided 95% t interval).
         A placement FAIL also needs the shuffle to have moved enough of per_layer's
         parameters (``hypothesis.min_moved_fraction``; unknown for results without rank
         patterns, then judged without it): a shuffle that moves almost nothing cannot show
         that placement does not matter.
* UNDETERMINED   anything else (including any undefined statistic: < 2 seeds, zero
         variance, a missing variant); the reason says what the run could have detected.

The family-wise interval (``Contrast.decision_ci``) is the two-sided t interval at confidence
1 - 2α/m; H uses m = 1 (one-sided at α).

**Labels** (every contrast a label's sentence speaks about must be decided):

==========  ==========  ==============  ======================
E           M           H               label
==========  ==========  ==============  ======================
PASS        PASS        any             ``real_mechanism``
PASS        FAIL        PASS            ``heterogeneity_only``
PASS        FAIL        FAIL            ``compression_only``
PASS        FAIL        not run         ``compression_only`` (heterogeneity: not tested)
PASS        FAIL        UNDETERMINED    ``inconclusive``
FAIL        FAIL        any             ``no_benefit``
FAIL        PASS        any             ``inconclusive`` (decided, but no scenario fits)
FAIL        UNDETERMINED any            ``inconclusive``
PASS        UNDETERMINED any            ``inconclusive``
UNDETERMINED any        any             ``inconclusive``
==========  ==========  ==============  ======================

An ``inconclusive`` verdict states the decided parts and, for each undetermined contrast, the
smallest effect this run could detect next to its threshold.

Optional extra contrasts (``--contrast``) never change the label: the verdict reads only E,
M (or the seed's shuffle standing in) and H.

Every verdict is conditional on the alpha policy the variants trained under; the verdict names
it. The item-level pooled bootstrap never changes the label: when it and the seed-level test
disagree, the reasons say why (seeds are the unit of replication).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gradience.config import HypothesisConfig
from gradience.results import Contrast, Verdict
from gradience.stats.judgement import (
    Judgement,
    Outcome,
    fmt_interval,
    fmt_value,
    judge,
    set_decision_interval,
)

__all__ = [
    "Judgement",
    "Outcome",
    "PlacementContrasts",
    "decide",
    "label_of",
    "placement_decider",
    "set_decision_interval",
]


#: Parameter ratios within which a control counts as matched in capacity.
PARAM_RATIO_BAND = (0.95, 1.05)


@dataclass(frozen=True)
class PlacementContrasts:
    """What the placement and heterogeneity judgements read (None: not in the results)."""

    matched: Contrast | None = None
    seed_rule: Contrast | None = None
    heterogeneity: Contrast | None = None
    #: Share of per_layer's parameters the within-type shuffle moved (None: unknown).
    moved_fraction: float | None = None


def in_band(c: Contrast | None) -> bool:
    low, high = PARAM_RATIO_BAND
    return c is not None and c.param_ratio is not None and low <= c.param_ratio <= high


def _ratio(c: Contrast | None) -> str:
    return "undefined" if c is None or c.param_ratio is None else f"{c.param_ratio:.3f}"


def placement_decider(placement: PlacementContrasts) -> Contrast | None:
    """The contrast that decides M: the within-type shuffle, else the seed's when in band."""
    if placement.matched is not None:
        return placement.matched
    return placement.seed_rule if in_band(placement.seed_rule) else None


def judge_placement(
    placement: PlacementContrasts,
    hypothesis: HypothesisConfig,
    decided: Judgement | None = None,
) -> tuple[Judgement, list[str]]:
    """M's outcome (see module doc) and the sentences about the secondary placement contrast.

    ``decided``: the decider's judgement made elsewhere (the sequential rule); the moved-share
    check still applies to its FAIL."""
    tau, alpha = hypothesis.mechanism_threshold, hypothesis.alpha
    notes: list[str] = []
    decider = placement_decider(placement)
    seed_rule = placement.seed_rule
    if decider is None:
        if seed_rule is None:
            why = "neither per_layer_shuffled_within_type nor per_layer_shuffled is in the results"
        else:
            why = (
                "no parameter-matched shuffle (per_layer_shuffled_within_type) ran, and the "
                f"seed's shuffle changes the parameter count (per_layer / shuffle = "
                f"{_ratio(seed_rule)}, outside {PARAM_RATIO_BAND[0]}-{PARAM_RATIO_BAND[1]}), so "
                "a difference could be capacity, not placement"
            )
        return Judgement(Outcome.UNDETERMINED, f"placement undetermined: {why}"), notes
    if decider is seed_rule:
        notes.append(
            "No within-type shuffle ran; the seed's shuffle stands in because its parameter "
            f"ratio {_ratio(seed_rule)} lies within {PARAM_RATIO_BAND[0]}-{PARAM_RATIO_BAND[1]}."
        )
        m = decided or judge(seed_rule, "placement (seed's shuffle)", tau, alpha, None)
    else:
        m = decided or judge(decider, "placement (parameter-matched)", tau, alpha, None)
        if seed_rule is not None and seed_rule.mean_diff is not None:
            notes.append(
                f"secondary, outside the family: per_layer - the seed's shuffle = "
                f"{fmt_value(seed_rule.mean_diff)}, 95% CI {fmt_interval(seed_rule.ci95)}, parameter "
                f"ratio {_ratio(seed_rule)} (it moves rank between module types of different "
                "sizes, so it mixes placement with capacity; it decides nothing)"
            )
    moved, minimum = placement.moved_fraction, hypothesis.min_moved_fraction
    if m.outcome is Outcome.FAIL and decider is placement.matched:
        if moved is None:
            notes.append(
                "the share of parameters the within-type shuffle moved is unknown (no rank "
                "patterns or module shapes in the results): the FAIL is judged without it"
            )
        elif moved < minimum:
            return (
                Judgement(
                    Outcome.UNDETERMINED,
                    f"{m.reason}; but the within-type shuffle moved only {moved:.1%} of "
                    f"per_layer's parameters (minimum {minimum:.0%}): it is nearly the same "
                    "adapter, so placement is undetermined, not ruled out",
                ),
                notes,
            )
    return m, notes


def judge_heterogeneity(c: Contrast | None, hypothesis: HypothesisConfig) -> Judgement:
    """H at α as a fixed sequence, only with uniform_matched's capacity within the band."""
    name = "heterogeneity (per_layer vs uniform_matched)"
    if c is not None and c.mean_diff is not None and not in_band(c):
        return Judgement(
            Outcome.UNDETERMINED,
            f"{name} undetermined: per_layer / uniform_matched parameter ratio {_ratio(c)} lies "
            f"outside {PARAM_RATIO_BAND[0]}-{PARAM_RATIO_BAND[1]}, so a difference could be "
            "capacity",
        )
    return judge(c, name, hypothesis.mechanism_threshold, hypothesis.alpha, None)


_CONCLUSIONS = {
    "real_mechanism": "Audit-guided placement helps: per_layer beats the same ranks shuffled "
    "within module type (same parameter count), and per_layer beats the probe.",
    "heterogeneity_only": "Per-layer ranks beat the probe and beat one uniform rank at the same "
    "parameter budget, but a benefit of placement as large as the threshold is ruled out: "
    "heterogeneity helps, the audit's placement does not.",
    "compression_only": "Per-layer ranks beat the probe, but a benefit as large as the "
    "threshold is ruled out both for the audit's placement over random placement and for "
    "heterogeneous over uniform ranks at the same budget: compression helps, placement does not.",
    "compression_only_untested": "Per-layer ranks beat the probe, and a benefit of the audit's "
    "placement as large as the threshold is ruled out; whether heterogeneous ranks beat one "
    "uniform rank of the same budget was not tested (uniform_matched did not run).",
    "no_benefit": "Neither per_layer's gain over the probe nor its placement's gain over random "
    "placement reaches its threshold: both are ruled out at the family-wise level.",
}


def label_of(e: Outcome, m: Outcome, h: Outcome | None) -> str:
    """The decision table of the module docstring (h None: uniform_matched not run)."""
    if e is Outcome.PASS and m is Outcome.PASS:
        return "real_mechanism"
    if e is Outcome.PASS and m is Outcome.FAIL:
        if h is None or h is Outcome.FAIL:
            return "compression_only"
        return "heterogeneity_only" if h is Outcome.PASS else "inconclusive"
    if e is Outcome.FAIL and m is Outcome.FAIL:
        return "no_benefit"
    return "inconclusive"


def decide(
    efficacy: Contrast | None,
    placement: PlacementContrasts,
    hypothesis: HypothesisConfig,
    alpha_policy: str | None = None,
    decided: Mapping[str, Judgement] | None = None,
) -> Verdict:
    """Apply the decision rule of the module docstring; each judged contrast gets its outcome.

    ``decided``: judgements of ``"efficacy"`` and ``"placement"`` made by the sequential rule
    (:mod:`gradience.stats.sequential`) instead of the fixed-sample one; the label table and
    everything else are the same."""
    decided = decided or {}
    e = decided.get("efficacy") or judge(
        efficacy,
        "compression efficacy",
        hypothesis.compression_threshold,
        hypothesis.alpha,
        hypothesis.min_effect_size,
    )
    m, placement_notes = judge_placement(placement, hypothesis, decided.get("placement"))
    h = None
    if placement.heterogeneity is not None:
        h = judge_heterogeneity(placement.heterogeneity, hypothesis)
        placement.heterogeneity.outcome = h.outcome.value
    decider = placement_decider(placement)
    for contrast, judgement in ((efficacy, e), (decider, m)):
        if contrast is not None:
            contrast.outcome = judgement.outcome.value
    label = label_of(e.outcome, m.outcome, None if h is None else h.outcome)
    if label == "inconclusive":
        lead = _inconclusive_lead(e, m, h)
    elif label == "compression_only" and h is None:
        lead = _CONCLUSIONS["compression_only_untested"]
    else:
        lead = _CONCLUSIONS[label]
    if alpha_policy:
        lead += f" Conditional on the alpha policy '{alpha_policy}'."
    reasons = [lead, e.reason, m.reason, *placement_notes]
    if h is not None and e.outcome is Outcome.PASS and m.outcome is Outcome.FAIL:
        reasons.append(h.reason)
    elif h is not None:
        reasons.append(f"(read only after E passes and placement fails) {h.reason}")
    reasons += _direction_notes(efficacy, decider)
    reasons += [
        r
        for r in (
            _item_disagreement(efficacy, "compression efficacy", hypothesis.alpha),
            _item_disagreement(decider, "placement", hypothesis.alpha),
        )
        if r
    ]
    return Verdict(label=label, reasons=reasons, alpha_policy=alpha_policy)


def _inconclusive_lead(e: Judgement, m: Judgement, h: Judgement | None) -> str:
    if e.outcome is Outcome.FAIL and m.outcome is Outcome.PASS:
        return (
            "Inconclusive: both primary contrasts are decided, but no seed scenario fits: "
            "placement matters (per_layer beats the same ranks shuffled) while per_layer's gain "
            "over the probe is ruled out at the compression threshold."
        )
    names = {"compression efficacy": e.outcome, "placement": m.outcome}
    if h is not None and e.outcome is Outcome.PASS and m.outcome is Outcome.FAIL:
        names["heterogeneity"] = h.outcome
    decided = [
        f"{n} {'passes' if o is Outcome.PASS else 'fails'}"
        for n, o in names.items()
        if o is not Outcome.UNDETERMINED
    ]
    open_ = [n for n, o in names.items() if o is Outcome.UNDETERMINED]
    text = "Inconclusive: " + (f"{'; '.join(decided)}; " if decided else "")
    return text + f"{' and '.join(open_)} undetermined (see below for what this run could detect)."


def _direction_notes(efficacy: Contrast | None, placement: Contrast | None) -> list[str]:
    notes = []
    if efficacy is not None and efficacy.decision_ci is not None and efficacy.decision_ci[1] < 0:
        notes.append(
            "per_layer is worse than the probe (the family-wise interval of the difference lies "
            "below 0): compressing to the audited ranks costs accuracy."
        )
    if placement is not None and placement.decision_ci is not None and placement.decision_ci[1] < 0:
        notes.append(
            f"{placement.b} beats per_layer (the family-wise interval lies below 0): the audit's "
            "placement is worse than random placement."
        )
    return notes


def _item_disagreement(c: Contrast | None, name: str, alpha: float) -> str | None:
    if c is None or c.holm_p is None or c.item_level.pooled.p is None:
        return None
    seed_sig = c.holm_p < alpha
    item_sig = c.item_level.pooled.p < alpha
    if seed_sig == item_sig:
        return None
    pooled = c.item_level.pooled
    text = (
        f"{name}: the item-level pooled bootstrap (p = {pooled.p:.4g}) and the seed-level paired t "
        f"(Holm p = {c.holm_p:.4g}) disagree at {alpha:g}. "
    )
    if item_sig:
        return text + (
            f"The difference is larger than the item-sampling noise within these runs, but "
            f"with {c.n_seeds} seed(s) it is not shown to replicate across training runs; "
            "seeds are the unit of replication, so the seed-level test decides."
        )
    return text + (
        "The shift is consistent across seeds, but small next to the sampling noise of the "
        "eval items (and the bootstrap counts item noise twice); the seed-level test decides."
    )
