"""report.md's diagnostic sections: can the run see placement, update size against rank,
compression without retraining, and the sequential looks (pure: analysis in, lines out)."""

from __future__ import annotations

from gradience.report.mdtext import interval, num, p_value, table
from gradience.results import MechanismAnalysis


def placement_section(analysis: MechanismAnalysis) -> list[str]:
    p = analysis.placement
    if p is None:
        return []
    pct = "—" if p.shuffle_percentile is None else f"{p.shuffle_percentile:.0f}th"
    rows = [
        [
            "modules whose rank the seed's shuffle changes",
            num(p.seed_rule_changed_fraction, ".2f"),
        ],
        [
            "modules whose rank the within-type shuffle changes",
            num(p.within_type_changed_fraction, ".2f"),
        ],
        [
            "share of per_layer's parameters the within-type shuffle moves "
            f"(a placement FAIL needs ≥ {num(p.min_moved_fraction, '.0%')})",
            num(p.within_type_moved_fraction, ".1%"),
        ],
        [
            "per_layer rank agreement across seeds (mean Spearman ρ)",
            num(p.rank_agreement_across_seeds, ".2f"),
        ],
        [
            "per_layer among the k within-type shuffles (percentile; permutation p, "
            "significant at p ≤ α)",
            f"{pct}; {p_value(p.shuffle_permutation_p)}"
            + (
                ""
                if p.shuffle_permutation_significant is None
                else (
                    " (significant)" if p.shuffle_permutation_significant else " (not significant)"
                )
            ),
        ],
        [
            "smallest placement effect detectable at the target power and the family-wise "
            f"level ({p.decision_contrast or '—'})",
            f"{num(p.min_detectable_effect, '.4f')} (threshold {num(p.threshold, 'g')})",
        ],
    ]
    lines = ["## Can this run see placement?", ""] + table(["", ""], rows)
    if p.min_detectable_effect is not None and p.threshold is not None:
        if p.min_detectable_effect > p.threshold:
            lines += [
                f"- With this spread and these seeds, only a placement effect of "
                f"{p.min_detectable_effect:.4f} or more would be detected with the target power: "
                f"more than the threshold {p.threshold:g}. Smaller effects can go unseen.",
            ]
        else:
            lines += [
                f"- A placement effect at the threshold {p.threshold:g} would be detected with the "
                "target power.",
            ]
    lines += [f"- {note}" for note in p.notes]
    return lines + [""]


def update_norms_section(analysis: MechanismAnalysis) -> list[str]:
    if not analysis.update_norm_vs_rank:
        return []
    rows = [
        [f"`{name}`", num(d.slope, "+.3f"), str(d.n_modules), d.reason or ""]
        for name, d in analysis.update_norm_vs_rank.items()
    ]
    return [
        "## Update size vs rank",
        "",
        "Slope of log ‖s·B·A‖_F on log r (0: update size independent of rank; 0.5: grows like "
        "√r). Per variant within module type; `all_variants`: each module against itself "
        "across the variants of a seed. A slope far from 0 means that placing rank also "
        "places an effective step size.",
        "",
    ] + table(["variant", "slope", "modules", "note"], rows)


def truncation_section(analysis: MechanismAnalysis) -> list[str]:
    """The truncation arm in words: what compression costs before any retraining."""
    cost = analysis.contrasts.get("per_layer_truncated_vs_probe")
    if cost is None or cost.mean_diff is None:
        return []
    lines = [
        "## Compression without retraining",
        "",
        f"- Truncating the probe to per_layer's ranks (SVD, no retraining) changes {cost.a} − "
        f"{cost.b} by {cost.mean_diff:+.4f} (95% CI {interval(cost.ci95)}, {cost.n_seeds} "
        f"seed(s)), at {num(cost.param_ratio, '.3f')}× the probe's parameters.",
    ]
    retrain = analysis.contrasts.get("per_layer_vs_per_layer_truncated")
    if retrain is not None and retrain.mean_diff is not None:
        lines.append(
            f"- Retraining at those ranks (per_layer) instead gives {retrain.mean_diff:+.4f} over "
            f"the truncated probe (95% CI {interval(retrain.ci95)})."
        )
    placed = analysis.contrasts.get("per_layer_truncated_crossseed_vs_probe_truncated_shuffled")
    if placed is not None and placed.mean_diff is not None:
        lines.append(
            "- Truncated to the ranks another seed's audit chose vs to their within-type shuffle "
            f"(same parameters; neither read off this probe's spectrum): {placed.mean_diff:+.4f} "
            f"(95% CI {interval(placed.ci95)}): placement before any retraining."
        )
    return lines + [""]


def looks_section(analysis: MechanismAnalysis) -> list[str]:
    """The sequential looks: seeds so far, the boundary and each contrast's decision."""
    if not analysis.looks or analysis.sequential is None:
        return []
    names = sorted({n for look in analysis.looks for n in look["contrasts"]})  # type: ignore[union-attr]
    rows = []
    for look in analysis.looks:
        cells = [str(look["n_seeds"]), p_value(look["boundary_p"])]  # type: ignore[arg-type]
        for name in names:
            d = look["contrasts"].get(name)  # type: ignore[union-attr]
            cells.append(
                "—"
                if d is None
                else f"{num(d['mean'], '+.4f')}; p {p_value(d['p_pass'])} / {p_value(d['p_fail'])}"
                + (f" **{d['decision']}**" if d["decision"] else "")
            )
        rows.append(cells)
    seq = analysis.sequential
    return [
        "## Sequential looks",
        "",
        f"Seeds {seq['min_seeds']}..{seq['max_seeds']}, each primary contrast at one-sided level "
        f"{num(seq['level_per_contrast'], 'g')} spent over the looks (gradience.stats.sequential); "
        f"{seq['reason']}. Each cell: mean difference; p against 0 / p against the threshold "
        "(PASS / FAIL when at or below the look's boundary).",
        "",
        *table(["seeds", "boundary p", *names], rows),
        "",
    ]
