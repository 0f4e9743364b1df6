"""Group-sequential seeds: boundaries against independent checks, and the rule's behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gradience.stats.sequential import look, run_sequential
from gradience.stats.spending import boundaries, design_boundaries, obf_spending
from gradience.stats.verdict import Outcome

ALPHA, M = 0.05, 2
TAU = {"efficacy": 0.02, "placement": 0.01}
MIN_D = {"efficacy": 0.5}


def _canonical_crossings(boundary, draws: int, seed: int) -> np.ndarray:
    """Cumulative share of paths of the canonical Z process that crossed by each look."""
    rng = np.random.default_rng(seed)
    info = np.asarray(boundary.information)
    steps = np.diff(np.concatenate([[0.0], info]))
    score = np.cumsum(rng.standard_normal((draws, info.size)) * np.sqrt(steps), axis=1)
    crossed = np.maximum.accumulate(score / np.sqrt(info) >= np.asarray(boundary.z), axis=1)
    return crossed.mean(axis=0)


def _t_crossings(boundary, levels, draws: int, seed: int) -> np.ndarray:
    """Cumulative share of null paired-t paths whose p-value crossed ``levels`` by each look."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((draws, boundary.looks[-1]))
    crossed = np.zeros(draws, dtype=bool)
    out = []
    for n, level in zip(boundary.looks, levels, strict=True):
        xs = x[:, :n]
        t = xs.mean(axis=1) / (xs.std(axis=1, ddof=1) / math.sqrt(n))
        crossed |= stats.t.sf(t, n - 1) <= level
        out.append(crossed.mean())
    return np.asarray(out)


def test_spending_function_is_obrien_fleming_type():
    a = 0.025
    assert obf_spending(1.0, a) == pytest.approx(a, rel=1e-12)
    assert obf_spending(0.0, a) == 0.0
    expected = 2 * (1 - stats.norm.cdf(stats.norm.ppf(1 - a / 2) / math.sqrt(0.2)))
    assert obf_spending(0.2, a) == pytest.approx(expected, rel=1e-9)
    ts = np.linspace(0.05, 1, 20)
    assert np.all(np.diff([obf_spending(t, a) for t in ts]) > 0)


@pytest.mark.parametrize("n_max", [15, 20])
def test_normal_boundaries_spend_the_planned_alpha_by_monte_carlo(n_max):
    boundary = design_boundaries(ALPHA, M, 3, n_max)
    draws = 200_000
    simulated = _canonical_crossings(boundary, draws, seed=n_max)
    spent = np.asarray(boundary.spent)
    se = np.sqrt(spent * (1 - spent) / draws)
    assert np.all(np.abs(simulated - spent) <= 4 * se + 1e-6), simulated - spent
    assert spent[-1] == pytest.approx(ALPHA / M, rel=1e-12)


def test_normal_boundaries_agree_with_the_multivariate_normal_cdf():
    boundary = boundaries([3, 6, 9], 9, 0.025)
    info = np.asarray(boundary.information)
    cov = np.sqrt(np.minimum.outer(info, info) / np.maximum.outer(info, info))
    for k in range(1, 4):
        upper = np.asarray(boundary.z[:k])
        dist = stats.multivariate_normal(cov=cov[:k, :k])
        not_crossed = dist.cdf(upper) if k > 1 else stats.norm.cdf(upper[0])
        assert 1 - not_crossed == pytest.approx(boundary.spent[k - 1], abs=2e-5)


def test_a_single_look_is_the_fixed_sample_level():
    boundary = boundaries([7], 7, 0.025)
    assert boundary.z[0] == pytest.approx(stats.norm.isf(0.025), abs=1e-9)
    assert boundary.normal_p[0] == pytest.approx(0.025, rel=1e-9)
    assert boundary.nominal_p[0] == pytest.approx(0.025, rel=1e-9)
    assert boundary.t_critical[0] == pytest.approx(stats.t.isf(0.025, 6), rel=1e-9)
    one = design_boundaries(ALPHA, M, 5, 5)
    assert one.nominal_p == pytest.approx((ALPHA / M,))


@pytest.mark.parametrize("n_max", [15, 20])
def test_levels_increase_and_stay_below_the_level(n_max):
    boundary = design_boundaries(ALPHA, M, 3, n_max)
    a = ALPHA / M
    for levels in (boundary.normal_p, boundary.nominal_p):
        assert all(q2 > q1 for q1, q2 in zip(levels, levels[1:], strict=False))
        assert levels[0] > 0 and levels[-1] < a
    assert np.all(np.diff(boundary.z) < 0)
    assert boundary.looks == tuple(range(3, n_max + 1))
    # the t calibration only ever tightens the significance-level approach
    assert all(
        q <= p * (1 + 1e-9) for q, p in zip(boundary.nominal_p, boundary.normal_p, strict=True)
    )


@pytest.mark.parametrize("n_max", [15, 20])
def test_calibrated_levels_spend_the_alpha_on_the_t_process(n_max):
    """An independent simulation (another seed) of the null paired t: the levels the decisions
    use spend a(t_k) by each look; the significance-level approach overspends."""
    boundary = design_boundaries(ALPHA, M, 3, n_max)
    draws = 200_000
    spent = np.asarray(boundary.spent)
    se = np.sqrt(spent * (1 - spent) / draws)
    calibrated = _t_crossings(boundary, boundary.nominal_p, draws, seed=1000 + n_max)
    assert np.all(np.abs(calibrated - spent) <= 4 * se + 2e-4), calibrated - spent
    through_p = _t_crossings(boundary, boundary.normal_p, draws, seed=1000 + n_max)
    assert through_p[-1] > spent[-1] + 5 * se[-1]


def test_boundaries_are_cached_and_deterministic():
    first = design_boundaries(ALPHA, M, 3, 15)
    assert design_boundaries(ALPHA, M, 3, 15) is first
    assert boundaries(range(3, 16), 15, ALPHA / M) is first
    assert first.nominal_p_at(10) == first.nominal_p[7]
    with pytest.raises(ValueError):
        first.nominal_p_at(2)


@pytest.mark.parametrize(
    "looks,n_max,level",
    [([], 10, 0.025), ([3, 3], 10, 0.025), ([1, 2], 10, 0.025), ([3, 11], 10, 0.025), ([3], 5, 0)],
)
def test_bad_designs_are_refused(looks, n_max, level):
    with pytest.raises(ValueError):
        boundaries(looks, n_max, level)


def test_look_passes_fails_and_stays_open():
    rng = np.random.default_rng(0)
    b = rng.normal(0.6, 0.01, 10)
    big = look(b + 0.05 + rng.normal(0, 0.003, 10), b, 0.02, 0.01, min_d=0.5)
    assert big.decision is Outcome.PASS and "PASS" in big.reason
    assert big.p_pass <= 0.01 and big.mean > 0.02 and big.cohens_d > 0.5
    assert big.bounds[0] > 0
    zero = look(b + rng.normal(0, 0.003, 10), b, 0.02, 0.01)
    assert zero.decision is Outcome.FAIL and zero.bounds[1] < 0.02 and zero.p_fail <= 0.01
    noisy = look(b + 0.01 + rng.normal(0, 0.03, 10), b, 0.02, 0.001)
    assert noisy.decision is None and "open" in noisy.reason


def test_look_statistics_match_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.62, 0.02, 8), rng.normal(0.6, 0.02, 8)
    result = look(a, b, 0.01, 0.05)
    expected = stats.ttest_rel(a, b, alternative="greater")
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_pass == pytest.approx(expected.pvalue)
    shifted = stats.ttest_rel(a - 0.01, b, alternative="less")
    assert result.statistic_fail == pytest.approx(shifted.statistic)
    assert result.p_fail == pytest.approx(shifted.pvalue)


def test_cohens_d_rule_keeps_a_pass_open():
    # a consistent shift with a huge spread between seeds: significant, small d
    seeds = np.array([0.1, 0.9, 0.3, 0.7, 0.5, 0.2])
    a = seeds + 0.03 + np.array([0.001, -0.001, 0.0005, 0.0, -0.0005, 0.0002])
    result = look(a, seeds, 0.02, 0.01, min_d=0.5)
    assert result.decision is None and "Cohen's d" in result.reason
    assert look(a, seeds, 0.02, 0.01).decision is Outcome.PASS


@pytest.mark.parametrize(
    "a,b",
    [([0.5], [0.4]), ([0.5, 0.6, 0.7], [0.4, 0.5, 0.6]), ([], [])],
)
def test_undefined_statistics_leave_the_look_open(a, b):
    result = look(a, b, 0.01, 0.05)
    assert result.decision is None and result.reason
    assert result.p_pass is None and result.p_fail is None


def test_a_look_that_spends_nothing_cannot_decide():
    a = np.array([1.0, 1.001, 0.999, 1.0005])
    result = look(a, np.zeros(4), 0.01, 0.0)
    assert result.decision is None and "cannot decide" in result.reason


def _pairs(rng, n, delta_e, delta_m):
    seed = rng.normal(0, 0.009, n)
    per_layer = 0.64 + seed + rng.normal(0, 0.011 / math.sqrt(2), n)
    probe = 0.64 - delta_e + seed + rng.normal(0, 0.015, n)
    shuffle = 0.64 - delta_m + seed + rng.normal(0, 0.011 / math.sqrt(2), n)
    return {"efficacy": (per_layer, probe), "placement": (per_layer, shuffle)}


def test_a_large_effect_stops_at_the_first_look():
    base = np.array([0.60, 0.61, 0.59, 0.62, 0.60])
    pairs = {
        "efficacy": (base + 0.5 + np.array([0.0, 1e-4, -1e-4, 0, 0]), base),
        "placement": (base + 0.3 + np.array([1e-4, 0.0, -1e-4, 0, 0]), base),
    }
    result = run_sequential(pairs, TAU, ALPHA, 3, 15, MIN_D)
    assert result.stopped and result.n_seeds == 3 and len(result.looks) == 1
    assert result.outcomes == {"efficacy": Outcome.PASS, "placement": Outcome.PASS}
    assert result.decided_at == {"efficacy": 3, "placement": 3}
    assert "2 later seed(s) not used" in result.reason


def test_under_the_null_most_runs_go_to_n_max():
    """δ = τ = 0: PASS and FAIL are both errors, each crossing has probability <= a."""
    rng = np.random.default_rng(5)
    zero = {"efficacy": 0.0, "placement": 0.0}
    reached, decided = 0, 0
    for _ in range(100):
        result = run_sequential(_pairs(rng, 15, 0.0, 0.0), zero, ALPHA, 3, 15)
        reached += result.n_seeds == 15
        decided += sum(o is not Outcome.UNDETERMINED for o in result.outcomes.values())
        assert result.stopped
    assert reached >= 80  # expected about 90 (two contrasts, each decided w.p. <= 2a = 0.05)
    assert decided <= 20


def test_decisions_stay_decided_as_seeds_are_added():
    rng = np.random.default_rng(11)
    for _ in range(20):
        pairs = _pairs(rng, 15, 0.02, 0.005)
        previous = None
        for n in range(1, 16):
            current = run_sequential(
                {k: (a[:n], b[:n]) for k, (a, b) in pairs.items()}, TAU, ALPHA, 3, 15, MIN_D
            )
            if previous is not None:
                for before, now in zip(previous.contrasts, current.contrasts, strict=True):
                    if before.decided_at is not None:
                        assert (now.outcome, now.decided_at) == (before.outcome, before.decided_at)
                        assert now.last == before.last
                assert current.n_seeds >= previous.n_seeds
            if current.stopped:
                break
            previous = current


def test_a_decided_contrast_is_not_looked_at_again():
    base = np.linspace(0.5, 0.7, 15)
    consistent = base + 0.5 + np.tile([0.0, 1e-4, -1e-4], 5)
    noisy = base + np.random.default_rng(3).normal(0.0, 0.05, 15)
    result = run_sequential(
        {"efficacy": (consistent, base), "placement": (noisy, base)}, TAU, ALPHA, 3, 15
    )
    assert result.decided_at["efficacy"] == 3
    for look_ in result.looks[1:]:
        assert "efficacy" not in look_.decisions
    assert result.contrasts[0].last.n == 3


def test_an_unfinished_run_asks_for_another_seed():
    rng = np.random.default_rng(2)
    pairs = _pairs(rng, 4, 0.0, 0.0)
    result = run_sequential(pairs, TAU, ALPHA, 3, 15, MIN_D)
    assert not result.stopped and result.n_seeds == 4 and "add a seed" in result.reason
    assert set(result.outcomes.values()) == {Outcome.UNDETERMINED}
    early = run_sequential(
        {k: (a[:2], b[:2]) for k, (a, b) in pairs.items()}, TAU, ALPHA, 3, 15, MIN_D
    )
    assert not early.stopped and early.looks == () and "first look is at 3" in early.reason


def test_open_at_n_max_is_undetermined_and_later_seeds_are_unused():
    seeds = np.linspace(0.55, 0.65, 18)
    # the mean difference sits on the threshold with a wide spread: neither shown nor ruled out
    wide = seeds + 0.01 + np.tile([0.1, -0.1, 0.05, -0.05, 0.02, -0.02], 3)
    result = run_sequential({"x": (wide, seeds)}, {"x": 0.01}, ALPHA, 3, 6)
    assert result.stopped and result.n_seeds == 6
    assert result.outcomes == {"x": Outcome.UNDETERMINED}
    assert "12 later seed(s) not used" in result.reason and "n_max" in result.reason
    assert result.level == ALPHA and result.looks[-1].n == 6


def test_a_contrast_with_fewer_seeds_is_looked_at_when_it_has_them():
    rng = np.random.default_rng(6)
    pairs = _pairs(rng, 8, 0.0, 0.0)
    a, b = pairs["placement"]
    pairs["placement"] = (a[:5], b[:5])
    result = run_sequential(pairs, TAU, ALPHA, 3, 15, MIN_D)
    for look_ in result.looks:
        if look_.n > 5:
            assert "placement" not in look_.decisions
    assert result.n_seeds == 8


def test_bad_calls_are_refused():
    pair = {"x": ([0.1, 0.2, 0.3], [0.0, 0.1, 0.2])}
    with pytest.raises(ValueError):
        run_sequential({}, {}, ALPHA, 3, 15)
    with pytest.raises(ValueError):
        run_sequential(pair, {}, ALPHA, 3, 15)
    with pytest.raises(ValueError):
        run_sequential(pair, {"x": 0.01}, 1.5, 3, 15)
    with pytest.raises(ValueError):
        run_sequential(pair, {"x": 0.01}, ALPHA, 5, 4)
    with pytest.raises(ValueError):
        run_sequential({"x": ([0.1, 0.2], [0.1])}, {"x": 0.01}, ALPHA, 3, 15)
