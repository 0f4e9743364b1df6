"""The decision figure: each judged contrast's interval against its threshold band.

Drawn with matplotlib's object API on the Agg canvas, like :mod:`gradience.report.plots`:
rows are the primary family in the analysis's order, then the judged contrasts outside it;
each row shows the 95% CI, the decision interval the verdict used, the mean and the
±threshold band, coloured by the contrast's outcome.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from gradience.report.plots import save_figure
from gradience.results import Contrast, MechanismAnalysis

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
    return save_figure(decision_figure(analysis, metric), path)


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
