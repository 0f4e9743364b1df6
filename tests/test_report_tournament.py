"""The tournament in the report: the leaderboard table, the difference plot, the rank heatmaps."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
from fixtures.tournament import NAMES, allocator_pattern, tournament_results

from gradience.report.tournament import (
    allocation_figure,
    heatmap_variants,
    leaderboard_rows,
    plot_allocation_heatmaps,
    plot_tournament,
    tournament_figure,
    tournament_markdown,
)
from gradience.stats.tournament import tournament_section

OFFSETS = {"alloc_best": 0.05, "alloc_depth": 0.0, "alloc_zero": -0.03, "per_layer": 0.0}


@pytest.fixture(scope="module")
def contest():
    results = tournament_results(OFFSETS, k=19)
    return results, tournament_section(results, "exact_match", 0.05)


def _by_gid(fig, prefix: str) -> dict:
    ax = fig.axes[0]
    return {
        a.get_gid().split(":", 1)[1]: a
        for a in (*ax.lines, *ax.texts)
        if a.get_gid() and a.get_gid().startswith(prefix + ":")
    }


def test_the_markdown_states_the_outcome_the_smallest_p_and_the_leaderboard(contest):
    _, section = contest
    text = tournament_markdown(section)
    assert f"**{section.summary}.**" in text
    assert "smallest p this design can reach is **6.25e-06**" in text
    assert "k = 19 within-type shuffles, seeds 42, 43, 44, 45" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    assert [line.split("`")[1] for line in table] == [e.variant for e in section.entries]
    assert table[0].startswith("| 1 | `alloc_best`") and "**yes**" in table[0]
    assert "1/20, 1/20, 1/20, 1/20" in table[0]
    assert "![each entry's difference from random placement](tournament.png)" in text
    rows = leaderboard_rows(section)
    assert [r[8] for r in rows].count("**yes**") == len(section.winners)


def test_an_undetermined_section_says_why_in_the_text_and_the_figure():
    results = tournament_results({"alloc_depth": 0.0, "per_layer": 0.0}, k=3)
    for name in [v for v in results.variants if v.startswith("per_layer_shuffled_k")]:
        del results.variants[name]
    section = tournament_section(results, "exact_match", 0.05)
    text = tournament_markdown(section, figure=None)
    assert "undetermined: no within-type shuffle" in text and "![" not in text
    assert "`alloc_depth`: no seed where this entry and a within-type shuffle" in text
    fig = tournament_figure(section)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("undefined") == 2 and "no shuffle ran at every seed" in texts
    assert "undetermined" in fig.get_suptitle()


def test_the_plot_draws_each_interval_in_leaderboard_order_over_the_shuffles(contest):
    _, section = contest
    fig = tournament_figure(section)
    estimates, intervals = _by_gid(fig, "estimate"), _by_gid(fig, "ci95")
    heights = [estimates[e.variant].get_ydata()[0] for e in section.entries]
    assert heights == sorted(heights, reverse=True)  # the leader on top
    for entry in section.entries:
        assert estimates[entry.variant].get_xdata()[0] == pytest.approx(entry.mean_diff_vs_shuffles)
        assert tuple(intervals[entry.variant].get_xdata()) == pytest.approx(entry.ci95)
    ax = fig.axes[0]
    dots = next(line for line in ax.lines if line.get_gid() == "shuffles")
    assert sorted(dots.get_xdata()) == pytest.approx(sorted(section.shuffle_diffs.values()))
    assert min(dots.get_ydata()) < min(heights)  # the shuffles' row is the bottom one
    assert any(p.get_gid() == "shuffle_range" for p in ax.patches)
    assert _by_gid(fig, "p_holm")["alloc_best"].get_text().endswith("PASS")
    assert "alloc_best" in fig.get_suptitle() and "6.25e-06" in ax.get_title()


def test_the_heatmaps_show_every_allocation_on_one_colour_scale(contest):
    results, _ = contest
    variants = heatmap_variants(results)
    assert variants == [
        "alloc_best",
        "alloc_depth",
        "alloc_zero",
        "per_layer",
        "per_layer_shuffled_k0",
    ]
    fig = allocation_figure(results)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title().split("\n")[0] for ax in panels] == variants
    assert len({ax.images[0].get_clim() for ax in panels}) == 1  # one shared scale
    depth = panels[1].images[0].get_array()
    assert depth.shape == (4, 7)  # layers × module types
    expected = allocator_pattern("alloc_depth", 42)
    assert np.exp2(np.asarray(depth[:, 0])).tolist() == pytest.approx(
        [expected[n] for n in NAMES[::7]]
    )
    zero = panels[2].images[0].get_array()
    low, _ = panels[2].images[0].get_clim()
    assert not np.ma.is_masked(zero[0, 0]) and zero[0, 0] < low  # rank 0: the "under" grey
    assert "0" in [t.get_text() for t in panels[2].texts]
    assert "seed 42" in fig.get_suptitle()


def test_the_pngs_are_written_and_not_blank(contest, tmp_path):
    results, section = contest
    for path in (
        plot_tournament(section, tmp_path / "tournament.png"),
        plot_allocation_heatmaps(results, tmp_path / "allocation_heatmaps.png"),
    ):
        assert path.is_file() and path.stat().st_size > 10_000
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 300 and image.shape[1] > 600
        assert image[..., :3].std() > 0.05
