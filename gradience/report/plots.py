"""The report's figures, drawn with matplotlib's object API on the Agg canvas.

``Figure`` + ``savefig`` never touch pyplot's global state or the user's backend, so these
functions are safe to call from a CLI, a notebook or a test. Each writes one PNG and returns
its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy import stats

from gradience.audit.plots import plot_energy_curves, plot_rank_heatmap, plot_spectra
from gradience.results import (
    AggregatedResults,
    AuditResult,
    Contrast,
    MechanismAnalysis,
    RankPattern,
)

DPI = 120


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and t-based 95% half-width (0 with fewer than 2 values)."""
    arr = np.asarray(values, dtype=float)
    if arr.size < 2:
        return float(arr.mean()), 0.0
    return float(arr.mean()), float(
        stats.t.ppf(0.975, arr.size - 1) * arr.std(ddof=1) / np.sqrt(arr.size)
    )


def plot_accuracy(results: AggregatedResults, metric: str, path: Path) -> Path:
    """Mean accuracy per variant with its 95% CI, per-seed points, one line per seed (pairing)."""
    variants = list(results.variants)
    fig = Figure(figsize=(1.8 + 1.6 * len(variants), 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(variants))
    for i, variant in enumerate(variants):
        values = [getattr(r, metric) for r in results.variants[variant].runs.values()]
        if values:
            mean, half = _mean_ci(values)
            ax.errorbar(
                i,
                mean,
                yerr=half,
                fmt="s",
                color="black",
                capsize=6,
                markersize=7,
                zorder=3,
                label="mean ± 95% CI" if i == 0 else None,
            )
    colors = {str(s): c for s, c in zip(results.seeds, _palette(len(results.seeds)), strict=False)}
    for seed in [str(s) for s in results.seeds]:
        points = [
            (i, getattr(results.variants[v].runs[seed], metric))
            for i, v in enumerate(variants)
            if seed in results.variants[v].runs
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(
                np.asarray(xs) + 0.08,
                ys,
                "o-",
                color=colors.get(seed),
                alpha=0.75,
                lw=1.2,
                markersize=5,
                label=f"seed {seed}",
            )
    ax.set_xticks(x, variants, rotation=15)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per variant (lines join one seed's runs)")
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_rank_heatmaps(
    patterns: Mapping[str, Mapping[str, RankPattern]], variants: Sequence[str], path: Path
) -> Path:
    """One row per seed, one column per variant, each a layer × module-type rank grid.

    The grid itself is gradience.audit.plots.plot_rank_heatmap, so the audit's and the
    report's heatmaps read the same way.
    """
    seeds = list(patterns)
    n_modules = max(len(p.ranks) for per_seed in patterns.values() for p in per_seed.values())
    n_types = max(
        len({n.rsplit(".", 1)[-1] for n in p.ranks}) for s in patterns.values() for p in s.values()
    )
    n_layers = max(1, n_modules // max(n_types, 1))
    fig = Figure(
        figsize=(5.0 * len(variants), 1.2 + max(2.4, 0.2 * n_layers) * len(seeds)),
        layout="constrained",
    )
    axes = fig.subplots(len(seeds), len(variants), squeeze=False)
    for row, seed in enumerate(seeds):
        for col, variant in enumerate(variants):
            ax = axes[row][col]
            pattern = patterns[seed].get(variant)
            if pattern is None:
                ax.set_axis_off()
                ax.set_title(f"seed {seed}: no {variant} ranks", fontsize=9)
                continue
            plot_rank_heatmap(
                pattern.ranks, ax, f"seed {seed}: {variant} ({pattern.trainable_params:,} params)"
            )
            ax.title.set_fontsize(9)
    return _save(fig, path)


def plot_probe_spectra(audit: AuditResult, path: Path, title: str = "probe") -> Path:
    """The probe's singular spectra and cumulative energy by module type (gradience.audit.plots)."""
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    spectra_ax, energy_ax = fig.subplots(1, 2)
    plot_spectra(audit, spectra_ax)
    plot_energy_curves(audit, energy_ax)
    fig.suptitle(f"{title}: median and 10–90% band over modules of each type", fontsize=10)
    return _save(fig, path)


def plot_update_norms(results: AggregatedResults, path: Path) -> Path:
    """‖s·B·A‖_F against rank for every module of every variant (log-log, all seeds).

    One panel per module type, so modules of one shape are compared with each other; points of
    a variant are nudged sideways so that variants sharing a rank stay visible.
    """
    points: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for variant, aggregate in results.variants.items():
        for run in aggregate.runs.values():
            for name, norm in (run.update_norms or {}).items():
                if run.ranks and name in run.ranks and norm > 0:
                    kind = name.rsplit(".", 1)[-1]
                    points.setdefault(kind, {}).setdefault(variant, []).append(
                        (run.ranks[name], norm)
                    )
    kinds = sorted(points)
    columns = min(4, max(1, len(kinds)))
    rows = max(1, -(-len(kinds) // columns))
    fig = Figure(figsize=(3.4 * columns, 2.9 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    variants = list(results.variants)
    colors = dict(zip(variants, _palette(len(variants)), strict=True))
    for index, ax in enumerate(axes.flat):
        if index >= len(kinds):
            ax.set_axis_off()
            continue
        kind = kinds[index]
        for offset, variant in enumerate(variants):
            data = points[kind].get(variant)
            if not data:
                continue
            ranks, norms = zip(*data, strict=True)
            nudge = 1.0 + 0.04 * (offset - (len(variants) - 1) / 2)
            ax.scatter(
                np.asarray(ranks, dtype=float) * nudge,
                norms,
                s=12,
                alpha=0.6,
                color=colors[variant],
                label=variant,
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("rank")
        ax.set_ylabel("‖s·B·A‖_F")
        ax.grid(alpha=0.3)
    if not kinds:
        axes[0][0].set_axis_on()
        axes[0][0].text(0.5, 0.5, "no update norms recorded", ha="center", va="center")
    else:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(
            handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8
        )
    fig.suptitle(f"update size vs rank (alpha policy: {results.alpha_policy})", fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------- the decision

#: Outcome colours (Okabe-Ito, told apart without red-green vision); the row's label says it too.
OUTCOME_COLORS = {"pass": "#0072B2", "fail": "#D55E00", "undetermined": "#6E6E6E"}
OUTCOME_LABELS = {"pass": "PASS", "fail": "FAIL", "undetermined": "UNDETERMINED"}
NOT_RECORDED = "not recorded"
_BAND = 0.42  # half-height of a row's threshold band, in rows


def decision_rows(analysis: MechanismAnalysis) -> tuple[list[str], list[str]]:
    """The contrasts the decision figure draws: the primary family in the analysis's order, then
    the judged contrasts outside it (e.g. heterogeneity: judged, but not in the Holm family)."""
    primary = [name for name, c in analysis.contrasts.items() if c.is_primary()]
    others = [
        name
        for name, c in analysis.contrasts.items()
        if not c.is_primary() and c.outcome is not None
    ]
    return primary, others


def _finite(values: Sequence[float] | None) -> tuple[float, float] | None:
    if values is None or not all(math.isfinite(x) for x in values):
        return None
    return float(values[0]), float(values[1])


def _defined(c: Contrast) -> bool:
    return c.mean_diff is not None and math.isfinite(c.mean_diff)


def _row_label(name: str, c: Contrast) -> str:
    """The contrast's role up to its first colon (e.g. "compression efficacy (E)"), then A − B."""
    role = (c.role or name).split(":", 1)[0]
    return f"{role}\n{c.a} − {c.b}, {c.n_seeds} seed(s)"


def _draw_contrast(ax, y: float, name: str, c: Contrast) -> list[float]:
    """One contrast's row at height y; returns the x values it drew (for the axis limits).

    Every artist carries gid "<what>:<contrast name>", so tests and callers can find it.
    """
    color = OUTCOME_COLORS.get(c.outcome or "", OUTCOME_COLORS["undetermined"])
    xs: list[float] = []
    if c.threshold is not None and c.threshold > 0:
        t = float(c.threshold)
        ax.fill_betweenx([y - _BAND, y + _BAND], -t, t, color="0.88", lw=0, zorder=0)
        ax.plot([t, t], [y - _BAND, y + _BAND], "--", color="0.3", lw=1.1, gid=f"threshold:{name}")
        xs += [-t, t]
    ci95, decision, mean = _finite(c.ci95), _finite(c.decision_ci), c.mean_diff
    if mean is None or not math.isfinite(mean):
        ax.text(
            0,
            y,
            "undefined",
            ha="center",
            va="center",
            fontsize=9,
            style="italic",
            bbox={"facecolor": "white", "edgecolor": "0.6", "boxstyle": "round,pad=0.3"},
            gid=f"undefined:{name}",
        )
        detail = ""
    else:
        if ci95 is not None:  # just under the bold interval, so that neither hides the other
            under = y - 0.2 if decision is not None else y
            ax.plot(
                ci95,
                [under, under],
                color=color,
                lw=1.3,
                alpha=0.5,
                marker="|",
                markersize=10,
                solid_capstyle="butt",
                zorder=2,
                gid=f"ci95:{name}",
            )
            xs += ci95
        if decision is not None:
            ax.plot(
                decision,
                [y, y],
                color=color,
                lw=6,
                solid_capstyle="butt",
                zorder=3,
                gid=f"decision_ci:{name}",
            )
            xs += decision
        ax.plot(
            [mean],
            [y],
            "o",
            color="white",
            markeredgecolor="black",
            markersize=7,
            zorder=4,
            gid=f"estimate:{name}",
        )
        xs.append(mean)
        if decision is None:
            detail = "95% CI only" if ci95 is not None else "no interval"
        elif c.decision_confidence is None:
            detail = "bold: decision interval"
        else:
            detail = f"bold: {100 * c.decision_confidence:.3g}% interval"
    column = ax.get_yaxis_transform()  # x in axes fractions, y in data: right of the plot
    label = OUTCOME_LABELS.get(c.outcome or "", NOT_RECORDED)
    ax.text(
        1.02,
        y,
        label,
        transform=column,
        ha="left",
        va="bottom",
        fontsize=10 if c.outcome else 9,
        fontweight="bold" if c.outcome else "normal",
        color=color,
        gid=f"outcome:{name}",
    )
    if detail:
        ax.text(1.02, y - 0.04, detail, transform=column, ha="left", va="top", fontsize=7.5)
    return xs


def _decision_legend(fig: Figure, ci95_only: bool) -> None:
    handles = [
        Line2D(
            [],
            [],
            color="0.3",
            lw=6,
            solid_capstyle="butt",
            label="decision interval (family-wise)",
        ),
        Line2D([], [], color="0.3", lw=1.3, alpha=0.5, marker="|", label="95% CI, unadjusted"),
        Line2D([], [], ls="none", marker="o", color="white", markeredgecolor="black", label="mean"),
        Patch(facecolor="0.88", label="±threshold"),
        Line2D([], [], ls="--", color="0.3", label="+threshold"),
    ]
    if ci95_only:
        handles.append(
            Line2D([], [], ls="none", label="no decision interval recorded: 95% CI only")
        )
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)


def decision_figure(analysis: MechanismAnalysis, metric: str) -> Figure:
    """The figure a reviewer reads first: each primary contrast's paired difference A − B.

    One row per contrast: the mean (circle), the decision interval (bold: family-wise, two-sided
    at decision_confidence = 1 − 2α/m), the unadjusted 95% CI (faint), the ±threshold band
    (grey) and +threshold (dashed), and the outcome at the right. Judged contrasts outside the
    primary family are drawn below a dotted line. An analysis written before the decision
    interval and outcomes were recorded draws its 95% CI only and says "not recorded".
    """
    primary, others = decision_rows(analysis)
    # Rows top down; the rows outside the family sit a little further down, below a separator.
    ys = {name: -float(i) for i, name in enumerate(primary)}
    ys |= {name: -(len(primary) + 0.4 + i) for i, name in enumerate(others)}
    height = 1.9 + 0.75 * max(1, len(ys))
    fig = Figure(figsize=(9.0, height), layout="constrained")
    ax = fig.add_subplot()
    ax.axvline(0, color="black", lw=0.9, zorder=1)
    xs = [0.0]
    for name, y in ys.items():
        xs += _draw_contrast(ax, y, name, analysis.contrasts[name])
    if others:
        line = -(len(primary) - 0.3)
        ax.axhline(line, color="0.3", lw=0.8, ls=":")
        ax.text(
            0.005,
            line - 0.03,
            "outside the primary family",
            transform=ax.get_yaxis_transform(),
            va="top",
            fontsize=7.5,
            style="italic",
            color="0.3",
        )
    if not ys:
        ax.text(0.5, 0.5, "no primary contrasts", ha="center", va="center", transform=ax.transAxes)
    lo, hi = min(xs), max(xs)
    pad = 0.08 * (hi - lo) if hi > lo else 0.01
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(min(ys.values(), default=0.0) - 0.6, 0.6)
    ax.set_yticks(list(ys.values()), [_row_label(n, analysis.contrasts[n]) for n in ys])
    ax.tick_params(axis="y", length=0, labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"paired difference A − B ({metric})")
    ax.set_title(f"verdict: {analysis.verdict.label}", fontsize=11, fontweight="bold")
    ci95_only = any(
        _defined(c) and _finite(c.decision_ci) is None for c in (analysis.contrasts[n] for n in ys)
    )
    _decision_legend(fig, ci95_only)
    return fig


def plot_decision(analysis: MechanismAnalysis, metric: str, path: Path) -> Path:
    """decision_figure, written to ``path``."""
    return _save(decision_figure(analysis, metric), path)


def decision_caption(analysis: MechanismAnalysis) -> str:
    """One line under the decision figure: what its bold and faint intervals are."""
    primary, others = decision_rows(analysis)
    text = (
        "Each primary contrast's paired difference A − B (circle): bold, the family-wise "
        "decision interval (two-sided at 1 − 2α/m over the m primary contrasts; FAIL reads its "
        "upper end); faint, the unadjusted 95% CI; grey, ±threshold; dashed, +threshold (a PASS "
        "needs the mean above it, a FAIL the bold upper end below it)"
    )
    if others:
        text += f"; below the dotted line, judged outside the primary family: {', '.join(others)}"
    drawn = [(n, analysis.contrasts[n]) for n in primary + others]
    missing = [n for n, c in drawn if _defined(c) and _finite(c.decision_ci) is None]
    if missing:
        text += f"; no decision interval recorded for {', '.join(missing)}: 95% CI only"
    if any(c.outcome is None for _, c in drawn):
        text += "; outcomes not recorded (an analysis older than schema 3)"
    return text
