"""The report's figures, drawn with matplotlib's object API on the Agg canvas.

``Figure`` + ``savefig`` never touch pyplot's global state or the user's backend, so these
functions are safe to call from a CLI, a notebook or a test. Each writes one PNG and returns
its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy import stats

from gradience.audit.plots import plot_energy_curves, plot_rank_heatmap, plot_spectra
from gradience.results import (
    AggregatedResults,
    AuditResult,
    RankPattern,
)

DPI = 120


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at the report's resolution (parent folders created)."""
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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def plot_probe_spectra(audit: AuditResult, path: Path, title: str = "probe") -> Path:
    """The probe's singular spectra and cumulative energy by module type (gradience.audit.plots)."""
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    spectra_ax, energy_ax = fig.subplots(1, 2)
    plot_spectra(audit, spectra_ax)
    plot_energy_curves(audit, energy_ax)
    fig.suptitle(f"{title}: median and 10–90% band over modules of each type", fontsize=10)
    return save_figure(fig, path)


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
    return save_figure(fig, path)
