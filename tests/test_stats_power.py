"""Power and seeds needed against statsmodels' independent implementation."""

from __future__ import annotations

import math

import pytest
from statsmodels.stats.power import TTestPower

from gradience.stats.power import paired_t_power, seeds_for_power


@pytest.mark.parametrize(("dz", "n"), [(0.3, 10), (1.0, 3), (2.5, 2), (0.8, 25)])
def test_power_matches_statsmodels(dz, n):
    expected = TTestPower().power(effect_size=dz, nobs=n, alpha=0.05, alternative="larger")
    assert paired_t_power(dz, n, 0.05) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dz", [0.2, 0.5, 0.75, 1.2, 3.0])
def test_seeds_needed_is_the_smallest_n_reaching_the_target(dz):
    needed = seeds_for_power(dz, 0.05, 0.8).n
    solved = TTestPower().solve_power(effect_size=dz, alpha=0.05, power=0.8, alternative="larger")
    assert needed == max(2, math.ceil(solved))
    assert paired_t_power(dz, needed, 0.05) >= 0.8
    if needed > 2:
        assert paired_t_power(dz, needed - 1, 0.05) < 0.8


@pytest.mark.parametrize("dz", [None, 0.0, -0.4, float("nan"), 1e-4])
def test_seeds_needed_is_null_with_a_reason_when_no_n_works(dz):
    result = seeds_for_power(dz, 0.05, 0.8)
    assert result.n is None and result.reason
