"""The few lines ``gradience mechanism analyze`` prints (pure: text in, text out)."""

from __future__ import annotations

from gradience.report.headline import fine_tuning_gain, headline, variant_table
from gradience.results import AggregatedResults, MechanismAnalysis


def _f(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def format_summary(analysis: MechanismAnalysis, results: AggregatedResults) -> str:
    """Per-contrast statistics, placement and the verdict's reasons, for a terminal."""
    lines = ["contrasts (one-sided, H1: A > B):"]
    width = max((len(name) for name in analysis.contrasts), default=0)
    for name, c in analysis.contrasts.items():
        ci = "n/a" if c.ci95 is None else f"[{c.ci95[0]:+.4f}, {c.ci95[1]:+.4f}]"
        judged = "primary" if c.is_primary() else "secondary"
        if c.outcome is not None:
            judged += f" {c.outcome.upper()}"
        lines.append(
            f"  {name:<{width}}  [{judged}]  diff {_f(c.mean_diff, '+.4f')} CI {ci}"
            f"  p {_f(c.paired_t.p, '.4g')}"
            f"  holm {_f(c.holm_p, '.4g')}  d {_f(c.cohens_d, '.2f')}  d_z {_f(c.cohens_dz, '.2f')}"
            f"  item p {_f(c.item_level.pooled.p, '.4g')}  seeds@80% {_f(c.seeds_for_80pct_power, 'd')}"
            f"  params a/b {_f(c.param_ratio, '.3f')}"
        )
    p = analysis.placement
    if p is not None:
        lines += [
            "",
            "placement: modules moved by the seed's shuffle "
            f"{_f(p.seed_rule_changed_fraction, '.2f')}, by the within-type shuffle "
            f"{_f(p.within_type_changed_fraction, '.2f')} (parameters moved "
            f"{_f(p.within_type_moved_fraction, '.1%')}); per_layer rank agreement across seeds "
            f"{_f(p.rank_agreement_across_seeds, '.2f')}; smallest detectable placement effect "
            f"{_f(p.min_detectable_effect, '.4f')} (threshold {_f(p.threshold, 'g')})",
        ]
    lines += ["", "reasons:"] + [f"  - {reason}" for reason in analysis.verdict.reasons]
    if results.failures:
        lines += ["", f"failures recorded: {len(results.failures)} (see report.md)"]
    return "\n".join(lines)


def format_closing(analysis: MechanismAnalysis, results: AggregatedResults) -> str:
    """What a terminal shows last: the verdict, its sentence, the variants and the base model."""
    metric = str(analysis.inputs.get("primary_metric", results.primary_metric))
    policy = analysis.verdict.alpha_policy
    label = analysis.verdict.label + (f" (alpha policy {policy})" if policy else "")
    lines = [f"verdict: {label}", headline(analysis, results), ""]
    lines += [f"variants ({metric}, mean ± sd over seeds):", *variant_table(results, metric)]
    gain = fine_tuning_gain(results, metric)
    if gain is not None:
        lines.append(f"  the probe scores {gain:+.3f} above the base model without LoRA")
    return "\n".join(lines)
