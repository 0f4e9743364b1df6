"""The audit figures draw what they are given (checked on the drawn data, not on pixels)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from helpers_audit import synthetic_audit  # noqa: E402

from gradience.audit.plots import plot_audit, plot_energy_curves, plot_rank_heatmap, plot_spectra  # noqa: E402

SPECTRA = {
    "model.layers.0.self_attn.q_proj": ([4.0, 2.0, 1.0, 0.0], 32, 32),
    "model.layers.1.self_attn.q_proj": ([2.0, 2.0, 1.0, 1.0], 32, 32),
    "model.layers.1.mlp.down_proj": ([1.0, 0.5, 0.0, 0.0], 96, 32),
    "lm_head": ([3.0, 0.0, 0.0, 0.0], 32, 64),
}


def test_rank_heatmap_places_every_module_in_its_layer_and_type_cell():
    ranks = {
        "model.layers.0.self_attn.q_proj": 8,
        "model.layers.1.self_attn.q_proj": 2,
        "model.layers.1.mlp.down_proj": 64,
        "lm_head": 4,
    }
    fig, ax = plt.subplots()
    plot_rank_heatmap(ranks, ax, "ranks", rank_range=(1, 64))
    grid = np.ma.filled(ax.images[0].get_array(), np.nan)
    # rows: layer 0, layer 1, other; columns: q_proj, down_proj, lm_head (order of appearance)
    expected = np.log2([[8, np.nan, np.nan], [2, 64, np.nan], [np.nan, np.nan, 4]])
    np.testing.assert_array_equal(grid, expected)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "other"]
    assert ax.images[0].get_clim() == (0.0, math.log2(64))
    plt.close(fig)


def test_spectra_and_energy_curves_show_the_median_per_type(tmp_path):
    audit = synthetic_audit(SPECTRA)
    fig, axes = plt.subplots(1, 2)
    plot_spectra(audit, axes[0])
    q_line = next(line for line in axes[0].get_lines() if line.get_label().startswith("q_proj"))
    np.testing.assert_allclose(
        q_line.get_ydata(), np.median([[1, 0.5, 0.25, 1e-8], [1, 1, 0.5, 0.5]], axis=0)
    )
    plot_energy_curves(audit, axes[1])
    head = next(line for line in axes[1].get_lines() if line.get_label().startswith("lm_head"))
    np.testing.assert_allclose(head.get_ydata(), [0, 1, 1, 1, 1])
    plt.close(fig)
    assert plot_spectra(audit, tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_audit(audit, "energy@0.90", tmp_path / "a.png").stat().st_size > 10_000
