"""Simulated experiments: the decision test's false-positive rate under a true null, and power.

Each simulated experiment has a fixed eval set of items with their own difficulty, a
training-noise offset per (seed, variant) run, and Bernoulli item-level noise; accuracies are
computed from the simulated items, then the seed-level paired t-test is applied exactly as
``analyze`` applies it.
"""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.mechanism import build_results

from gradience.config import HypothesisConfig
from gradience.stats import analyze
from gradience.stats.power import paired_t_power
from gradience.stats.seed_level import paired_t

N_EXPERIMENTS = 1000
N_ITEMS = 400
RUN_SD = 0.01  # seed-to-seed training noise in accuracy


def _simulate(
    n_seeds: int, effect: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracies of A and B, shape (experiments, seeds); A's items are ``effect`` easier."""
    p_item = rng.uniform(0.2, 0.9, size=(N_EXPERIMENTS, 1, 1, N_ITEMS))
    offsets = rng.normal(0.0, RUN_SD, size=(N_EXPERIMENTS, n_seeds, 2, 1))
    shift = np.array([effect, 0.0]).reshape(1, 1, 2, 1)
    correct = rng.random((N_EXPERIMENTS, n_seeds, 2, N_ITEMS)) < np.clip(
        p_item + offsets + shift, 0, 1
    )
    accuracy = correct.mean(axis=3)
    return accuracy[:, :, 0], accuracy[:, :, 1]


def _rejection_rate(a: np.ndarray, b: np.ndarray, alpha: float) -> float:
    p_values = [paired_t(a_row, b_row).p for a_row, b_row in zip(a, b, strict=True)]
    return float(np.mean([p is not None and p < alpha for p in p_values]))


@pytest.mark.parametrize("n_seeds", [3, 10])
def test_false_positive_rate_under_a_true_null_is_nominal(n_seeds):
    a, b = _simulate(n_seeds, 0.0, np.random.default_rng(100 + n_seeds))
    rate = _rejection_rate(a, b, 0.05)
    assert 0.02 <= rate <= 0.08, rate


def test_power_for_a_planted_three_point_effect_at_ten_seeds_matches_the_noncentral_t():
    a, b = _simulate(10, 0.03, np.random.default_rng(7))
    empirical = _rejection_rate(a, b, 0.05)
    true_sd = float(np.std(a - b, ddof=1))  # pooled over 10,000 simulated seeds: ~exact
    predicted = paired_t_power(0.03 / true_sd, 10, 0.05)
    print(
        f"planted +0.03 at 10 seeds: empirical power {empirical:.3f}, noncentral t {predicted:.3f}"
    )
    assert empirical == pytest.approx(predicted, abs=0.05)
    assert 0.3 < empirical < 0.99  # the design is neither hopeless nor trivially powered


def test_the_analysis_reports_power_for_a_simulated_ten_seed_experiment():
    rng = np.random.default_rng(3)
    seeds = range(100, 110)
    accuracies = {"probe": {}, "per_layer": {}, "per_layer_shuffled": {}}
    for seed in seeds:
        base = 0.6 + rng.normal(0, RUN_SD)
        accuracies["probe"][seed] = base + rng.normal(0, RUN_SD)
        accuracies["per_layer"][seed] = base + 0.03 + rng.normal(0, RUN_SD)
        accuracies["per_layer_shuffled"][seed] = base + 0.03 + rng.normal(0, RUN_SD)
    analysis = analyze(build_results(accuracies, n_items=400), HypothesisConfig())
    efficacy = analysis.contrasts["per_layer_vs_probe"]
    assert efficacy.n_seeds == 10
    dz = efficacy.cohens_dz
    assert paired_t_power(dz, efficacy.seeds_for_80pct_power, 0.05) >= 0.8
    assert 0.0 < efficacy.power_at_threshold <= 1.0
    mechanism = analysis.contrasts["per_layer_vs_per_layer_shuffled"]
    assert mechanism.seeds_for_80pct_power is None or mechanism.seeds_for_80pct_power >= 2
