"""The allocation tournament in the report: leaderboard table, difference plot, rank heatmaps.

Reads the ``tournament`` section (:class:`~gradience.results_tournament.Tournament`, computed by
:func:`gradience.stats.tournament.tournament_section`) and the aggregated results' rank
patterns. Figures use matplotlib's object API on the Agg canvas (as
:mod:`gradience.report.plots`): ``Figure`` + ``savefig``, no pyplot state. Markdown is pure
text in, text out.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from gradience.audit.names import layer_index, module_type
from gradience.report.mdtext import interval, num, table
from gradience.report.plots import save_figure
from gradience.results import AggregatedResults, VariantRun
from gradience.results_tournament import Tournament, TournamentEntry
from gradience.stats.placement import SHUFFLE_K_PREFIX
from gradience.stats.tournament import entry_variants, shuffle_variants

#: File names in the run folder (the report shows TOURNAMENT_FIGURE with the leaderboard).
TOURNAMENT_FIGURE = "tournament.png"
ALLOCATION_FIGURE = "allocation_heatmaps.png"
PASS_COLOR, OTHER_COLOR, SHUFFLE_COLOR = "#0072B2", "#555555", "0.55"
OUTCOME_TITLES = {
    "allocators_beat_random": "allocators that beat random placement: {winners}",
    "no_allocator_beats_random": "no allocator beats random placement",
    "undetermined": "undetermined: the design cannot say which allocator beats random placement",
}


# ---------------------------------------------------------------- markdown


def _p(x: float | None) -> str:
    return "—" if x is None else (f"{x:.2e}" if x < 1e-3 else f"{x:.3f}")


def _seed_ranks(entry: TournamentEntry) -> str:
    """ "1/20, 3/20": the entry's rank among the k_s + 1 (shuffles and itself) per seed."""
    return ", ".join(f"{r}/{entry.k_per_seed[s] + 1}" for s, r in entry.seed_ranks.items()) or "—"


def _difference(entry: TournamentEntry) -> str:
    text = num(entry.mean_diff_vs_shuffles, "+.4f")
    if entry.ci95 is not None:
        text += f" {interval(entry.ci95)}"
    return text


def _passes(entry: TournamentEntry) -> str:
    return {True: "**yes**", False: "no"}.get(entry.passes, "—")  # type: ignore[arg-type]


def leaderboard_rows(section: Tournament) -> list[list[str]]:
    """One row per entry, leaderboard order (the section's), as the table prints them."""
    return [
        [
            str(place),
            f"`{e.variant}`",
            num(e.mean_accuracy, ".4f"),
            _difference(e),
            num(e.percentile, ".0f"),
            _seed_ranks(e),
            _p(e.p),
            _p(e.p_holm),
            _passes(e),
            num(e.param_ratio, ".3f"),
            num(e.update_size_ratio, ".2f"),
            num(e.update_size_slope, ".2f"),
        ]
        for place, e in enumerate(section.entries, start=1)
    ]


def tournament_markdown(section: Tournament, figure: str | None = TOURNAMENT_FIGURE) -> str:
    """The report's tournament section: outcome, design, leaderboard, notes (and the figure)."""
    seeds = ", ".join(section.seeds) or "none"
    budget = ", ".join(f"seed {s}: {n:,}" for s, n in section.budget_params.items()) or "—"
    lines = [
        "## Allocation tournament: which allocation beats random placement?",
        "",
        f"**{section.summary}.**",
        "",
        f"- Null: {section.null}.",
        f"- Combination: {section.combination}; Holm over the {len(section.entries)} entries at "
        f"α = {section.alpha:g} (an entry passes when p_holm < α).",
        f"- Design: k = {section.k} within-type shuffles, seeds {seeds}; the smallest p this "
        f"design can reach is **{_p(section.min_p)}** (every seed ranks the entry first).",
        f"- Budget (the shuffles' trainable parameters): {budget}.",
        "",
    ]
    if figure:
        lines += [
            f"![each entry's difference from random placement]({figure})",
            "",
            "*Each entry's mean paired difference from the shuffles' mean (circle; blue: passes) "
            "with its 95% t interval over seeds, per-seed differences as small dots; grey: the "
            "shuffles themselves (bottom row) and their range (band).*",
            "",
        ]
    header = [
        "#",
        "variant",
        f"mean {section.metric}",
        "Δ vs shuffles [95% CI]",
        "percentile",
        "rank per seed",
        "p",
        "p_holm",
        "passes",
        "param ratio",
        "update size ratio",
        "update slope",
    ]
    lines += table(header, leaderboard_rows(section))
    lines.append(
        "*Rank per seed: 1 + the shuffles scoring ≥ the entry, out of k + 1 (ties count against "
        "the entry). Percentile: share of shuffles below the entry's seed mean. Param ratio: "
        "trainable parameters / the budget. Update size ratio: the whole update's Frobenius "
        "norm / the shuffles' mean; update slope: log ‖s·B·A‖ on log r within module type.*"
    )
    lines.append("")
    reasons = [f"- `{e.variant}`: {e.reason}" for e in section.entries if e.reason]
    if section.notes or reasons:
        lines += ["Notes:", ""] + [f"- {n}" for n in section.notes] + reasons + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------- the difference plot


def _title(section: Tournament) -> str:
    return OUTCOME_TITLES[section.outcome].format(winners=", ".join(section.winners))


def _draw_entry(ax, y: float, entry: TournamentEntry) -> list[float]:
    """One entry's row; artists carry gid "<what>:<variant>". Returns the x values drawn."""
    color = PASS_COLOR if entry.passes else OTHER_COLOR
    mean = entry.mean_diff_vs_shuffles
    if mean is None:
        ax.text(0, y, "undefined", ha="center", va="center", style="italic", fontsize=8)
        return []
    xs = [mean, *entry.diffs]
    ax.plot(
        entry.diffs,
        [y - 0.18] * len(entry.diffs),
        ".",
        color=color,
        alpha=0.5,
        markersize=5,
        gid=f"seeds:{entry.variant}",
    )
    if entry.ci95 is not None:
        ax.plot(
            entry.ci95,
            [y, y],
            color=color,
            lw=4,
            solid_capstyle="butt",
            gid=f"ci95:{entry.variant}",
        )
        xs += list(entry.ci95)
    ax.plot(
        [mean],
        [y],
        "o",
        color=color if entry.passes else "white",
        markeredgecolor="black",
        markersize=8,
        zorder=4,
        gid=f"estimate:{entry.variant}",
    )
    verdict = "PASS" if entry.passes else "—"
    ax.text(
        1.02,
        y,
        f"p_holm {_p(entry.p_holm)}  {verdict}",
        transform=ax.get_yaxis_transform(),
        ha="left",
        va="center",
        fontsize=8,
        color=color,
        fontweight="bold" if entry.passes else "normal",
        gid=f"p_holm:{entry.variant}",
    )
    return xs


def tournament_figure(section: Tournament) -> Figure:
    """Each entry's difference from random placement with its CI, the shuffles behind them.

    Rows top down in leaderboard order; the bottom row holds every shuffle's own mean
    difference from the shuffles' mean (grey dots), and a grey band spans their range across
    every row, so an entry's interval reads against what random placements did.
    """
    entries = section.entries
    spread = list(section.shuffle_diffs.values())
    fig = Figure(figsize=(9.5, 1.9 + 0.55 * (len(entries) + 1)), layout="constrained")
    ax = fig.add_subplot()
    xs = [0.0, *spread]
    if spread:
        ax.axvspan(min(spread), max(spread), color="0.9", lw=0, zorder=0, gid="shuffle_range")
    ax.axvline(0, color="black", lw=0.9, zorder=1)
    for i, entry in enumerate(entries):
        xs += _draw_entry(ax, -float(i), entry)
    bottom = -float(len(entries))
    ax.plot(
        spread,
        [bottom] * len(spread),
        "o",
        color=SHUFFLE_COLOR,
        alpha=0.7,
        markersize=5,
        gid="shuffles",
    )
    if not spread:
        ax.text(0, bottom, "no shuffle ran at every seed", ha="center", va="center", fontsize=8)
    labels = [f"{e.variant}\nparams ×{num(e.param_ratio, '.2f')}" for e in entries]
    labels.append(f"random placement\n({section.k} within-type shuffles)")
    ax.set_yticks([-float(i) for i in range(len(entries) + 1)], labels)
    ax.tick_params(axis="y", length=0, labelsize=8)
    lo, hi = min(xs), max(xs)
    pad = 0.08 * (hi - lo) if hi > lo else 0.01
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(bottom - 0.6, 0.6)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"difference from the shuffles' mean ({section.metric}), paired by seed")
    fig.suptitle("\n".join(textwrap.wrap(_title(section), 90)), fontsize=10, fontweight="bold")
    ax.set_title(
        f"k = {section.k} shuffles, {len(section.seeds)} seed(s), smallest reachable p = "
        f"{_p(section.min_p)}, Holm over {len(entries)} entries at α = {section.alpha:g}",
        fontsize=8,
        color="0.3",
    )
    handles = [
        Line2D([], [], color=OTHER_COLOR, lw=4, label="95% CI over seeds"),
        Line2D([], [], ls="none", marker="o", color="white", markeredgecolor="black", label="mean"),
        Line2D(
            [], [], ls="none", marker="o", color=PASS_COLOR, markeredgecolor="black", label="passes"
        ),
        Line2D([], [], ls="none", marker=".", color=OTHER_COLOR, alpha=0.5, label="one seed"),
        Patch(facecolor="0.9", label="range of the shuffles"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=5, fontsize=8, frameon=False)
    return fig


def plot_tournament(section: Tournament, path: Path) -> Path:
    """tournament_figure, written to ``path`` (``RUN/tournament.png``)."""
    return save_figure(tournament_figure(section), path)


# ---------------------------------------------------------------- the allocations


def heatmap_variants(results: AggregatedResults) -> list[str]:
    """The tournament's entries, then one shuffle (a random placement, for comparison)."""
    shuffles = shuffle_variants(results)
    return entry_variants(results) + shuffles[:1]


def _seed_with_ranks(results: AggregatedResults, variants: Sequence[str]) -> str | None:
    """The first seed (in results.seeds order) where the most ``variants`` recorded ranks."""

    def count(seed: str) -> int:
        return sum(_ranks(results, v, seed) is not None for v in variants)

    seeds = [str(s) for s in results.seeds]
    best = max(seeds, key=count, default=None)  # max keeps the first of equals
    return best if best is not None and count(best) > 0 else None


def _ranks(results: AggregatedResults, variant: str, seed: str) -> dict[str, int] | None:
    run: VariantRun | None = results.variants[variant].runs.get(seed)
    return run.ranks if run is not None and run.ranks else None


def _grid(ranks: dict[str, int], rows: list[int | None], types: list[str]) -> np.ndarray:
    grid = np.full((len(rows), len(types)), np.nan)
    for name, rank in ranks.items():
        grid[rows.index(layer_index(name)), types.index(module_type(name))] = rank
    return grid


def allocation_figure(
    results: AggregatedResults, variants: Sequence[str] | None = None, seed: str | None = None
) -> Figure:
    """Ranks per layer × module type, one panel per variant, one seed, one colour scale.

    Colour is log₂ rank (shared by every panel, so equal colours are equal ranks); a rank of 0
    (the allocator left the module unadapted) is light grey with a "0", a module the variant
    did not name is blank. The default variants are :func:`heatmap_variants`, the default seed
    the first where most of them recorded ranks.
    """
    variants = list(variants if variants is not None else heatmap_variants(results))
    seed = seed if seed is not None else _seed_with_ranks(results, variants)
    patterns = {
        v: r for v in variants if seed is not None and (r := _ranks(results, v, seed)) is not None
    }
    if not patterns:
        fig = Figure(figsize=(6, 2), layout="constrained")
        fig.add_subplot().text(0.5, 0.5, "no rank patterns recorded", ha="center", va="center")
        return fig
    names = [n for pattern in patterns.values() for n in pattern]
    types = list(dict.fromkeys(module_type(n) for n in names))
    layers = sorted({layer_index(n) for n in names} - {None})
    rows: list[int | None] = (
        [*layers, None] if any(layer_index(n) is None for n in names) else layers
    )
    positive = [r for p in patterns.values() for r in p.values() if r > 0]
    norm = Normalize(math.log2(min(positive, default=1)), math.log2(max(positive, default=1)))
    cmap = colormaps["viridis"].with_extremes(under="0.85", bad="white")
    columns = min(4, len(patterns))
    n_rows = -(-len(patterns) // columns)
    fig = Figure(
        figsize=(2.2 + 0.42 * len(types) * columns, 1.4 + (0.9 + 0.2 * len(rows)) * n_rows),
        layout="constrained",
    )
    axes = fig.subplots(n_rows, columns, squeeze=False)
    image = None
    for ax, (variant, pattern) in zip(axes.flat, patterns.items(), strict=False):
        grid = _grid(pattern, rows, types)
        # rank 0 sits one step below the scale (the "under" grey); a missing module stays NaN
        with np.errstate(divide="ignore", invalid="ignore"):
            shown = np.where(grid > 0, np.log2(grid), np.where(grid == 0, norm.vmin - 1, np.nan))
        image = ax.imshow(shown, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        if grid.size <= 400:
            for (y, x), value in np.ndenumerate(grid):
                if not math.isnan(value):
                    light = value > 0 and norm(math.log2(value)) > 0.6
                    ax.text(
                        x,
                        y,
                        f"{value:g}",
                        ha="center",
                        va="center",
                        fontsize=6.5,
                        color="black" if light or value == 0 else "white",
                    )
        params = results.variants[variant].runs[seed].trainable_params
        random_one = ", a random placement" if variant.startswith(SHUFFLE_K_PREFIX) else ""
        ax.set_title(f"{variant}\n{params:,} params{random_one}", fontsize=8.5)
        ax.set_xticks(range(len(types)), types, rotation=45, ha="right", fontsize=7)
        step = max(1, len(rows) // 16)
        ax.set_yticks(
            range(0, len(rows), step),
            [str(r) if r is not None else "other" for r in rows][::step],
            fontsize=7,
        )
        ax.set_ylabel("layer", fontsize=8)
    for ax in list(axes.flat)[len(patterns) :]:
        ax.set_axis_off()
    ticks = sorted(set(positive))
    if len(ticks) > 8:  # many distinct ranks (a budget rescaling): label powers of two and ends
        ticks = sorted(
            {ticks[0], ticks[-1]} | {2**i for i in range(11) if ticks[0] < 2**i < ticks[-1]}
        )
    bar = fig.colorbar(image, ax=axes, shrink=min(0.8, 5.0 / fig.get_figheight()))
    bar.set_ticks([math.log2(t) for t in ticks], labels=[str(t) for t in ticks])
    bar.set_label("rank (0: not adapted, grey)")
    missing = [v for v in variants if v not in patterns]
    title = f"rank allocations at the budget, seed {seed}"
    if missing:
        title += f" (no ranks recorded: {', '.join(missing)})"
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=10)
    return fig


def plot_allocation_heatmaps(
    results: AggregatedResults,
    path: Path,
    variants: Sequence[str] | None = None,
    seed: str | None = None,
) -> Path:
    """allocation_figure, written to ``path`` (``RUN/allocation_heatmaps.png``)."""
    return save_figure(allocation_figure(results, variants, seed), path)
