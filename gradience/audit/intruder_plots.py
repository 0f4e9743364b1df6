"""The intruder-dimension figure of ``gradience audit --base --plot``: one PNG, two panels.

Left: each module's top-k singular vectors of W0 + s·B·A, their largest |cos| with W0's
singular vectors against their position (dots, coloured by module type), with the ε line
below which a vector is an intruder. Right: intruder counts on a layer × module-type grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradience.audit.names import layer_index
from gradience.audit.plots import _figure, _tab10, _types
from gradience.results import AuditResult


def intruder_plot_path(plot_path: str | Path) -> Path:
    """Where ``--plot FILE.png`` puts the intruder figure: ``FILE.intruders.png`` beside it."""
    path = Path(plot_path)
    return path.with_name(f"{path.stem}.intruders{path.suffix}")


def plot_intruders(audit: AuditResult, path: str | Path) -> Path:
    """Save the figure (the audit must carry an intruder scan: ``audit.intruders``)."""
    if audit.intruders is None:
        raise ValueError("the audit has no intruder scan (run gradience audit with --base)")
    fig = _figure(14, 5.5)
    similarity_ax, grid_ax = fig.subplots(1, 2)
    colors = _tab10()
    types = _types(audit)
    for n, (kind, indices) in enumerate(types.items()):
        xs, ys = [], []
        for i in indices:
            scan = audit.modules[i].intruder_dimensions
            if scan is not None:
                xs += list(range(1, len(scan.top_similarity) + 1))
                ys += scan.top_similarity
        jitter = (np.random.default_rng(n).random(len(xs)) - 0.5) * 0.3
        similarity_ax.scatter(
            np.array(xs) + jitter, ys, s=10, alpha=0.6, color=colors(n % 10), label=kind
        )
    similarity_ax.axhline(audit.intruders.epsilon, color="red", linestyle="--", linewidth=1)
    similarity_ax.set_xlabel("singular vector of W0 + s·B·A (1 = largest)")
    similarity_ax.set_ylabel("max |cos| with W0's singular vectors")
    similarity_ax.set_ylim(0, 1.02)
    similarity_ax.set_title(f"Below ε = {audit.intruders.epsilon:g}: intruder dimensions")
    similarity_ax.legend(fontsize="small")

    kinds = list(types)
    layers = sorted({layer_index(m.name) for m in audit.modules} - {None})
    rows = [*layers, None] if any(layer_index(m.name) is None for m in audit.modules) else layers
    grid = np.full((len(rows), len(kinds)), np.nan)
    for m in audit.modules:
        if m.intruder_dimensions is not None:
            grid[rows.index(layer_index(m.name)), kinds.index(m.type)] = m.intruder_dimensions.count
    image = grid_ax.imshow(
        grid,
        aspect="auto",
        cmap="magma_r",
        vmin=0,
        vmax=audit.intruders.top_k,
        interpolation="nearest",
    )
    if grid.size <= 600:
        for (y, x), value in np.ndenumerate(grid):
            if not np.isnan(value):
                color = "white" if value > audit.intruders.top_k / 2 else "black"
                grid_ax.text(x, y, f"{value:g}", ha="center", va="center", fontsize=8, color=color)
    grid_ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right", fontsize="small")
    step = max(1, len(rows) // 16)
    grid_ax.set_yticks(
        range(0, len(rows), step), [str(r) if r is not None else "other" for r in rows][::step]
    )
    grid_ax.set_ylabel("layer")
    grid_ax.set_title(f"Intruder dimensions per module (of the top {audit.intruders.top_k})")
    fig.colorbar(image, ax=grid_ax).set_label("intruders")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
