"""The few lines ``gradience mechanism analyze`` prints (pure: text in, text out)."""

from __future__ import annotations

from gradience.results import AggregatedResults, MechanismAnalysis


def _f(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def format_summary(analysis: MechanismAnalysis, results: AggregatedResults) -> str:
    """Verdict, per-variant means, per-contrast statistics and the reasons, for a terminal."""
    metric = str(analysis.inputs.get("primary_metric", results.primary_metric))
    name_width = max((len(name) for name in results.variants), default=0)
    lines = [
        f"verdict: {analysis.verdict.label}",
        "",
        f"variants ({metric}, mean ± sd over seeds):",
    ]
    for name, aggregate in results.variants.items():
        values = [getattr(r, metric) for r in aggregate.runs.values()]
        mean = sum(values) / len(values) if values else None
        sd = None
        if len(values) > 1:
            sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        lines.append(
            f"  {name:<{name_width}}  {_f(mean, '.4f')} ± {_f(sd, '.4f')}  (n={len(values)})"
        )
    lines += ["", "contrasts (one-sided, H1: A > B):"]
    width = max((len(name) for name in analysis.contrasts), default=0)
    for name, c in analysis.contrasts.items():
        ci = "n/a" if c.ci95 is None else f"[{c.ci95[0]:+.4f}, {c.ci95[1]:+.4f}]"
        lines.append(
            f"  {name:<{width}}  diff {_f(c.mean_diff, '+.4f')} CI {ci}  p {_f(c.paired_t.p, '.4g')}"
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
            f"{_f(p.within_type_changed_fraction, '.2f')}; per_layer rank agreement across seeds "
            f"{_f(p.rank_agreement_across_seeds, '.2f')}; smallest detectable placement effect "
            f"{_f(p.min_detectable_effect, '.4f')} (threshold {_f(p.threshold, 'g')})",
        ]
    lines += ["", "reasons:"] + [f"  - {reason}" for reason in analysis.verdict.reasons]
    if results.failures:
        lines += ["", f"failures recorded: {len(results.failures)} (see report.md)"]
    return "\n".join(lines)
