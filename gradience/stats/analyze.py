"""``analyze``: the aggregated results of a mechanism test in, a MechanismAnalysis out."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from gradience.config import HypothesisConfig
from gradience.results import AggregatedResults, Contrast, MechanismAnalysis
from gradience.stats.contrast import compare, contrast_name, holm
from gradience.stats.item_level import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from gradience.stats.verdict import decide

EFFICACY = ("per_layer", "probe")
MECHANISM = ("per_layer", "per_layer_shuffled")
PRIMARY = (EFFICACY, MECHANISM)
METRICS = ("exact_match", "strict_match")


def eval_items_hash(item_ids: Sequence[str]) -> str:
    """sha256 (first 16 hex digits) of the eval item ids, newline-joined in order."""
    return hashlib.sha256("\n".join(item_ids).encode()).hexdigest()[:16]


def secondary_pairs(results: AggregatedResults) -> list[tuple[str, str]]:
    """per_layer vs every further control in the results (exploratory: outside the Holm family)."""
    if "per_layer" not in results.variants:
        return []
    primary_variants = {v for pair in PRIMARY for v in pair}
    return [("per_layer", v) for v in results.variants if v not in primary_variants]


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
) -> MechanismAnalysis:
    """Both primary contrasts (Holm-corrected together), any extra ones, and the verdict.

    ``extra_contrasts`` default to per_layer vs every further control in the results; they
    are exploratory (``holm_p`` null, ``holm_family`` false) and do not enter the verdict.
    Raises ValueError naming the key if the results are inconsistent (see ``check_results``).
    """
    metric = hypothesis.primary_metric
    check_results(results, metric)
    thresholds = {
        EFFICACY: hypothesis.compression_threshold,
        MECHANISM: hypothesis.mechanism_threshold,
    }
    common = {"metric": metric, "alpha": hypothesis.alpha, "power": hypothesis.power}
    primary = [compare(results, a, b, threshold=thresholds[(a, b)], **common) for a, b in PRIMARY]
    holm(primary)
    for contrast in primary:
        contrast.holm_family = True
    contrasts: dict[str, Contrast] = {contrast_name(c.a, c.b): c for c in primary}
    for a, b in list(extra_contrasts) or secondary_pairs(results):
        name = contrast_name(a, b)
        if name not in contrasts:
            extra = compare(results, a, b, **common)
            extra.notes.append("exploratory contrast: not Holm-corrected, not part of the verdict")
            contrasts[name] = extra
    verdict = decide(primary[0], primary[1], hypothesis)
    return MechanismAnalysis(
        contrasts=contrasts, verdict=verdict, inputs=_inputs(results, hypothesis)
    )


def _inputs(results: AggregatedResults, hypothesis: HypothesisConfig) -> dict[str, object]:
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
        "decision_test": "seed-level one-sided paired t-test (scipy.stats.ttest_rel), Holm-adjusted over "
        "per_layer_vs_probe and per_layer_vs_per_layer_shuffled",
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "rng_seed": BOOTSTRAP_SEED},
    }
