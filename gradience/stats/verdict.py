"""The verdict: which of the seed's three scenarios the data support, or "inconclusive".

Contrasts (τ_E = hypothesis.compression_threshold, τ_M = hypothesis.mechanism_threshold,
α = hypothesis.alpha, d_min = hypothesis.min_effect_size):

* E, compression efficacy: per_layer vs probe.
* M, placement, decided on the parameter-matched contrast per_layer vs
  per_layer_shuffled_within_type (ranks permuted only among modules of one type, so both
  variants train exactly as many parameters). The seed's shuffle (per_layer vs
  per_layer_shuffled) moves rank between module types of different sizes and so also changes
  the parameter count; it is reported beside M with its parameter ratio, and stands in for M
  only when no within-type shuffle ran and its ratio lies within 0.95-1.05. Otherwise
  placement is undecided: a difference could be capacity.
* H, heterogeneity: per_layer vs uniform_matched (one uniform rank at per_layer's parameter
  budget), judged with τ_M at α. It is looked at only when E passes and M fails (a fixed
  sequence), to say whether heterogeneous ranks, placed anywhere, beat uniform ones.

The decision p is the seed-level one-sided paired t-test, Holm-adjusted over the primary
contrasts present (E and both placement contrasts); the 95% CI is the t interval of the mean
paired difference over seeds. Each contrast gets one of three outcomes:

* PASS   E: mean diff > τ_E  and  Holm p < α  and  Cohen's d > d_min.
         M: mean diff > τ_M  and  Holm p < α.
* FAIL   the data rule out a benefit as large as the threshold: the upper end of the 95% CI
         of the mean diff is below τ (a one-sided test of H0: diff >= τ at level 0.025).
         A non-significant p alone is never a FAIL: absence of evidence is not evidence of
         absence.
* UNDETERMINED   anything else (including any statistic that is undefined: < 2 seeds, zero
         variance, a missing variant).

Labels:

* ``real_mechanism``      E PASS and M PASS: audit-guided placement beats the same ranks
                          placed at random at the same parameter count, and per_layer beats
                          the probe                                       (seed scenario 1)
* ``heterogeneity_only``  E PASS, M FAIL and H PASS: heterogeneous ranks help, where they go
                          does not                                        (seed scenario 2)
* ``compression_only``    E PASS, M FAIL, H not PASS (or uniform_matched not run): the audited
                          ranks beat the probe, placement does not matter, and that
                          heterogeneity itself helps is not shown
* ``no_benefit``          E FAIL and M not PASS                          (seed scenario 3)
* ``inconclusive``        every other combination; the reasons say which criterion is
                          undetermined and why (e.g. "effect above threshold but
                          underpowered: k seeds needed", from the noncentral t at the
                          observed d_z), or that the outcomes fit no scenario (E FAIL, M PASS).

Every verdict is conditional on the alpha policy the variants trained under (how LoRA's
scaling follows rank, and so how update size depends on rank); the verdict names it.

The item-level pooled bootstrap never changes the label. It is reported beside the seed-level
test, and when the two disagree at α the reasons say so and why (items are not the unit of
replication: a difference can be far outside item-sampling noise in these runs yet not
replicate across training seeds, or vice versa).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from gradience.config import HypothesisConfig
from gradience.results import Contrast, Verdict


class Outcome(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    UNDETERMINED = "undetermined"


@dataclass(frozen=True)
class Judgement:
    outcome: Outcome
    reason: str


def _fmt(x: float | None, signed: bool = True) -> str:
    if x is None:
        return "undefined"
    return f"{x:+.4f}" if signed else f"{x:.4g}"


def _ci(c: Contrast) -> str:
    return "undefined" if c.ci95 is None else f"[{c.ci95[0]:+.4f}, {c.ci95[1]:+.4f}]"


def _summary(c: Contrast) -> str:
    text = (
        f"{c.a} - {c.b} = {_fmt(c.mean_diff)} over {c.n_seeds} seed(s), 95% CI {_ci(c)}, "
        f"paired t p = {_fmt(c.paired_t.p, False)}"
    )
    return text + (f", Holm p = {_fmt(c.holm_p, False)}" if c.holm_family else " (fixed sequence)")


def _decision_p(c: Contrast) -> float | None:
    """Holm's p in the primary family; the raw one-sided p for a fixed-sequence contrast (H)."""
    return c.holm_p if c.holm_family else c.paired_t.p


def _seeds_needed(c: Contrast, power: float) -> str:
    if c.seeds_for_80pct_power is not None:
        return (
            f"{c.seeds_for_80pct_power} seeds needed for {power:.0%} power at the observed "
            f"d_z = {c.cohens_dz:.2f}"
        )
    return "seeds needed: undefined"


def judge(
    c: Contrast | None,
    name: str,
    threshold: float,
    alpha: float,
    min_d: float | None,
    power: float = 0.8,
) -> Judgement:
    """PASS / FAIL / UNDETERMINED for one contrast, with a sentence saying why (see module doc)."""
    if c is None or c.mean_diff is None:
        why = "; ".join(c.notes) if c is not None and c.notes else "no paired seeds"
        return Judgement(Outcome.UNDETERMINED, f"{name} undetermined: {why}")
    head = f"{name}: {_summary(c)}"
    if c.ci95 is not None and c.ci95[1] < threshold:
        return Judgement(
            Outcome.FAIL,
            f"{name} FAILS: {_summary(c)}; the CI lies entirely below "
            f"the threshold {threshold:g}, so a benefit of that size is ruled out",
        )
    decision_p = _decision_p(c)
    if decision_p is None:
        reason = c.paired_t.reason or "the Holm-adjusted p is undefined"
        reason += "".join(f"; {note}" for note in c.notes if "same items" in note)
        return Judgement(Outcome.UNDETERMINED, f"{head}; undetermined: {reason}")
    significant = decision_p < alpha
    above = c.mean_diff > threshold
    if above and significant:
        if min_d is None or (c.cohens_d is not None and c.cohens_d > min_d):
            d_text = "" if min_d is None else f", Cohen's d = {c.cohens_d:.2f} > {min_d:g}"
            one_sided = ""
            if c.ci95 is not None and c.ci95[0] <= 0:
                one_sided = (
                    " (the test is one-sided at the Holm level; the two-sided 95% CI reaching "
                    "0 corresponds to a one-sided 2.5% level)"
                )
            return Judgement(
                Outcome.PASS,
                f"{name} PASSES: {_summary(c)}; above the threshold "
                f"{threshold:g} and significant at {alpha:g}{d_text}{one_sided}",
            )
        return Judgement(
            Outcome.UNDETERMINED,
            f"{head}; significant and above the threshold, but "
            f"Cohen's d = {_fmt(c.cohens_d, False)} is not above {min_d:g}",
        )
    if above:
        return Judgement(
            Outcome.UNDETERMINED,
            f"{head}; effect above the threshold {threshold:g} but "
            f"not significant at {alpha:g}: underpowered, {_seeds_needed(c, power)}",
        )
    return Judgement(
        Outcome.UNDETERMINED,
        f"{head}; the effect is not above the threshold "
        f"{threshold:g}, but the CI still includes it: a benefit of that size is not "
        f"ruled out{_threshold_seeds(c, power)}",
    )


def _threshold_seeds(c: Contrast, power: float) -> str:
    n = c.seeds_for_80pct_power_at_threshold
    return (
        ""
        if n is None
        else f" ({n} seeds give {power:.0%} power for a true difference at the threshold)"
    )


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


#: Parameter ratios within which the seed's shuffle may stand in for the matched one.
PARAM_RATIO_BAND = (0.95, 1.05)

_LABELS = {
    (Outcome.PASS, Outcome.PASS): "real_mechanism",
    (Outcome.PASS, Outcome.FAIL): "heterogeneity_only",
    (Outcome.FAIL, Outcome.FAIL): "no_benefit",
    (Outcome.FAIL, Outcome.UNDETERMINED): "no_benefit",
}

_CONCLUSIONS = {
    "real_mechanism": "Audit-guided placement helps: per_layer beats the same ranks shuffled within "
    "module type (same parameter count), and per_layer beats the probe.",
    "heterogeneity_only": "Per-layer ranks beat the probe and beat one uniform rank at the same "
    "parameter budget, but placing the same ranks at random does as well: heterogeneity helps, "
    "the audit's placement does not.",
    "compression_only": "Per-layer ranks beat the probe, but placing the same ranks at random "
    "does as well; that heterogeneous ranks beat a uniform rank of the same budget is not shown: "
    "compression helps, placement does not.",
    "no_benefit": "Per-layer ranks do not beat the probe by the compression threshold on this task/model.",
}


@dataclass(frozen=True)
class PlacementContrasts:
    """The contrasts the placement and heterogeneity judgements read (None: not in the results)."""

    matched: Contrast | None = None
    seed_rule: Contrast | None = None
    heterogeneity: Contrast | None = None


def _ratio(c: Contrast | None) -> str:
    return "undefined" if c is None or c.param_ratio is None else f"{c.param_ratio:.3f}"


def _in_band(c: Contrast) -> bool:
    low, high = PARAM_RATIO_BAND
    return c.param_ratio is not None and low <= c.param_ratio <= high


def judge_placement(
    placement: PlacementContrasts, hypothesis: HypothesisConfig
) -> tuple[Judgement, list[str]]:
    """M's outcome (see module doc) and the sentences about the two placement contrasts."""
    alpha, tau, power = hypothesis.alpha, hypothesis.mechanism_threshold, hypothesis.power
    notes: list[str] = []
    seed_rule = None
    if placement.seed_rule is not None:
        seed_rule = judge(
            placement.seed_rule, "placement (seed's shuffle)", tau, alpha, None, power
        )
    if placement.matched is not None:
        m = judge(placement.matched, "placement (parameter-matched)", tau, alpha, None, power)
        if seed_rule is not None and seed_rule.outcome is not m.outcome:
            if _in_band(placement.seed_rule):
                why = (
                    f"Both train about as many parameters (ratio {_ratio(placement.seed_rule)}), "
                    "so the difference is in what the data show, not in capacity: each shuffle is "
                    "one random placement, and the two move different modules."
                )
            else:
                why = (
                    f"The seed's shuffle moves rank between module types of different sizes "
                    f"(per_layer / shuffle parameter ratio {_ratio(placement.seed_rule)}), so its "
                    "difference mixes placement with capacity."
                )
            notes.append(
                f"The two placement contrasts disagree: per_layer vs the within-type shuffle is "
                f"{m.outcome.value.upper()}, per_layer vs the seed's shuffle is "
                f"{seed_rule.outcome.value.upper()}. {why} The parameter-matched contrast decides."
            )
        if seed_rule is not None:
            notes.append(f"{seed_rule.reason} (parameter ratio {_ratio(placement.seed_rule)})")
        return m, notes
    if placement.seed_rule is not None and seed_rule is not None:
        if _in_band(placement.seed_rule):
            notes.append(
                f"No within-type shuffle ran; the seed's shuffle stands in because its parameter "
                f"ratio {_ratio(placement.seed_rule)} lies within {PARAM_RATIO_BAND[0]}-"
                f"{PARAM_RATIO_BAND[1]}."
            )
            return seed_rule, notes
        return (
            Judgement(
                Outcome.UNDETERMINED,
                f"placement undetermined: no parameter-matched shuffle "
                f"(per_layer_shuffled_within_type) ran, and the seed's shuffle changes the "
                f"parameter count (per_layer / shuffle = {_ratio(placement.seed_rule)}, outside "
                f"{PARAM_RATIO_BAND[0]}-{PARAM_RATIO_BAND[1]}), so a difference could be capacity, "
                f"not placement; {seed_rule.reason}",
            ),
            notes,
        )
    return (
        Judgement(
            Outcome.UNDETERMINED,
            "placement undetermined: neither per_layer_shuffled_within_type nor "
            "per_layer_shuffled is in the results",
        ),
        notes,
    )


def decide(
    efficacy: Contrast | None,
    placement: PlacementContrasts,
    hypothesis: HypothesisConfig,
    alpha_policy: str | None = None,
) -> Verdict:
    """Apply the decision rule of the module docstring."""
    alpha = hypothesis.alpha
    e = judge(
        efficacy,
        "compression efficacy",
        hypothesis.compression_threshold,
        alpha,
        hypothesis.min_effect_size,
        hypothesis.power,
    )
    m, placement_notes = judge_placement(placement, hypothesis)
    label = _LABELS.get((e.outcome, m.outcome), "inconclusive")
    h_reason = None
    if label == "heterogeneity_only":
        h = judge(
            placement.heterogeneity,
            "heterogeneity (per_layer vs uniform_matched)",
            hypothesis.mechanism_threshold,
            alpha,
            None,
            hypothesis.power,
        )
        h_reason = h.reason
        if h.outcome is not Outcome.PASS:
            label = "compression_only"
    lead = (
        _inconclusive_lead(e.outcome, m.outcome) if label == "inconclusive" else _CONCLUSIONS[label]
    )
    if alpha_policy:
        lead += f" Conditional on the alpha policy '{alpha_policy}'."
    reasons = [lead, e.reason, m.reason, *placement_notes]
    if h_reason:
        reasons.append(h_reason)
    mechanism = placement.matched or placement.seed_rule
    reasons += [
        r
        for r in (
            _item_disagreement(efficacy, "compression efficacy", alpha),
            _item_disagreement(mechanism, "placement", alpha),
        )
        if r
    ]
    if efficacy is not None and efficacy.ci95 is not None and efficacy.ci95[1] < 0:
        reasons.append(
            "per_layer is worse than the probe (the 95% CI of the difference lies below 0): "
            "compressing to the audited ranks costs accuracy."
        )
    if mechanism is not None and mechanism.ci95 is not None and mechanism.ci95[1] < 0:
        reasons.append(
            f"{mechanism.b} beats per_layer (the 95% CI of the difference lies below 0): "
            "the audit's placement is worse than random placement."
        )
    return Verdict(label=label, reasons=reasons, alpha_policy=alpha_policy)


def _inconclusive_lead(e: Outcome, m: Outcome) -> str:
    if e is Outcome.FAIL and m is Outcome.PASS:
        return (
            "Inconclusive: no seed scenario fits. Placement matters (per_layer beats the shuffled "
            "ranks) but per_layer does not beat the probe by the compression threshold."
        )
    undetermined = [
        n for n, o in (("compression efficacy", e), ("placement", m)) if o is Outcome.UNDETERMINED
    ]
    return f"Inconclusive: {' and '.join(undetermined)} cannot be decided from these data."
