"""The verdict of a sequential run: the primary family judged by the group-sequential rule.

The fixed-sample verdict (:mod:`gradience.stats.verdict`) decides once, on all seeds. A run
made with ``--until-decided`` looked after every seed, so its decisions must come from the
same boundaries the run stopped by (:mod:`gradience.stats.sequential`): replaying them on the
aggregated results gives the same looks the run made, and each look is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gradience.config import HypothesisConfig
from gradience.results import Contrast
from gradience.stats.sequential import LookDecision, SequentialResult, run_sequential
from gradience.stats.verdict import Judgement, Outcome

#: The verdict's names of the two primary roles, in family order.
ROLES = ("efficacy", "placement")


def _name(c: Contrast) -> str:
    return f"{c.a}_vs_{c.b}"


def sequential_family(
    family: Sequence[Contrast], hypothesis: HypothesisConfig, n_max: int
) -> SequentialResult:
    """Replay the looks over the family's paired seeds (in run order)."""
    return run_sequential(
        {_name(c): (c.values_a, c.values_b) for c in family},
        {_name(c): float(c.threshold if c.threshold is not None else 0.0) for c in family},
        hypothesis.alpha,
        n_min=hypothesis.min_seeds,
        n_max=n_max,
        min_d={_name(family[0]): hypothesis.min_effect_size},
    )


def judgements(family: Sequence[Contrast], result: SequentialResult) -> dict[str, Judgement]:
    """``{"efficacy": ..., "placement": ...}`` from the sequential outcomes, with reasons."""
    by_name = {c.name: c for c in result.contrasts}
    out: dict[str, Judgement] = {}
    for role, contrast in zip(ROLES, family, strict=False):
        seq = by_name[_name(contrast)]
        label = "compression efficacy" if role == "efficacy" else "placement (parameter-matched)"
        last = seq.last.reason if seq.last is not None else "no look reached"
        if seq.outcome is Outcome.UNDETERMINED:
            text = (
                f"{label} undetermined by the sequential rule after {result.n_seeds} seed(s) "
                f"(looks {result.n_min}..{result.n_max}): last look: {last}"
            )
        else:
            verb = "PASSES" if seq.outcome is Outcome.PASS else "FAILS"
            text = (
                f"{label} {verb} at the look with {seq.decided_at} seeds (sequential rule, "
                f"family-wise α = {result.alpha:g} across every look): {last}"
            )
        out[role] = Judgement(seq.outcome, text)
    return out


def _decision_record(d: LookDecision) -> dict[str, Any]:
    return {
        "mean": d.mean,
        "statistic": d.statistic,
        "p_pass": d.p_pass,
        "statistic_fail": d.statistic_fail,
        "p_fail": d.p_fail,
        "boundary_p": d.level_p,
        "bounds": list(d.bounds) if d.bounds is not None else None,
        "decision": d.decision.value.upper() if d.decision is not None else None,
    }


def looks_record(result: SequentialResult) -> list[dict[str, Any]]:
    """Every look for ``mechanism_analysis.json``'s ``looks``: seeds so far, the boundary, and
    per contrast its statistic, p-values and decision."""
    return [
        {
            "n_seeds": look.n,
            "boundary_p": look.nominal_p,
            "t_critical": look.t_critical,
            "contrasts": {name: _decision_record(d) for name, d in look.decisions.items()},
        }
        for look in result.looks
    ]


def summary_record(result: SequentialResult) -> dict[str, Any]:
    return {
        "min_seeds": result.n_min,
        "max_seeds": result.n_max,
        "level_per_contrast": result.level,
        "n_seeds_used": result.n_seeds,
        "stopped": result.stopped,
        "reason": result.reason,
        "decided_at": {c.name: c.decided_at for c in result.contrasts},
    }
