"""report.md: the analysis as a reviewer reads it (pure: text in, text out)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gradience import __version__
from gradience.report.headline import fine_tuning_gain, headline
from gradience.results import AggregatedResults, Contrast, MechanismAnalysis
from gradience.stats import verdict as verdict_rule
from gradience.stats.item_level import __doc__ as BOOTSTRAP_DOC

#: The accuracy figure's file name: the report opens with it, under the verdict's sentence.
ACCURACY_FIGURE = "accuracy.png"
#: The decision figure's file name: shown right under the verdict's heading.
DECISION_FIGURE = "decision.png"


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "—" if x is None else format(x, fmt)


def _p(x: float | None) -> str:
    return "—" if x is None else (f"{x:.2e}" if x < 1e-4 else f"{x:.4f}")


def _interval(ci: Sequence[float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _setup(analysis: MechanismAnalysis, results: AggregatedResults) -> list[str]:
    inputs, hyp = analysis.inputs, analysis.inputs.get("hypothesis", {})
    rows = [
        ["primary metric", str(inputs.get("primary_metric"))],
        ["seeds", ", ".join(str(s) for s in results.seeds)],
        [
            "eval set",
            f"{len(results.eval_item_ids)} items, sha256 of the ids: `{inputs.get('eval_items_sha256_16')}`",
        ],
        ["config hash", f"`{results.config_hash}`"],
        ["alpha policy", results.alpha_policy],
    ]
    rows.append(
        [
            "paired initialisation",
            {True: "on (A drawn per seed and module)", False: "off (PEFT's global stream)"}.get(
                results.paired_init, "not recorded"
            ),
        ]
    )
    gated = ", ".join(str(s) for s in results.gated_seeds) or "none"
    rows.append(["seeds stopped by the probe gate (judged on training items)", gated])
    if isinstance(hyp, Mapping):
        rows.append(
            [
                "hypothesis",
                f"efficacy: per_layer − probe > {hyp.get('compression_threshold')} and "
                f"Cohen's d > {hyp.get('min_effect_size')}; placement: per_layer − "
                f"per_layer_shuffled_within_type > {hyp.get('mechanism_threshold')}; "
                f"α = {hyp.get('alpha')} (Holm over the primary contrasts); "
                f"power target {hyp.get('power')}",
            ]
        )
    return ["## Setup", ""] + _table(["", ""], rows)


def _lmeval(aggregate) -> str:
    """Mean over seeds of lm-eval's gsm8k strict-match / flexible-extract scores."""
    means = []
    for field in ("lmeval_strict_match", "lmeval_flexible_extract"):
        values = [
            getattr(r, field) for r in aggregate.runs.values() if getattr(r, field) is not None
        ]
        means.append(_num(sum(values) / len(values)) if values else "—")
    return " / ".join(means)


def _variants(results: AggregatedResults, metric: str) -> list[str]:
    seeds = [str(s) for s in results.seeds]
    lmeval = any(
        r.lmeval_strict_match is not None
        for v in results.variants.values()
        for r in v.runs.values()
    )
    rows = []
    for name, aggregate in results.variants.items():
        values = [
            getattr(aggregate.runs[s], metric) if s in aggregate.runs else None for s in seeds
        ]
        present = [v for v in values if v is not None]
        mean = sum(present) / len(present) if present else None
        sd = _sd(present)
        params = aggregate.trainable_params.mean
        rows.append(
            [
                f"`{name}`",
                str(len(present)),
                f"{_num(mean)} ± {_num(sd)}",
                *[_num(v) for v in values],
                *([_lmeval(aggregate)] if lmeval else []),
                "—" if params is None else f"{params:,.0f}",
            ]
        )
    header = [
        "variant",
        "n",
        f"{metric} mean ± sd",
        *[f"seed {s}" for s in seeds],
        *(["lm-eval strict / flexible (beside, not primary)"] if lmeval else []),
        "trainable params",
    ]
    lines = [f"## Variants ({metric}; sd over seeds, ddof=1)", ""] + _table(header, rows)
    base = results.base_model
    if base is None:
        return lines + ["The base model without LoRA was not scored (task.eval_base_model).", ""]
    gain = fine_tuning_gain(results, metric)
    gain_text = "" if gain is None else f"; the probe scores {gain:+.4f} above it"
    return lines + [
        f"The base model without LoRA scores {getattr(base, metric):.4f} on the same "
        f"{base.n_items} items (greedy, measured in seed {base.seed}'s probe job){gain_text}.",
        "",
    ]


def _sd(values: Sequence[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def _contrast(name: str, c: Contrast, power: float) -> list[str]:
    family = "primary, Holm-corrected" if c.holm_family else "exploratory, not corrected"
    paired = f"{c.n_seeds} ({', '.join(str(s) for s in c.seeds)})" if c.seeds else str(c.n_seeds)
    t, w, pooled = c.paired_t, c.welch_t, c.item_level.pooled
    rows = [
        ["role", c.role or "—"],
        ["paired seeds", paired],
        ["trainable parameters a / b", _num(c.param_ratio, ".3f")],
        [f"mean diff `{c.a}` − `{c.b}`", _num(c.mean_diff, "+.4f")],
        ["95% CI (t, paired)", _interval(c.ci95)],
        ["paired t, one-sided", f"t = {_num(t.statistic, '.3f')}, p = {_p(t.p)}"],
        ["Holm p", _p(c.holm_p)],
        ["Welch t, one-sided", f"t = {_num(w.statistic, '.3f')}, p = {_p(w.p)}"],
        ["Cohen's d / d_z", f"{_num(c.cohens_d, '.2f')} / {_num(c.cohens_dz, '.2f')}"],
        [
            f"seeds for {power:.0%} power (observed d_z; one-sided α, before Holm)",
            _num(c.seeds_for_80pct_power, "d"),
        ],
    ]
    if c.threshold is not None:
        rows.append(
            [
                f"at the threshold {c.threshold:g} (observed sd)",
                f"power now {_num(c.power_at_threshold, '.2f')}; seeds for {power:.0%}: "
                f"{_num(c.seeds_for_80pct_power_at_threshold, 'd')}",
            ]
        )
    rows.append(
        [
            "item level, pooled bootstrap",
            f"diff {_num(pooled.estimate, '+.4f')}, 95% CI "
            f"{_interval(pooled.ci95)}, one-sided p = {_p(pooled.p)}",
        ]
    )
    lines = [f"### `{name}` ({family})", ""] + _table(["statistic", "value"], rows)
    if c.item_level.mcnemar:
        mc_rows = [[s, str(m.b), str(m.c), _p(m.p)] for s, m in c.item_level.mcnemar.items()]
        lines += ["Exact McNemar per seed (b: only A right, c: only B right; two-sided):", ""]
        lines += _table(["seed", "b", "c", "p"], mc_rows)
    notes = list(c.notes) + [r for r in (t.reason, w.reason, pooled.reason) if r]
    lines += [f"- {note}" for note in dict.fromkeys(notes)]
    return lines + ([""] if notes else [])


def _placement(analysis: MechanismAnalysis) -> list[str]:
    p = analysis.placement
    if p is None:
        return []
    pct = "—" if p.shuffle_percentile is None else f"{p.shuffle_percentile:.0f}th"
    rows = [
        [
            "modules whose rank the seed's shuffle changes",
            _num(p.seed_rule_changed_fraction, ".2f"),
        ],
        [
            "modules whose rank the within-type shuffle changes",
            _num(p.within_type_changed_fraction, ".2f"),
        ],
        [
            "share of per_layer's parameters the within-type shuffle moves "
            f"(a placement FAIL needs ≥ {_num(p.min_moved_fraction, '.0%')})",
            _num(p.within_type_moved_fraction, ".1%"),
        ],
        [
            "per_layer rank agreement across seeds (mean Spearman ρ)",
            _num(p.rank_agreement_across_seeds, ".2f"),
        ],
        [
            "per_layer among the k within-type shuffles (percentile; permutation p, "
            "significant at p ≤ α)",
            f"{pct}; {_p(p.shuffle_permutation_p)}"
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
            f"{_num(p.min_detectable_effect, '.4f')} (threshold {_num(p.threshold, 'g')})",
        ],
    ]
    lines = ["## Can this run see placement?", ""] + _table(["", ""], rows)
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


def _update_norms(analysis: MechanismAnalysis) -> list[str]:
    if not analysis.update_norm_vs_rank:
        return []
    rows = [
        [f"`{name}`", _num(d.slope, "+.3f"), str(d.n_modules), d.reason or ""]
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
    ] + _table(["variant", "slope", "modules", "note"], rows)


def _truncation(analysis: MechanismAnalysis) -> list[str]:
    """The truncation arm in words: what compression costs before any retraining."""
    cost = analysis.contrasts.get("per_layer_truncated_vs_probe")
    if cost is None or cost.mean_diff is None:
        return []
    lines = [
        "## Compression without retraining",
        "",
        f"- Truncating the probe to per_layer's ranks (SVD, no retraining) changes {cost.a} − "
        f"{cost.b} by {cost.mean_diff:+.4f} (95% CI {_interval(cost.ci95)}, {cost.n_seeds} "
        f"seed(s)), at {_num(cost.param_ratio, '.3f')}× the probe's parameters.",
    ]
    retrain = analysis.contrasts.get("per_layer_vs_per_layer_truncated")
    if retrain is not None and retrain.mean_diff is not None:
        lines.append(
            f"- Retraining at those ranks (per_layer) instead gives {retrain.mean_diff:+.4f} over "
            f"the truncated probe (95% CI {_interval(retrain.ci95)})."
        )
    placed = analysis.contrasts.get("per_layer_truncated_crossseed_vs_probe_truncated_shuffled")
    if placed is not None and placed.mean_diff is not None:
        lines.append(
            "- Truncated to the ranks another seed's audit chose vs to their within-type shuffle "
            f"(same parameters; neither read off this probe's spectrum): {placed.mean_diff:+.4f} "
            f"(95% CI {_interval(placed.ci95)}): placement before any retraining."
        )
    return lines + [""]


def _plan_line(analysis: MechanismAnalysis) -> str:
    if analysis.plan_hash is None:
        return "No analysis plan recorded (an analysis before schema 3)."
    if analysis.registered_plan_hash is None:
        return f"Analysis plan `{analysis.plan_hash}` (none was registered before the data)."
    if analysis.registered_plan_hash == analysis.plan_hash:
        return f"Analysis plan `{analysis.plan_hash}`, registered before the first seed trained."
    return (
        f"**The analysis plan `{analysis.plan_hash}` differs from the one registered before the "
        f"data (`{analysis.registered_plan_hash}`): see the verdict's first line.**"
    )


def _looks(analysis: MechanismAnalysis) -> list[str]:
    """The sequential looks: seeds so far, the boundary and each contrast's decision."""
    if not analysis.looks or analysis.sequential is None:
        return []
    names = sorted({n for look in analysis.looks for n in look["contrasts"]})  # type: ignore[union-attr]
    rows = []
    for look in analysis.looks:
        cells = [str(look["n_seeds"]), _p(look["boundary_p"])]  # type: ignore[arg-type]
        for name in names:
            d = look["contrasts"].get(name)  # type: ignore[union-attr]
            cells.append(
                "—"
                if d is None
                else f"{_num(d['mean'], '+.4f')}; p {_p(d['p_pass'])} / {_p(d['p_fail'])}"
                + (f" **{d['decision']}**" if d["decision"] else "")
            )
        rows.append(cells)
    seq = analysis.sequential
    return [
        "## Sequential looks",
        "",
        f"Seeds {seq['min_seeds']}..{seq['max_seeds']}, each primary contrast at one-sided level "
        f"{_num(seq['level_per_contrast'], 'g')} spent over the looks (gradience.stats.sequential); "
        f"{seq['reason']}. Each cell: mean difference; p against 0 / p against the threshold "
        "(PASS / FAIL when at or below the look's boundary).",
        "",
        *_table(["seeds", "boundary p", *names], rows),
        "",
    ]


def render_report(
    analysis: MechanismAnalysis,
    results: AggregatedResults,
    figures: Mapping[str, str],
    figure_notes: Sequence[str] = (),
    title: str = "Mechanism test",
) -> str:
    """The whole report.md; ``figures`` maps a caption to a PNG path relative to the report."""
    metric = str(analysis.inputs.get("primary_metric", results.primary_metric))
    lines = [
        f"# {title}: analysis",
        "",
        f"**{headline(analysis, results)}**",
        "",
    ]
    top = next(((c, p) for c, p in figures.items() if p == ACCURACY_FIGURE), None)
    if top is not None:
        lines += [f"![{top[0]}]({top[1]})", "", f"*{top[0]}.*", ""]
    lines += [
        f"Generated by gradience {__version__} from `aggregated_results.json` "
        f"(config `{results.config_hash}`). {_plan_line(analysis)}",
        "",
        f"## Verdict: **{analysis.verdict.label}**",
        "",
    ]
    decision = next((c for c, p in figures.items() if p == DECISION_FIGURE), None)
    if decision is not None:
        alt = "the decision: each contrast's paired difference against its threshold"
        lines += [f"![{alt}]({DECISION_FIGURE})", "", f"*{decision}.*", ""]
    lines += [f"- {reason}" for reason in analysis.verdict.reasons] + [""]
    if analysis.verdict.alpha_policy:
        lines += [
            f"The verdict is conditional on the alpha policy `{analysis.verdict.alpha_policy}` "
            "(how each module's LoRA scaling follows its rank).",
            "",
        ]
    lines += _setup(analysis, results) + _variants(results, metric)
    lines += _looks(analysis)
    lines += _placement(analysis) + _truncation(analysis) + _update_norms(analysis)
    if analysis.tournament is not None:
        from gradience.report.tournament import tournament_markdown  # matplotlib: only if needed

        lines += [tournament_markdown(analysis.tournament), ""]  # with tournament.png
    lines += ["## Contrasts", ""]
    hypothesis = analysis.inputs.get("hypothesis")
    power = float(hypothesis.get("power", 0.8)) if isinstance(hypothesis, Mapping) else 0.8
    for name, contrast in analysis.contrasts.items():
        lines += _contrast(name, contrast, power)
    if results.failures:
        lines += ["## Failures", ""]
        lines += _table(
            ["seed", "variant", "error"],
            [[str(f.seed), f.variant, f.error.replace("|", "\\|")] for f in results.failures],
        )
    lines += ["## Figures", ""]
    for caption, path in figures.items():
        if path not in (ACCURACY_FIGURE, DECISION_FIGURE):  # shown at the top
            lines += [f"**{caption}**", "", f"![{caption}]({path})", ""]
    lines += [f"- {note}" for note in figure_notes] + ([""] if figure_notes else [])
    lines += [
        "## Method",
        "",
        "### Decision rule (gradience.stats.verdict)",
        "",
        "```",
        (verdict_rule.__doc__ or "").strip(),
        "```",
        "",
        "### Item-level tests (gradience.stats.item_level)",
        "",
        "```",
        (BOOTSTRAP_DOC or "").strip(),
        "```",
        "",
    ]
    return "\n".join(lines)
