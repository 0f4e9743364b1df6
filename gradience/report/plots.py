"""The report's figures, drawn with matplotlib's object API on the Agg canvas.

``Figure`` + ``savefig`` never touch pyplot's global state or the user's backend, so these
functions are safe to call from a CLI, a notebook or a test. Each writes one PNG and returns
its path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy import stats

from gradience.results import AggregatedResults, AuditResult, RankPattern

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)\.")
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
    return float(arr.mean()), float(stats.t.ppf(0.975, arr.size - 1) * arr.std(ddof=1) / np.sqrt(arr.size))


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
            ax.errorbar(i, mean, yerr=half, fmt="s", color="black", capsize=6, markersize=7, zorder=3,
                        label="mean ± 95% CI" if i == 0 else None)
    colors = {str(s): c for s, c in zip(results.seeds, _palette(len(results.seeds)), strict=False)}
    for seed in [str(s) for s in results.seeds]:
        points = [(i, getattr(results.variants[v].runs[seed], metric))
                  for i, v in enumerate(variants) if seed in results.variants[v].runs]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(np.asarray(xs) + 0.08, ys, "o-", color=colors.get(seed), alpha=0.75, lw=1.2,
                    markersize=5, label=f"seed {seed}")
    ax.set_xticks(x, variants, rotation=15)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per variant (lines join one seed's runs)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def module_grid(ranks: Mapping[str, int]) -> tuple[list[int], list[str], np.ndarray]:
    """Ranks as a layers × module-types grid (NaN where a layer has no such module)."""
    cells: dict[tuple[int, str], int] = {}
    types: list[str] = []
    for name, rank in ranks.items():
        match = _LAYER_RE.search(name)
        layer = int(match.group(1)) if match else -1
        kind = name.rsplit(".", 1)[-1]
        if kind not in types:
            types.append(kind)
        cells[(layer, kind)] = rank
    layers = sorted({layer for layer, _ in cells})
    grid = np.full((len(layers), len(types)), np.nan)
    for (layer, kind), rank in cells.items():
        grid[layers.index(layer), types.index(kind)] = rank
    return layers, types, grid


def plot_rank_heatmaps(patterns: Mapping[str, Mapping[str, RankPattern]], variants: Sequence[str],
                       path: Path) -> Path:
    """One row per seed, one column per variant: log2(rank) per layer × module type."""
    seeds = list(patterns)
    grids = {(s, v): module_grid(patterns[s][v].ranks) for s in seeds for v in variants if v in patterns[s]}
    n_layers = max(len(g[0]) for g in grids.values())
    fig = Figure(figsize=(4.2 * len(variants), 1.2 + max(2.2, 0.22 * n_layers) * len(seeds)), layout="constrained")
    axes = fig.subplots(len(seeds), len(variants), squeeze=False)
    top = max(np.nanmax(g[2]) for g in grids.values())
    image = None
    for row, seed in enumerate(seeds):
        for col, variant in enumerate(variants):
            ax = axes[row][col]
            if (seed, variant) not in grids:
                ax.set_axis_off()
                ax.set_title(f"seed {seed}: no {variant} ranks", fontsize=9)
                continue
            layers, types, grid = grids[(seed, variant)]
            image = ax.imshow(np.log2(grid), aspect="auto", cmap="viridis", vmin=0, vmax=np.log2(top),
                              interpolation="nearest")
            last_row = row == len(seeds) - 1
            ax.set_xticks(range(len(types)), types if last_row else [], rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=7)
            ax.set_ylabel("layer", fontsize=8)
            params = patterns[seed][variant].trainable_params
            ax.set_title(f"seed {seed}: {variant} ({params:,} params)", fontsize=9)
    if image is not None:
        bar = fig.colorbar(image, ax=axes, shrink=0.8)
        ticks = np.arange(0, int(np.log2(top)) + 1)
        bar.set_ticks(ticks, labels=[str(2**t) for t in ticks])
        bar.set_label("rank")
    return _save(fig, path)


def plot_spectra(audit: AuditResult, path: Path, title: str = "probe") -> Path:
    """Normalised singular values σ_i/σ_1 of every module, one panel per module type."""
    types: list[str] = []
    for module in audit.modules:
        if module.type not in types:
            types.append(module.type)
    cols = min(4, len(types))
    rows = int(np.ceil(len(types) / cols))
    fig = Figure(figsize=(3.4 * cols, 2.9 * rows))  # fixed spacing: constrained layout doubles the time
    axes = fig.subplots(rows, cols, squeeze=False)
    layers = [m.layer for m in audit.modules if m.layer is not None]
    top_layer = max(layers) if layers else 0
    cmap = colormaps["plasma"]
    for ax, kind in zip(axes.flat, types, strict=False):
        for module in (m for m in audit.modules if m.type == kind):
            sv = np.asarray(module.singular_values, dtype=float)
            if sv.size == 0 or sv[0] <= 0:
                continue
            shade = (module.layer or 0) / max(top_layer, 1)
            ax.semilogy(np.arange(1, sv.size + 1), np.maximum(sv / sv[0], 1e-6), color=cmap(0.85 * shade),
                        lw=0.9, alpha=0.8)
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("index i", fontsize=8)
        ax.set_ylabel("σ_i / σ_1", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(types):]:
        ax.set_axis_off()
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.1, top=0.86, hspace=0.5, wspace=0.35)
    fig.suptitle(f"{title}: singular spectra of B·A by module type (colour: layer, dark = first)", fontsize=10)
    return _save(fig, path)
