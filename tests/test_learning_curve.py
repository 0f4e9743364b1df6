"""experiments/learning_curve.py's trend table against a by-hand least-squares fit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from fixtures.scripts import experiment_script
from scipy import stats

REPO = Path(__file__).resolve().parents[1]


def learning_curve_module():
    return experiment_script("learning_curve")


def noisy_curve(slope: float) -> dict[int, dict[str, list[float]]]:
    rng = np.random.default_rng(0)
    return {
        n: {"probe": [float(0.5 + slope * n + e) for e in rng.normal(0, 0.01, size=5)]}
        for n in (100, 150, 200, 250)
    }


def by_hand(curve, horizon: int) -> tuple[float, float]:
    """Change over ``horizon`` steps and its 95% CI half-width, from the normal equations."""
    xs = np.array([n for n in curve for _ in curve[n]["probe"]], dtype=float)
    ys = np.array([y for n in curve for y in curve[n]["probe"]])
    slope, intercept = np.polyfit(xs, ys, 1)
    residuals = ys - (slope * xs + intercept)
    stderr = math.sqrt(residuals @ residuals / (len(xs) - 2) / ((xs - xs.mean()) ** 2).sum())
    return slope * horizon, stats.t.ppf(0.975, len(xs) - 2) * stderr * horizon


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_trend_matches_a_fit_by_hand_and_judges_flatness_by_the_whole_ci() -> None:
    module = learning_curve_module()
    for slope, flat in ((0.0, "yes"), (0.002, "no")):  # 0.002/step: +0.02 per 10 steps
        curve = noisy_curve(slope)
        change, half = by_hand(curve, 10)
        row = cells(module.trend_table(curve, 0.01, 10, 0)[2])
        assert row[0] == "`probe`" and row[3] == flat
        assert float(row[1]) == round(change, 4)
        low, high = (float(x) for x in row[2].strip("[]").split(","))
        assert (low, high) == (round(change - half, 4), round(change + half, 4))


def test_fit_from_drops_the_early_points_and_one_step_count_is_not_computable() -> None:
    module = learning_curve_module()
    curve = noisy_curve(0.0)
    assert "200-250 steps" in module.trend_table(curve, 0.01, 10, 200)[0]
    assert "not computable" in module.trend_table(curve, 0.01, 10, 250)[2]


def test_from_json_rebuilds_the_tables_without_running(tmp_path: Path) -> None:
    module = learning_curve_module()
    saved = tmp_path / "curve.json"
    curve = noisy_curve(0.0)
    saved.write_text(json.dumps({"metric": "exact_match", "curve": curve}))
    config = REPO / "experiments" / "configs" / "cpu_demo.yaml"
    argv = [str(config), "--from-json", str(saved), "--output", str(tmp_path / "out")]
    assert module.main(argv) == 0
    text = (tmp_path / "out" / "learning_curve.md").read_text()
    assert "| 100 |" in text and "change over 10 more steps" in text
    assert (tmp_path / "out" / "learning_curve.png").stat().st_size > 0
    assert not list((tmp_path / "out").glob("steps_*"))  # nothing was run


def paired_curve(growth: float) -> dict[int, dict[str, dict[str, float]]]:
    """per_layer and probe per seed; per_layer - probe = 0.01 + growth * steps + noise."""
    rng = np.random.default_rng(1)
    curve = {}
    for n in (32, 64, 128, 256):
        probe = {str(s): float(0.5 + 0.001 * n + rng.normal(0, 0.02)) for s in (42, 43, 44)}
        gap = {s: 0.01 + growth * n + float(rng.normal(0, 0.003)) for s in probe}
        curve[n] = {"probe": probe, "per_layer": {s: probe[s] + gap[s] for s in probe}}
    return curve


def test_difference_table_pairs_by_seed_and_fits_the_trend_like_numpy() -> None:
    module = learning_curve_module()
    for growth, word in ((0.0, "no trend"), (0.0002, "moves with steps")):
        curve = paired_curve(growth)
        lines = module.difference_table(curve, "per_layer")
        assert lines[0] == "| steps | `per_layer` − `probe` |"
        xs = [n for n in curve for _ in range(3)]
        ys = [
            curve[n]["per_layer"][s] - curve[n]["probe"][s]
            for n in curve
            for s in curve[n]["probe"]
        ]
        row_32 = cells(lines[2])
        first = ys[:3]
        assert row_32[1] == f"{np.mean(first):+.4f} ± {np.std(first, ddof=1):.4f} (n=3)"
        slope = np.polyfit(xs, ys, 1)[0] * 100
        trend = cells(lines[-1])[1]
        assert trend.startswith(f"{slope:+.4f} [") and trend.endswith(word)


def test_difference_table_skips_unpaired_seeds_and_old_files_say_why(tmp_path: Path) -> None:
    module = learning_curve_module()
    curve = paired_curve(0.0)
    del curve[32]["probe"]["44"]  # that seed's probe failed: its per_layer is unpaired
    assert "(n=2)" in cells(module.difference_table(curve, "per_layer")[2])[1]
    saved = tmp_path / "old.json"  # written before by_seed existed
    saved.write_text(json.dumps({"metric": "exact_match", "curve": noisy_curve(0.0)}))
    config = REPO / "experiments" / "configs" / "cpu_demo.yaml"
    argv = [str(config), "--from-json", str(saved), "--output", str(tmp_path / "out")]
    assert module.main(argv) == 0
    assert "no by_seed scores" in (tmp_path / "out" / "learning_curve.md").read_text()
