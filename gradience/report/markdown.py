"""report.md: the analysis as a reviewer reads it (pure: text in, text out)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gradience import __version__
from gradience.report.headline import fine_tuning_gain, headline
from gradience.report.mdtext import interval, num, p_value, table
from gradience.report.sections import (
    looks_section,
    placement_section,
    truncation_section,
    update_norms_section,
)
from gradience.results import AggregatedResults, Contrast, MechanismAnalysis
from gradience.stats import verdict as verdict_rule
from gradience.stats.item_level import __doc__ as BOOTSTRAP_DOC

#: The accuracy figure's file name: the report opens with it, under the verdict's sentence.
ACCURACY_FIGURE = "accuracy.png"
#: The decision figure's file name: shown right under the verdict's heading.
DECISION_FIGURE = "decision.png"


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
    return ["## Setup", ""] + table(["", ""], rows)


def _lmeval(aggregate) -> str:
    """Mean over seeds of lm-eval's gsm8k strict-match / flexible-extract scores."""
    means = []
    for field in ("lmeval_strict_match", "lmeval_flexible_extract"):
        values = [
            getattr(r, field) for r in aggregate.runs.values() if getattr(r, field) is not None
        ]
        means.append(num(sum(values) / len(values)) if values else "—")
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
                f"{num(mean)} ± {num(sd)}",
                *[num(v) for v in values],
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
    lines = [f"## Variants ({metric}; sd over seeds, ddof=1)", ""] + table(header, rows)
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
        ["trainable parameters a / b", num(c.param_ratio, ".3f")],
        [f"mean diff `{c.a}` − `{c.b}`", num(c.mean_diff, "+.4f")],
        ["95% CI (t, paired)", interval(c.ci95)],
        ["paired t, one-sided", f"t = {num(t.statistic, '.3f')}, p = {p_value(t.p)}"],
        ["Holm p", p_value(c.holm_p)],
        ["Welch t, one-sided", f"t = {num(w.statistic, '.3f')}, p = {p_value(w.p)}"],
        ["Cohen's d / d_z", f"{num(c.cohens_d, '.2f')} / {num(c.cohens_dz, '.2f')}"],
        [
            f"seeds for {power:.0%} power (observed d_z; one-sided α, before Holm)",
            num(c.seeds_for_80pct_power, "d"),
        ],
    ]
    if c.threshold is not None:
        rows.append(
            [
                f"at the threshold {c.threshold:g} (observed sd)",
                f"power now {num(c.power_at_threshold, '.2f')}; seeds for {power:.0%}: "
                f"{num(c.seeds_for_80pct_power_at_threshold, 'd')}",
            ]
        )
    rows.append(
        [
            "item level, pooled bootstrap",
            f"diff {num(pooled.estimate, '+.4f')}, 95% CI "
            f"{interval(pooled.ci95)}, one-sided p = {p_value(pooled.p)}",
        ]
    )
    lines = [f"### `{name}` ({family})", ""] + table(["statistic", "value"], rows)
    if c.item_level.mcnemar:
        mc_rows = [[s, str(m.b), str(m.c), p_value(m.p)] for s, m in c.item_level.mcnemar.items()]
        lines += ["Exact McNemar per seed (b: only A right, c: only B right; two-sided):", ""]
        lines += table(["seed", "b", "c", "p"], mc_rows)
    notes = list(c.notes) + [r for r in (t.reason, w.reason, pooled.reason) if r]
    lines += [f"- {note}" for note in dict.fromkeys(notes)]
    return lines + ([""] if notes else [])


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
    lines += looks_section(analysis)
    lines += (
        placement_section(analysis) + truncation_section(analysis) + update_norms_section(analysis)
    )
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
        lines += table(
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
