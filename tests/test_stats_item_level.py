"""Exact McNemar and the hierarchical bootstrap against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradience.stats.item_level import hierarchical_bootstrap, mcnemar_exact


def _closed_form_mcnemar(b: int, c: int) -> float:
    n = b + c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize(("b", "c"), [(12, 3), (3, 12), (7, 7), (0, 5), (40, 25)])
def test_mcnemar_counts_discordant_items_and_matches_the_binomial_tail(b, c):
    rng = np.random.default_rng(b * 100 + c)
    concordant = rng.integers(0, 2, size=30)
    a_items = np.concatenate([np.ones(b), np.zeros(c), concordant]).astype(int)
    b_items = np.concatenate([np.zeros(b), np.ones(c), concordant]).astype(int)
    order = rng.permutation(a_items.size)
    result = mcnemar_exact(a_items[order], b_items[order])
    assert (result.b, result.c) == (b, c)
    assert result.p == pytest.approx(_closed_form_mcnemar(b, c))


def test_mcnemar_without_discordant_items_is_p_one():
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]).p == 1.0


def test_mcnemar_rejects_non_binary_items():
    with pytest.raises(ValueError):
        mcnemar_exact([1, 2], [1, 0])


def _ternary_diffs(rng: np.random.Generator, n: int, p_up: float, p_down: float) -> np.ndarray:
    return rng.choice([-1.0, 0.0, 1.0], size=n, p=[p_down, 1 - p_up - p_down, p_up])


def test_bootstrap_variance_matches_the_two_stage_closed_form():
    # Var(T*) = (1/S) * [ mean_s (m_s - m)^2 + mean_s v_s / N_s ]  (population moments)
    rng = np.random.default_rng(3)
    diffs = [_ternary_diffs(rng, 400, p_up, 0.1) for p_up in (0.12, 0.16, 0.2, 0.14)]
    means = np.array([d.mean() for d in diffs])
    within = np.mean([d.var() / d.size for d in diffs])
    expected_var = (np.mean((means - means.mean()) ** 2) + within) / len(diffs)
    result = hierarchical_bootstrap(diffs, resamples=20_000)
    half = (result.ci95[1] - result.ci95[0]) / 2
    assert result.estimate == pytest.approx(means.mean())
    assert half == pytest.approx(1.96 * math.sqrt(expected_var), rel=0.05)


def test_bootstrap_agrees_with_explicit_index_resampling():
    rng = np.random.default_rng(5)
    diffs = [_ternary_diffs(rng, 300, 0.15, 0.1) for _ in range(3)]
    # an independent, loop-based implementation of the same two-stage scheme
    ref_rng = np.random.default_rng(11)
    replicates = []
    for _ in range(4000):
        chosen = ref_rng.integers(0, 3, size=3)
        replicates.append(
            np.mean([ref_rng.choice(diffs[s], size=diffs[s].size).mean() for s in chosen])
        )
    result = hierarchical_bootstrap(diffs)
    low, high = np.percentile(replicates, [2.5, 97.5])
    width = high - low
    assert result.ci95[0] == pytest.approx(low, abs=0.08 * width)
    assert result.ci95[1] == pytest.approx(high, abs=0.08 * width)
    expected_p = (1 + np.sum(np.asarray(replicates) <= 0)) / (len(replicates) + 1)
    assert result.p == pytest.approx(expected_p, abs=0.03)


def test_bootstrap_is_deterministic_and_its_p_is_bounded_by_the_resample_count():
    rng = np.random.default_rng(9)
    strong = [_ternary_diffs(rng, 500, 0.3, 0.0) for _ in range(3)]
    first, second = hierarchical_bootstrap(strong), hierarchical_bootstrap(strong)
    assert first == second
    assert first.p == pytest.approx(1 / (first.resamples + 1))
    assert first.resamples >= 10_000


def test_bootstrap_of_identical_variants_is_p_one_and_a_point_interval():
    result = hierarchical_bootstrap([np.zeros(100)] * 3)
    assert result.p == 1.0 and result.ci95 == (0.0, 0.0) and result.estimate == 0.0


def test_bootstrap_with_one_seed_resamples_items_only_and_says_so():
    rng = np.random.default_rng(1)
    diffs = _ternary_diffs(rng, 500, 0.2, 0.1)
    result = hierarchical_bootstrap([diffs])
    se = diffs.std() / math.sqrt(diffs.size)
    assert (result.ci95[1] - result.ci95[0]) / 2 == pytest.approx(1.96 * se, rel=0.05)
    assert "one seed" in result.reason
