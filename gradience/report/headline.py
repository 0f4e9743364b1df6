"""The verdict in one sentence a newcomer can read, and the short table under it (pure).

The console ends with them and the report opens with them. The sentence is built from the
verdict's label and the two contrasts it turns on (per_layer vs the probe; per_layer vs the
same ranks shuffled within each module type, or the seed's shuffle when that is all there
is); each comparison's words come from where its deciding (family-wise) interval lies:
"above" or "below" when it excludes 0, "level with" only when it lies inside ±threshold, "less
than <threshold> above" when only its upper end lies below the threshold (a gain that large is
ruled out, a loss is not), and "not distinguishable from" otherwise, so the words never claim
more than the interval does. The interval is printed to 4 decimals, so a bound just inside
the threshold does not read as the threshold itself.
"""

from __future__ import annotations

import statistics

from gradience.report.mdtext import interval
from gradience.results import AggregatedResults, Contrast, MechanismAnalysis

_LEADS = {
    "real_mechanism": "Placement matters: the audit put rank where it helps",
    "heterogeneity_only": "Uneven ranks help, but where the audit puts them does not matter",
    "compression_only": "The audited ranks beat the probe, but where they go does not matter",
    "no_benefit": "No benefit from audit-guided ranks",
    "inconclusive": "Not decided",
}
#: The placement contrasts, in the order the verdict prefers them.
PLACEMENT_CONTRASTS = (
    (
        "per_layer_vs_per_layer_shuffled_within_type",
        "the same ranks shuffled within each module type",
    ),
    ("per_layer_vs_per_layer_shuffled", "the same ranks shuffled across modules"),
)


def variant_mean(results: AggregatedResults, variant: str, metric: str) -> float | None:
    aggregate = results.variants.get(variant)
    if aggregate is None or not aggregate.runs:
        return None
    values = [getattr(run, metric) for run in aggregate.runs.values()]
    return sum(values) / len(values)


def fine_tuning_gain(results: AggregatedResults, metric: str) -> float | None:
    """The probe's mean minus the base model's score (None when either is missing)."""
    probe = variant_mean(results, "probe", metric)
    if probe is None or results.base_model is None:
        return None
    return probe - getattr(results.base_model, metric)


def _deciding_interval(c: Contrast) -> tuple[tuple[float, float] | None, str]:
    """The interval the words are read from: the family-wise one where recorded, else the 95% CI."""
    if c.decision_ci is not None and c.decision_confidence is not None:
        level = f"{c.decision_confidence:.1%}".replace(".0%", "%")
        return c.decision_ci, f"{level} family-wise interval"
    return c.ci95, "95% CI"


def relation(c: Contrast) -> str:
    """'above' / 'below' (interval excludes 0), 'level with' (inside ±threshold), 'less than
    <threshold> above' (only the upper end below the threshold), else 'not distinguishable from'."""
    ci, _ = _deciding_interval(c)
    if ci is None:
        return "undecided against"
    low, high = ci
    if low > 0:
        return "above"
    if high < 0:
        return "below"
    if c.threshold is not None and -c.threshold < low and high < c.threshold:
        return f"level (within ±{c.threshold:g}) with"
    if c.threshold is not None and high < c.threshold:
        return f"less than {c.threshold:g} above"
    return "not distinguishable from"


def _comparison(c: Contrast | None, what: str, results: AggregatedResults, metric: str) -> str:
    if c is None or c.mean_diff is None:
        return f"it could not be compared with {what}"
    other = variant_mean(results, c.b, metric)
    ci_values, name = _deciding_interval(c)
    ci = "no interval" if ci_values is None else f"{name} {interval(ci_values)}"
    score = "" if other is None else f"{other:.3f}; "
    return f"{relation(c)} {what} ({score}difference {c.mean_diff:+.3f}, {ci})"


def headline(analysis: MechanismAnalysis, results: AggregatedResults) -> str:
    """One sentence: the verdict in words, per_layer's score and the two comparisons behind it."""
    metric = str(analysis.inputs.get("primary_metric", results.primary_metric))
    lead = _LEADS.get(analysis.verdict.label, analysis.verdict.label)
    per_layer = variant_mean(results, "per_layer", metric)
    if per_layer is None:
        return f"{lead}: per_layer has no finished run, so nothing was compared."
    efficacy = analysis.contrasts.get("per_layer_vs_probe")
    size = ""
    if efficacy is not None and efficacy.param_ratio is not None:
        size = f" with {efficacy.param_ratio:.0%} of the probe's trainable parameters"
    placement_name, placement_what = next(
        ((name, what) for name, what in PLACEMENT_CONTRASTS if name in analysis.contrasts),
        PLACEMENT_CONTRASTS[0],
    )
    return (
        f"{lead}: per_layer scored {per_layer:.3f} {metric}{size}, "
        f"{_comparison(efficacy, 'the uniform-rank probe', results, metric)}, and "
        f"{_comparison(analysis.contrasts.get(placement_name), placement_what, results, metric)}."
    )


def variant_table(results: AggregatedResults, metric: str) -> list[str]:
    """Aligned lines: each variant's mean ± sd over seeds, n and parameters; the base model last."""
    width = max([len(name) for name in results.variants] + [len("base model (no LoRA)")])
    lines = [f"  {'variant':<{width}}  {metric:>8}  {'± sd':>6}  {'n':>2}  {'params':>10}"]
    for name, aggregate in results.variants.items():
        values = [getattr(run, metric) for run in aggregate.runs.values()]
        mean = statistics.mean(values) if values else None
        sd = statistics.stdev(values) if len(values) > 1 else None
        params = aggregate.trainable_params.mean
        lines.append(
            f"  {name:<{width}}  {_f(mean, '8.4f')}  {_f(sd, '6.4f')}  {len(values):>2}  "
            f"{_f(params, '10,.0f')}"
        )
    base = results.base_model
    if base is not None:
        score = getattr(base, metric)
        lines.append(f"  {'base model (no LoRA)':<{width}}  {score:8.4f}  {'':>6}  {1:>2}  {0:>10}")
    return lines


def _f(x: float | None, fmt: str) -> str:
    width = int(fmt.split(".")[0].replace(",", "") or 0)
    return f"{'n/a':>{width}}" if x is None else format(x, fmt)
