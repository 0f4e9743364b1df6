"""``analyze``: the aggregated results of a mechanism test in, a MechanismAnalysis out."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from gradience.config import HypothesisConfig
from gradience.results import AggregatedResults, Contrast, MechanismAnalysis
from gradience.stats.contrast import compare, contrast_name, holm
from gradience.stats.item_level import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from gradience.stats.placement import placement_summary
from gradience.stats.step_size import pooled_dependence, update_norm_dependence
from gradience.stats.verdict import PlacementContrasts, decide

EFFICACY = ("per_layer", "probe")
PLACEMENT_MATCHED = ("per_layer", "per_layer_shuffled_within_type")
MECHANISM = ("per_layer", "per_layer_shuffled")  # the seed's rule: capacity changes with it
HETEROGENEITY = ("per_layer", "uniform_matched")
PRIMARY = (EFFICACY, PLACEMENT_MATCHED, MECHANISM)
METRICS = ("exact_match", "strict_match")
#: The truncation arm (the probe cut to ranks by SVD, not retrained), read as: what compression
#: costs before any retraining, what retraining at those ranks adds, and whether placement
#: matters without retraining.
TRUNCATION = (
    ("per_layer_truncated", "probe"),
    ("per_layer", "per_layer_truncated"),
    ("per_layer_truncated", "probe_truncated_shuffled"),
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
    TRUNCATION[2]: "placement without retraining: the probe truncated to per_layer's ranks vs "
    "to the within-type shuffle's",
}


def eval_items_hash(item_ids: Sequence[str]) -> str:
    """sha256 (first 16 hex digits) of the eval item ids, newline-joined in order."""
    return hashlib.sha256("\n".join(item_ids).encode()).hexdigest()[:16]


def secondary_pairs(results: AggregatedResults) -> list[tuple[str, str]]:
    """per_layer vs every further control in the results, and the truncation arm's contrasts
    (exploratory: outside the Holm family)."""
    if "per_layer" not in results.variants:
        return []
    primary_variants = {v for pair in PRIMARY for v in pair}
    pairs = [("per_layer", v) for v in results.variants if v not in primary_variants]
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


def primary_pairs(results: AggregatedResults) -> list[tuple[str, str]]:
    """The primary contrasts this run can compute: efficacy always (even if a variant is
    missing, so the verdict can say so), each placement contrast when its shuffle ran."""
    return [
        pair for pair in PRIMARY if pair == EFFICACY or all(v in results.variants for v in pair)
    ]


def analyze(
    results: AggregatedResults,
    hypothesis: HypothesisConfig,
    extra_contrasts: Sequence[tuple[str, str]] = (),
) -> MechanismAnalysis:
    """The primary contrasts (Holm-corrected together), any extra ones, the verdict, the
    placement section and the update-norm dependence on rank.

    ``extra_contrasts`` default to per_layer vs every further control in the results; they
    are exploratory (``holm_p`` null, ``holm_family`` false) and do not enter the verdict,
    except per_layer vs uniform_matched, which the verdict reads as H (see
    :mod:`gradience.stats.verdict`). Raises ValueError naming the key if the results are
    inconsistent (see ``check_results``).
    """
    metric = hypothesis.primary_metric
    check_results(results, metric)
    thresholds = {
        EFFICACY: hypothesis.compression_threshold,
        PLACEMENT_MATCHED: hypothesis.mechanism_threshold,
        MECHANISM: hypothesis.mechanism_threshold,
        HETEROGENEITY: hypothesis.mechanism_threshold,
    }
    common = {"metric": metric, "alpha": hypothesis.alpha, "power": hypothesis.power}
    primary = {
        pair: compare(results, *pair, threshold=thresholds[pair], **common)
        for pair in primary_pairs(results)
    }
    holm(list(primary.values()))
    for pair, contrast in primary.items():
        contrast.holm_family = True
        contrast.role = ROLES[pair]
    contrasts: dict[str, Contrast] = {contrast_name(*pair): c for pair, c in primary.items()}
    for a, b in list(extra_contrasts) or secondary_pairs(results):
        name = contrast_name(a, b)
        if name not in contrasts:
            extra = compare(results, a, b, threshold=thresholds.get((a, b)), **common)
            extra.role = ROLES.get((a, b))
            extra.notes.append("exploratory contrast: not Holm-corrected, not part of the verdict")
            if (a, b) == HETEROGENEITY:
                extra.notes[-1] = (
                    "not Holm-corrected: read as H only after E passes and placement fails "
                    "(a fixed sequence at α)"
                )
            contrasts[name] = extra
    placement = PlacementContrasts(
        matched=primary.get(PLACEMENT_MATCHED),
        seed_rule=primary.get(MECHANISM),
        heterogeneity=contrasts.get(contrast_name(*HETEROGENEITY)),
    )
    verdict = decide(primary[EFFICACY], placement, hypothesis, results.alpha_policy)
    dependence = update_norm_dependence(results)
    if len(dependence) > 1:
        dependence["all_variants"] = pooled_dependence(results)
    return MechanismAnalysis(
        contrasts=contrasts,
        verdict=verdict,
        inputs=_inputs(results, hypothesis),
        placement=placement_summary(
            results,
            placement.matched or placement.seed_rule,
            metric,
            hypothesis.alpha,
            hypothesis.power,
            hypothesis.mechanism_threshold,
        ),
        update_norm_vs_rank=dependence,
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
        "the primary contrasts present: "
        + ", ".join(contrast_name(*pair) for pair in primary_pairs(results)),
        "gated_seeds": results.gated_seeds,
        "paired_init": results.paired_init,
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "rng_seed": BOOTSTRAP_SEED},
    }
