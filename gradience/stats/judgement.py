"""One contrast judged: PASS, FAIL or UNDETERMINED against its threshold, with the sentence
that says why (the rule is in :mod:`gradience.stats.verdict`'s docstring; the verdict combines
the judgements into a label).

A judgement reads the contrast's family-wise interval (``decision_ci``, the two-sided t
interval at 1 - 2α/m) and its Holm p, or its raw p for a fixed-sequence contrast.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from gradience.results import Contrast
from gradience.stats.seed_level import mean_diff


class Outcome(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    UNDETERMINED = "undetermined"


@dataclass(frozen=True)
class Judgement:
    outcome: Outcome
    reason: str


def decision_interval(c: Contrast, alpha: float, family_size: int) -> tuple[float, float] | None:
    """The family-wise interval: two-sided t interval at 1 - 2α/m over the paired seeds."""
    if len(c.values_a) < 2 or len(c.values_a) != len(c.values_b):
        return None
    return mean_diff(c.values_a, c.values_b, confidence=1 - 2 * alpha / family_size).ci95


def set_decision_interval(c: Contrast, alpha: float, family_size: int) -> None:
    """Fill ``decision_ci`` and ``decision_confidence`` in place."""
    c.decision_confidence = 1 - 2 * alpha / family_size
    c.decision_ci = decision_interval(c, alpha, family_size)


def fmt_value(x: float | None, signed: bool = True) -> str:
    if x is None:
        return "undefined"
    return f"{x:+.4f}" if signed else f"{x:.4g}"


def fmt_interval(ci: tuple[float, float] | None) -> str:
    return "undefined" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def _level(c: Contrast) -> str:
    confidence = c.decision_confidence if c.decision_confidence is not None else 0.95
    return f"{confidence:.1%}".replace(".0%", "%")


def _summary(c: Contrast) -> str:
    text = (
        f"{c.a} - {c.b} = {fmt_value(c.mean_diff)} over {c.n_seeds} seed(s), "
        f"{_level(c)} family-wise interval {fmt_interval(c.decision_ci)}, "
        f"paired t p = {fmt_value(c.paired_t.p, False)}"
    )
    return text + (f", Holm p = {fmt_value(c.holm_p, False)}" if c.holm_family else "")


def _decision_p(c: Contrast) -> float | None:
    """Holm's p in the primary family; the raw one-sided p for a fixed-sequence contrast (H)."""
    return c.holm_p if c.holm_family else c.paired_t.p


def detectable(c: Contrast) -> str:
    """What this run could have seen: the smallest effect detectable at the decision level."""
    if c.min_detectable_effect is None:
        return "the smallest detectable effect is undefined (needs >= 2 seeds and a positive sd)"
    return (
        f"the run could detect {c.min_detectable_effect:.3g} at the family-wise level, the "
        f"threshold is {c.threshold:g}"
        + (
            f"; about {c.seeds_for_80pct_power_at_threshold} seeds would detect the threshold"
            if c.seeds_for_80pct_power_at_threshold is not None
            else ""
        )
    )


def judge(
    c: Contrast | None, name: str, threshold: float, alpha: float, min_d: float | None
) -> Judgement:
    """PASS / FAIL / UNDETERMINED for one contrast, with a sentence saying why (module doc).

    Reads the contrast's ``decision_ci`` (see :func:`set_decision_interval`) and its Holm p
    (or raw p for a fixed-sequence contrast).
    """
    if c is None or c.mean_diff is None:
        why = "; ".join(c.notes) if c is not None and c.notes else "no paired seeds"
        return Judgement(Outcome.UNDETERMINED, f"{name} undetermined: {why}")
    head = f"{name}: {_summary(c)}"
    if c.decision_ci is not None and c.decision_ci[1] < threshold:
        return Judgement(
            Outcome.FAIL,
            f"{name} FAILS: {_summary(c)}; the interval's upper end (a one-sided bound at the "
            f"family-wise level) lies below the threshold {threshold:g}, so a benefit of that "
            "size is ruled out",
        )
    decision_p = _decision_p(c)
    if decision_p is None:
        reason = c.paired_t.reason or "the decision p is undefined"
        reason += "".join(f"; {note}" for note in c.notes if "same items" in note)
        return Judgement(Outcome.UNDETERMINED, f"{head}; undetermined: {reason}")
    significant, above = decision_p < alpha, c.mean_diff > threshold
    if above and significant:
        if min_d is not None and (c.cohens_d is None or c.cohens_d <= min_d):
            return Judgement(
                Outcome.UNDETERMINED,
                f"{head}; significant and above the threshold, but "
                f"Cohen's d = {fmt_value(c.cohens_d, False)} is not above {min_d:g}",
            )
        d_text = "" if min_d is None else f", Cohen's d = {c.cohens_d:.2f} > {min_d:g}"
        low = None if c.decision_ci is None else c.decision_ci[0]
        if low is not None and low > threshold:
            beyond = f"; the interval also excludes every value below the threshold {threshold:g}"
        else:
            beyond = (
                f"; the interval still reaches below the threshold {threshold:g} (lower end "
                f"{fmt_value(low)}): the rule passes on the point estimate, and a true difference "
                "under the threshold is not ruled out"
            )
        return Judgement(
            Outcome.PASS,
            f"{name} PASSES: {_summary(c)}; significant against 0 at the family-wise level "
            f"{alpha:g}, point estimate above the threshold {threshold:g}{d_text}{beyond}",
        )
    if above:
        why = f"above the threshold {threshold:g} but not significant at {alpha:g}"
    else:
        why = (
            f"not above the threshold {threshold:g}, but the interval still reaches it: a "
            "benefit of that size is not ruled out"
        )
    return Judgement(Outcome.UNDETERMINED, f"{head}; undetermined: {why}; {detectable(c)}")
