"""Seed-level statistics against closed forms and differently-called scipy functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gradience.stats.seed_level import cohens_d, cohens_dz, mean_diff, paired_t, welch_t

A = [0.672, 0.681, 0.668, 0.690]
B = [0.651, 0.662, 0.660, 0.655]


def test_mean_diff_ci_matches_the_one_sample_t_interval():
    diffs = np.subtract(A, B)
    result = mean_diff(A, B)
    expected = stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    assert result.mean == pytest.approx(diffs.mean())
    assert result.ci95 == pytest.approx((expected.low, expected.high))
    assert result.sd == pytest.approx(np.std(diffs, ddof=1))


def test_paired_t_is_the_closed_form_one_sided_t():
    diffs = np.subtract(A, B)
    n = diffs.size
    t = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(n))
    result = paired_t(A, B)
    assert result.statistic == pytest.approx(t)
    assert result.p == pytest.approx(stats.t.sf(t, n - 1))
    assert result.df == n - 1
    assert paired_t(B, A).p == pytest.approx(1 - result.p)  # one-sided: direction matters


def test_welch_t_matches_the_welch_satterthwaite_closed_form():
    a, b = np.asarray(A), np.asarray(B[:3])  # unequal sizes on purpose
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    result = welch_t(a, b)
    assert result.statistic == pytest.approx(t)
    assert result.df == pytest.approx(df)
    assert result.p == pytest.approx(stats.t.sf(t, df))


def test_cohens_d_uses_the_mean_of_the_two_variances_and_dz_the_sd_of_diffs():
    a, b = np.asarray(A), np.asarray(B)
    pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    assert cohens_d(a, b).value == pytest.approx((a.mean() - b.mean()) / pooled)
    diffs = a - b
    assert cohens_dz(a, b).value == pytest.approx(diffs.mean() / diffs.std(ddof=1))


def test_two_seeds_give_one_degree_of_freedom():
    result = paired_t([0.70, 0.72], [0.66, 0.69])
    diffs = np.array([0.04, 0.03])
    t = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(2))
    assert result.df == 1
    assert result.p == pytest.approx(stats.t.sf(t, 1))
    ci = mean_diff([0.70, 0.72], [0.66, 0.69]).ci95
    half = stats.t.ppf(0.975, 1) * diffs.std(ddof=1) / math.sqrt(2)
    assert ci == pytest.approx((diffs.mean() - half, diffs.mean() + half))


def test_one_seed_leaves_every_spread_statistic_undefined_with_a_reason():
    assert mean_diff([0.7], [0.6]).mean == pytest.approx(0.1)
    assert mean_diff([0.7], [0.6]).ci95 is None
    for result in (paired_t([0.7], [0.6]), welch_t([0.7], [0.6])):
        assert result.statistic is None and result.p is None and result.reason
    for estimate in (cohens_d([0.7], [0.6]), cohens_dz([0.7], [0.6])):
        assert estimate.value is None and estimate.reason


def test_identical_paired_differences_are_zero_variance_not_infinite_t():
    # 0.66 - 0.65 and 0.68 - 0.67 differ in the last bit as floats; scipy alone says t = inf
    a, b = [0.66, 0.68, 0.70], [0.65, 0.67, 0.69]
    assert paired_t(a, b).p is None and "zero variance" in paired_t(a, b).reason
    assert cohens_dz(a, b).value is None
    assert mean_diff(a, b).ci95 is None and mean_diff(a, b).mean == pytest.approx(0.01)
    assert cohens_d(a, b).value is not None  # each variant does vary over seeds


def test_identical_variants_and_constant_variants_are_undefined():
    same = [0.65, 0.66, 0.64]
    assert paired_t(same, same).p is None
    assert cohens_dz(same, same).value is None
    constant_a, constant_b = [0.7, 0.7, 0.7], [0.6, 0.6, 0.6]
    assert welch_t(constant_a, constant_b).p is None
    assert cohens_d(constant_a, constant_b).value is None
    one_constant = welch_t(constant_a, [0.6, 0.62, 0.61])
    assert one_constant.p is not None and math.isfinite(one_constant.statistic)


def test_unequal_paired_lengths_are_rejected():
    with pytest.raises(ValueError):
        paired_t([0.1, 0.2], [0.1])
