"""``analyze``: the aggregated results of a mechanism test in, a MechanismAnalysis out."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from gradience.config import HypothesisConfig
from gradience.results import AggregatedResults, Contrast, MechanismAnalysis
from gradience.stats.contrast import compare, contrast_name, holm, set_power
from gradience.stats.item_level import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from gradience.stats.placement import WITHIN_TYPE_SHUFFLE, moved_fraction, placement_summary
from gradience.stats.registered import (
    EFFICACY,
    HETEROGENEITY,
    MECHANISM,
    PLACEMENT_MATCHED,
    analysis_plan,
    plan_differences,
    plan_hash,
)
from gradience.stats.sequential_verdict import (
    judgements,
    looks_record,
    sequential_family,
    summary_record,
)
from gradience.stats.step_size import pooled_dependence, update_norm_dependence
from gradience.stats.tournament import tournament_section
from gradience.stats.verdict import (
    PlacementContrasts,
    decide,
    placement_decider,
    set_decision_interval,
)

METRICS = ("exact_match", "strict_match")
#: The truncation arm (the probe cut to ranks by SVD, not retrained), read as: what compression
#: costs before any retraining, what retraining at those ranks adds, and whether placement
#: matters without retraining. The last is cross-seed: per_layer_truncated's ranks were read off
#: the very spectrum it is cut from (energy@τ keeps >= τ of each module's energy by
#: construction), so any shuffle of them loses by construction; both sides of the placement
#: contrast are cut to another seed's audit's ranks (and their within-type shuffle).
TRUNCATION = (
    ("per_layer_truncated", "probe"),
    ("per_layer", "per_layer_truncated"),
    ("per_layer_truncated_crossseed", "probe_truncated_shuffled"),
)


ROLES = {
    EFFICACY: "compression efficacy (E): do the audited ranks beat the probe?",
    PLACEMENT_MATCHED: "placement, parameter-matched (M, decides): audit placement vs the same "
    "ranks shuffled within module type",
    MECHANISM: "placement, the seed's shuffle: also moves parameters between module types "
    "(see param_ratio); decides only without a within-type shuffle and with a ratio in 0.95-1.05",
    HETEROGENEITY: "heterogeneity (H): per_layer vs one uniform rank at its parameter budget",
    TRUNCATION[0]: "compression without retraining: the probe truncated to per_layer's ranks "
    "vs the probe itself",
    TRUNCATION[1]: "what retraining adds: per_layer trained at its ranks vs the probe truncated "
    "to them",
    TRUNCATION[2]: "placement without retraining: the probe truncated to the per_layer ranks "
    "another seed's audit chose vs to their within-type shuffle (same parameters; neither read "
    "off this probe's spectrum)",
}


def eval_items_hash(item_ids: Sequence[str]) -> str:
    """sha256 (first 16 hex digits) of the eval item ids, newline-joined in order."""
    return hashlib.sha256("\n".join(item_ids).encode()).hexdigest()[:16]


def secondary_pairs(results: AggregatedResults) -> list[tuple[str, str]]:
    """per_layer vs every other variant in the results, and the truncation arm's contrasts:
    the default contrasts outside the primary family (the seed's shuffle is among them unless
    it stands in for the within-type one; :func:`analyze` drops whichever is primary)."""
    if "per_layer" not in results.variants:
        return []
    pairs = [("per_layer", v) for v in results.variants if v not in ("per_layer", "probe")]
    pairs += [
        pair
        for pair in TRUNCATION
        if all(v in results.variants for v in pair) and pair not in pairs
    ]
    return pairs


def check_results(results: AggregatedResults, metric: str) -> None:
    """Raise ValueError naming the key when the results cannot be analysed as they are."""
    if metric not in METRICS:
        raise ValueError(f"primary_metric: {metric!r} is not one of {METRICS}")
    n_items = len(results.eval_item_ids)
    for variant, aggregate in results.variants.items():
        for seed, run in aggregate.runs.items():
            if len(run.item_correct) != n_items:
                raise ValueError(
                    f"variants.{variant}.runs.{seed}.item_correct: {len(run.item_correct)} values but "
                    f"eval_item_ids has {n_items}"
                )
            if any(v not in (0, 1) for v in run.item_correct):
                raise ValueError(
                    f"variants.{variant}.runs.{seed}.item_correct: values must be 0 or 1"
                )


def analyze(
    results: AggregatedResults,
    hypothesis: HypothesisConfig,
    extra_contrasts: Sequence[tuple[str, str]] = (),
    registered_plan: Mapping[str, Any] | None = None,
) -> MechanismAnalysis:
    """The primary contrasts (one family: Holm for PASS, alpha/m for FAIL), the default
    secondary ones, any extra ones, the verdict, the placement section and the update-norm
    dependence on rank.

    The primary family is compression efficacy and the placement contrast that decides
    (:func:`gradience.stats.verdict.placement_decider`: the within-type shuffle, or the seed's
    shuffle standing in). ``extra_contrasts`` are added to the default secondary contrasts
    (never replacing them): they are exploratory and cannot change the verdict. Raises
    ValueError naming the key if the results are inconsistent (see ``check_results``).

    With ``hypothesis.until_decided`` the primary family is judged by the group-sequential
    rule the run stopped by (:mod:`gradience.stats.sequential_verdict`) and every look is
    recorded. ``registered_plan``: the run's ``analysis_plan.json``; when these settings give
    another plan, the verdict's first line says so and what differs.
    """
    metric = hypothesis.primary_metric
    check_results(results, metric)
    contrasts = _compared(results, hypothesis, [*secondary_pairs(results), *extra_contrasts])
    family, placement = _primary_family(results, hypothesis, contrasts)
    for contrast in contrasts.values():
        if contrast.primary:
            continue
        if contrast.threshold is not None:  # the seed's shuffle, heterogeneity: at α
            set_power(contrast, contrast.threshold, hypothesis.alpha, hypothesis.power)
        if (contrast.a, contrast.b) == HETEROGENEITY:
            contrast.notes.append(
                "not Holm-corrected: read as H only after E passes and placement fails "
                "(a fixed sequence at α)"
            )
            set_decision_interval(contrast, hypothesis.alpha, 1)
        else:
            contrast.notes.append(
                "secondary contrast: outside the primary family, not part of the verdict"
            )
    sequential, decided = None, None
    if hypothesis.until_decided:
        n_max = hypothesis.max_seeds or len(results.seeds)
        sequential = sequential_family(family, hypothesis, n_max)
        decided = judgements(family, sequential)
        for contrast, seq in zip(family, sequential.contrasts, strict=True):
            # the interval that decided: the deciding (or last) look's, at its level
            if seq.last is not None and seq.last.bounds is not None:
                contrast.decision_ci = seq.last.bounds
                contrast.decision_confidence = 1 - 2 * seq.last.level_p
    verdict = decide(family[0], placement, hypothesis, results.alpha_policy, decided)
    plan = analysis_plan(hypothesis, list(results.variants), len(results.seeds))
    registered_hash = None if registered_plan is None else plan_hash(registered_plan)
    if registered_plan is not None and registered_hash != plan_hash(plan):
        verdict.reasons.insert(
            0,
            f"This analysis departs from the plan the run registered before its data (hash "
            f"{registered_hash}; these settings give {plan_hash(plan)}): "
            + "; ".join(plan_differences(registered_plan, plan)),
        )
    dependence = update_norm_dependence(results)
    if len(dependence) > 1:
        dependence["all_variants"] = pooled_dependence(results)
    return MechanismAnalysis(
        contrasts=contrasts,
        verdict=verdict,
        inputs=_inputs(results, hypothesis, family),
        placement=placement_summary(
            results,
            placement_decider(placement),
            metric,
            hypothesis.alpha,
            hypothesis.mechanism_threshold,
            hypothesis.min_moved_fraction,
        ),
        update_norm_vs_rank=dependence,
        plan_hash=plan_hash(plan),
        registered_plan_hash=registered_hash,
        sequential=None if sequential is None else summary_record(sequential),
        looks=[] if sequential is None else looks_record(sequential),
        tournament=tournament_section(results, metric, hypothesis.alpha),
    )


def _compared(
    results: AggregatedResults, hypothesis: HypothesisConfig, pairs: Sequence[tuple[str, str]]
) -> dict[str, Contrast]:
    """Efficacy and every pair after it, compared once each, with the threshold the verdict
    judges it by where it has one (power figures follow once its level is known)."""
    thresholds = {
        EFFICACY: hypothesis.compression_threshold,
        PLACEMENT_MATCHED: hypothesis.mechanism_threshold,
        MECHANISM: hypothesis.mechanism_threshold,
        HETEROGENEITY: hypothesis.mechanism_threshold,
    }
    contrasts: dict[str, Contrast] = {}
    for a, b in [EFFICACY, *pairs]:
        if contrast_name(a, b) in contrasts:
            continue
        contrast = compare(
            results,
            a,
            b,
            metric=hypothesis.primary_metric,
            alpha=hypothesis.alpha,
            power=hypothesis.power,
        )
        contrast.role, contrast.primary = ROLES.get((a, b)), False
        contrast.threshold = thresholds.get((a, b))
        contrasts[contrast_name(a, b)] = contrast
    return contrasts


def _primary_family(
    results: AggregatedResults, hypothesis: HypothesisConfig, contrasts: Mapping[str, Contrast]
) -> tuple[list[Contrast], PlacementContrasts]:
    """The primary family (efficacy, and the placement contrast that decides), Holm-adjusted,
    with its family-wise intervals and power at α/m; and what the placement judgement reads."""
    placement = PlacementContrasts(
        matched=contrasts.get(contrast_name(*PLACEMENT_MATCHED)),
        seed_rule=contrasts.get(contrast_name(*MECHANISM)),
        heterogeneity=contrasts.get(contrast_name(*HETEROGENEITY)),
        moved_fraction=moved_fraction(results, WITHIN_TYPE_SHUFFLE),
    )
    family = [contrasts[contrast_name(*EFFICACY)]]
    decider = placement_decider(placement)
    if decider is not None:
        family.append(decider)
    holm(family)
    level = hypothesis.alpha / len(family)
    for contrast in family:
        contrast.primary = contrast.holm_family = True
        set_decision_interval(contrast, hypothesis.alpha, len(family))
        assert contrast.threshold is not None  # every primary pair has one (_compared)
        set_power(contrast, contrast.threshold, level, hypothesis.power)
    return family, placement


def sequential_look(results: AggregatedResults, hypothesis: HypothesisConfig) -> dict[str, Any]:
    """The sequential rule alone on the results so far, as ``mechanism run --until-decided``
    looks after each step: the very family :func:`analyze` judges, without the secondary
    contrasts."""
    check_results(results, hypothesis.primary_metric)
    pairs = [p for p in (PLACEMENT_MATCHED, MECHANISM) if all(v in results.variants for v in p)]
    family, _ = _primary_family(results, hypothesis, _compared(results, hypothesis, pairs))
    n_max = hypothesis.max_seeds or len(results.seeds)
    return summary_record(sequential_family(family, hypothesis, n_max))


def _inputs(
    results: AggregatedResults, hypothesis: HypothesisConfig, family: Sequence[Contrast]
) -> dict[str, object]:
    return {
        "primary_metric": hypothesis.primary_metric,
        "results_primary_metric": results.primary_metric,
        "seeds": results.seeds,
        "variants": list(results.variants),
        "config_hash": results.config_hash,
        "alpha_policy": results.alpha_policy,
        "n_eval_items": len(results.eval_item_ids),
        "eval_items_sha256_16": eval_items_hash(results.eval_item_ids),
        "failures": [f.model_dump() for f in results.failures],
        "hypothesis": hypothesis.model_dump(mode="json"),
        "decision_test": "seed-level one-sided paired t-test (scipy.stats.ttest_rel): PASS at "
        "Holm-adjusted p < alpha, FAIL when the one-sided upper bound at alpha/m lies below the "
        f"threshold, over the primary family (m = {len(family)}): "
        + ", ".join(contrast_name(c.a, c.b) for c in family),
        "gated_seeds": results.gated_seeds,
        "paired_init": results.paired_init,
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "rng_seed": BOOTSTRAP_SEED},
    }
