"""Rank measures and policies on hand-made spectra with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradience.ranks import parse_policy, policy_rank, round_up_to_allowed
from gradience.ranks.allowed import powers_of_two_up_to
from gradience.ranks.measures import cumulative_energy, effective_rank, energy_rank, stable_rank
from gradience.ranks.policies import OMEGA_SQUARE, gavish_donoho_omega, knee_rank, oht_rank


def test_stable_rank_is_frobenius_over_spectral_squared():
    assert stable_rank([2.0, 1.0, 1.0]) == pytest.approx((4 + 1 + 1) / 4)
    assert stable_rank([3.0, 3.0, 3.0]) == pytest.approx(3.0)
    assert stable_rank([0.0, 0.0]) == 0.0


def test_effective_rank_of_k_equal_values_is_k():
    assert effective_rank([5.0] * 7 + [0.0] * 3) == pytest.approx(7.0)
    p = np.array([3.0, 1.0]) / 4
    assert effective_rank([3.0, 1.0]) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert effective_rank([0.0, 0.0, 0.0]) == 0.0


def test_energy_rank_counts_squared_values():
    # energies 9, 4, 1 of 14: 64% after one value, 93% after two, 100% after three
    assert energy_rank([3.0, 2.0, 1.0], 0.5) == 1
    assert energy_rank([3.0, 2.0, 1.0], 0.9) == 2
    assert energy_rank([3.0, 2.0, 1.0], 0.95) == 3
    assert energy_rank([3.0, 2.0, 1.0], 1.0) == 3
    assert energy_rank([1.0, 1.0, 0.0, 0.0], 1.0) == 2  # trailing zeros are not needed
    assert energy_rank([0.1] * 10, 0.9) == 9  # exactly 90% after nine: no float slop
    assert energy_rank([0.0] * 4, 0.9) == 0


def test_spectra_must_be_descending_and_finite():
    with pytest.raises(ValueError, match="descending"):
        stable_rank([1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        effective_rank([1.0, float("nan")])


@pytest.mark.parametrize(
    "policy,spectrum,expected",
    [
        ("energy@0.90", [3.0, 2.0, 1.0, 0.0], 2),
        ("energy@1", [3.0, 2.0, 1.0, 0.0], 3),
        ("energy@0.5", [3.0, 2.0, 1.0, 0.0], 1),
        ("erank", [1.0, 1.0, 1.0, 1.0], 4),  # exp(log 4) = 4.000000000000001 must not become 5
        ("erank", [2.0, 1.0, 0.0, 0.0], 2),  # exp(H) = 1.89
        ("stable_rank", [1.0, 1.0, 1.0, 0.0], 3),
        ("stable_rank", [2.0, 1.0, 1.0, 0.0], 2),  # 1.5 → 2
        ("knee", [4.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.1, 0.1], 2),
        ("oht", [10.0, 5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2),
    ],
)
def test_policy_rank_on_hand_made_spectra(policy, spectrum, expected):
    assert policy_rank(spectrum, policy) == expected


def brute_force_knee(sv: np.ndarray) -> int:
    """Farthest point of the curve above the chord from (0, 0) to (r, 1), by plain geometry."""
    r = len(sv)
    energy = np.concatenate([[0.0], np.cumsum(sv**2) / np.sum(sv**2)])
    # perpendicular distance of (k/r, E_k) to the line x - y = 0, signed (above is positive)
    distance = [(energy[k] - k / r) / math.sqrt(2) for k in range(r + 1)]
    return int(np.argmax(distance))


def test_knee_is_the_farthest_point_above_the_chord():
    rng = np.random.default_rng(0)
    for _ in range(200):
        r = int(rng.integers(2, 65))
        sv = np.sort(rng.exponential(size=r) ** rng.uniform(0.5, 4))[::-1]
        assert knee_rank(sv) == brute_force_knee(sv)
        # ... which for a concave curve is the count of energies above the mean energy
        energies = sv**2
        assert knee_rank(sv) == int(np.sum(energies > energies.mean()))


def test_knee_keeps_the_ends_of_the_curve():
    r = 16
    curve = cumulative_energy(np.linspace(2, 1, r))
    assert curve[0] == 0.0 and curve[-1] == 1.0 and len(curve) == r + 1
    assert knee_rank([10.0] + [1.0] * (r - 1)) == 1  # an elbow at the first point is found
    assert knee_rank([1.0] * (r - 1) + [1e-3]) == r - 1  # ... and at the last-but-one
    assert knee_rank([1.0] + [0.0] * (r - 1)) == 1


def test_knee_of_a_flat_or_zero_spectrum():
    assert knee_rank([0.7] * 8) == 8  # on the chord: no elbow, the whole rank is used
    assert knee_rank([0.0] * 8) == 0


def test_gavish_donoho_omega_matches_the_paper():
    assert gavish_donoho_omega(1.0) == pytest.approx(2.858, abs=1e-3)  # paper's ω(1)
    assert (
        pytest.approx(gavish_donoho_omega(1.0), rel=1e-10) == OMEGA_SQUARE
    )  # the constant oht uses
    for beta in (0.1, 0.25, 0.5, 0.75, 1.0):
        cubic_fit = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43  # paper's approximation
        assert gavish_donoho_omega(beta) == pytest.approx(cubic_fit, abs=0.02)


def test_oht_separates_signal_from_a_noise_bulk():
    rng = np.random.default_rng(4)
    n, k = 64, 3
    noise = rng.standard_normal((n, n))
    signal = sum(
        30 * np.sqrt(n) * np.outer(rng.standard_normal(n), rng.standard_normal(n)) / n
        for _ in range(k)
    )
    sv = np.linalg.svd(signal + noise, compute_uv=False)
    assert oht_rank(sv) == k
    assert oht_rank(np.linalg.svd(noise, compute_uv=False)) == 0


def test_oht_never_exceeds_half_the_rank():
    assert oht_rank([10.0] * 4 + [1.0] * 4) == 0  # median 5.5: the documented ceiling
    assert oht_rank([10.0] * 3 + [1.0] * 5) == 3
    assert oht_rank([0.0] * 5) == 0


@pytest.mark.parametrize(
    "name", ["energy", "energy@0", "energy@1.5", "energy@x", "median", "ERANK", ""]
)
def test_bad_policy_names_are_rejected(name):
    with pytest.raises(ValueError):
        parse_policy(name)


def test_parse_policy_reads_tau():
    assert parse_policy("energy@0.95").tau == 0.95
    assert parse_policy("knee").kind == "knee"


ALLOWED = [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize(
    "raw,margin,module_r,expected",
    [
        (3, 1.0, 64, 4),
        (4, 1.0, 64, 4),
        (5, 1.0, 64, 8),
        (0, 1.0, 64, 1),  # a zero update still gets the smallest allowed rank
        (3, 1.5, 64, 8),  # 4.5 → 8
        (3, 1.1, 64, 4),  # 3.3000000000000003 → 4
        (10, 1.0 / 3.0 * 1.2, 64, 4),  # 3.9999999999999996: round-off around 4 stays 4
        (40, 2.0, 64, 64),  # 80: no allowed rank that large → the largest, capped at r
        (20, 1.0, 16, 16),  # 32 capped at the module's own r
        (1, 1.0, 1, 1),
    ],
)
def test_round_up_to_allowed(raw, margin, module_r, expected):
    assert round_up_to_allowed(raw, ALLOWED, module_r, margin) == expected


def test_round_up_uses_unsorted_allowed_ranks_and_rejects_bad_input():
    assert round_up_to_allowed(5, [16, 6, 2], 64) == 6
    with pytest.raises(ValueError):
        round_up_to_allowed(5, [], 64)
    with pytest.raises(ValueError):
        round_up_to_allowed(5, [0, 4], 64)
    with pytest.raises(ValueError):
        round_up_to_allowed(5, ALLOWED, 64, margin=0)


def test_default_allowed_ranks_are_powers_of_two_up_to_r():
    assert powers_of_two_up_to(64) == [1, 2, 4, 8, 16, 32, 64]
    assert powers_of_two_up_to(48) == [1, 2, 4, 8, 16, 32, 48]  # r itself stays reachable
    assert powers_of_two_up_to(1) == [1]
