"""Audit figures (matplotlib Figures, no pyplot state): spectra, energy curves, rank heatmaps.

Reusable pieces: :func:`plot_spectra` and :func:`plot_energy_curves` draw into an Axes (or
save a figure when given a path); :func:`plot_rank_heatmap` draws any ``{module: rank}``
mapping as a layer × module-type grid. :func:`plot_audit` combines them into one PNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradience.audit.names import layer_index, module_type
from gradience.ranks.measures import cumulative_energy
from gradience.results import AuditResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_FLOOR = 1e-8  # relative singular values below this are drawn at the floor of a log axis


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure not registered with pyplot: no GUI backend, no global state."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _tab10() -> Any:
    from matplotlib import colormaps

    return colormaps["tab10"]


def _types(audit: AuditResult) -> dict[str, list[int]]:
    """Module indices by type, types in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, module in enumerate(audit.modules):
        groups.setdefault(module.type, []).append(i)
    return groups


_LINESTYLES = ("-", "--", ":", "-.")


def _band(
    ax: Axes, curves: np.ndarray, x: np.ndarray, label: str, color: Any, style: int = 0
) -> None:
    """Median curve with a 10–90% band over modules (``style`` tells rank groups of a type apart)."""
    linestyle = _LINESTYLES[style % len(_LINESTYLES)]
    ax.plot(
        x,
        np.median(curves, axis=0),
        label=f"{label} (n={len(curves)})",
        color=color,
        linestyle=linestyle,
    )
    if len(curves) > 1:
        ax.fill_between(
            x,
            np.quantile(curves, 0.1, axis=0),
            np.quantile(curves, 0.9, axis=0),
            color=color,
            alpha=0.2,
        )


def _on_axes_or_file(draw: Callable[[Axes], None], ax_or_path: Axes | str | Path) -> Axes | Path:
    if isinstance(ax_or_path, (str, Path)):
        fig = _figure(6, 4)
        draw(fig.subplots())
        path = Path(ax_or_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        return path
    draw(ax_or_path)
    return ax_or_path


def _by_rank(audit: AuditResult, indices: list[int]) -> dict[int, list[int]]:
    """Curves of one type can only be stacked when their modules share a rank."""
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(audit.modules[i].r, []).append(i)
    return groups


def plot_spectra(audit: AuditResult, ax_or_path: Axes | str | Path) -> Axes | Path:
    """Normalised singular values σᵢ/σ₁ of B·A against i, median and 10–90% band per type."""

    def draw(ax: Axes) -> None:
        colors = _tab10()
        for n, (kind, indices) in enumerate(_types(audit).items()):
            for style, (r, members) in enumerate(_by_rank(audit, indices).items()):
                rows = []
                for i in members:
                    sv = np.asarray(audit.modules[i].singular_values)
                    rows.append(
                        np.maximum(sv / sv[0], _FLOOR)
                        if sv.size and sv[0] > 0
                        else np.full(r, _FLOOR)
                    )
                label = kind if len(_by_rank(audit, indices)) == 1 else f"{kind} r={r}"
                _band(ax, np.array(rows), np.arange(1, r + 1), label, colors(n % 10), style)
        ax.set_yscale("log")
        ax.set_xlabel("index i")
        ax.set_ylabel("σᵢ / σ₁")
        ax.set_title("Singular spectra of B·A by module type")
        ax.legend(fontsize="small")

    return _on_axes_or_file(draw, ax_or_path)


def plot_energy_curves(audit: AuditResult, ax_or_path: Axes | str | Path) -> Axes | Path:
    """Cumulative energy Σ_{i≤k}σᵢ²/Σσ² against k, median and 10–90% band per type."""

    def draw(ax: Axes) -> None:
        colors = _tab10()
        for n, (kind, indices) in enumerate(_types(audit).items()):
            for style, (r, members) in enumerate(_by_rank(audit, indices).items()):
                curves = np.array(
                    [cumulative_energy(audit.modules[i].singular_values) for i in members]
                )
                label = kind if len(_by_rank(audit, indices)) == 1 else f"{kind} r={r}"
                _band(ax, curves, np.arange(r + 1), label, colors(n % 10), style)
        for tau in (0.9, 0.99):
            ax.axhline(tau, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel("k")
        ax.set_ylabel("energy kept")
        ax.set_title("Cumulative energy by module type")
        ax.legend(fontsize="small")

    return _on_axes_or_file(draw, ax_or_path)


def plot_rank_heatmap(
    ranks: Mapping[str, int], ax: Axes, title: str, *, rank_range: tuple[int, int] | None = None
) -> Axes:
    """A layer × module-type grid of ranks (colour on a log₂ scale; numbers in the cells).

    Rows are layer indices (modules outside numbered blocks go to a last row 'other'),
    columns are module types in order of first appearance; empty cells are blank. Give the
    same ``rank_range`` (lowest, highest rank) to heatmaps that should share one colour scale.
    """
    types = list(dict.fromkeys(module_type(name) for name in ranks))
    layers = sorted({layer_index(name) for name in ranks} - {None})
    has_other = any(layer_index(name) is None for name in ranks)
    rows = [*layers, None] if has_other else layers
    grid = np.full((len(rows), len(types)), np.nan)
    for name, rank in ranks.items():
        grid[rows.index(layer_index(name)), types.index(module_type(name))] = rank
    low, high = (
        (math.log2(rank_range[0]), math.log2(rank_range[1]))
        if rank_range
        else (
            float(np.nanmin(np.log2(grid))),
            float(np.nanmax(np.log2(grid))),
        )
    )
    image = ax.imshow(
        np.log2(grid), aspect="auto", cmap="viridis", interpolation="nearest", vmin=low, vmax=high
    )
    if grid.size <= 600:
        for (y, x), value in np.ndenumerate(grid):
            if not math.isnan(value):
                bright = high > low and (math.log2(value) - low) / (high - low) > 0.6 or high == low
                color = "black" if bright else "white"
                ax.text(x, y, f"{value:g}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(types)), types, rotation=45, ha="right", fontsize="small")
    step = max(1, len(rows) // 16)
    ax.set_yticks(
        range(0, len(rows), step), [str(r) if r is not None else "other" for r in rows][::step]
    )
    ax.set_ylabel("layer")
    ax.set_title(title)
    bar = ax.figure.colorbar(image, ax=ax)
    ticks = sorted(
        {int(v) for v in grid[~np.isnan(grid)]} | (set(rank_range) if rank_range else set())
    )
    bar.set_ticks([math.log2(t) for t in ticks], labels=[str(t) for t in ticks])
    bar.set_label("rank")
    return ax


def plot_audit(audit: AuditResult, policy: str, path: str | Path) -> Path:
    """One PNG: spectra, energy curves, and the heatmap of ``policy``'s suggested ranks."""
    fig = _figure(18, 5.5)
    axes = fig.subplots(1, 3)
    plot_spectra(audit, axes[0])
    plot_energy_curves(audit, axes[1])
    ranks = {m.name: m.suggested_rank[policy] for m in audit.modules}
    low = min(audit.allowed_ranks or [1])
    plot_rank_heatmap(
        ranks,
        axes[2],
        f"Suggested ranks ({policy})",
        rank_range=(low, max(m.r for m in audit.modules)),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
