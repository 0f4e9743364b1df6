"""The truncation math against dense float64 SVDs (pure numpy, no adapters)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradience.compress.truncate import (
    alpha_for_scaling,
    balanced_factors,
    core_svd,
    difference_norm,
    kept_energy,
    optimal_relative_error,
    padded_spectrum,
    peft_scaling,
)


def factors(rng, r, d_in, d_out, decay=0.7):
    """A (r×d_in), B (d_out×r) whose product has a decaying spectrum with clear gaps."""
    a = rng.standard_normal((r, d_in)) / math.sqrt(d_in)
    b = rng.standard_normal((d_out, r)) * decay ** np.arange(r)
    return a, b


def best_rank_k(delta, k):
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


@pytest.mark.parametrize(("r", "d_in", "d_out"), [(8, 40, 24), (8, 24, 40), (6, 4, 30)])
def test_truncation_is_the_dense_best_rank_k_approximation(r, d_in, d_out):
    rng = np.random.default_rng(0)
    a, b = factors(rng, r, d_in, d_out)
    delta = b @ a
    dense_sv = np.linalg.svd(delta, compute_uv=False)
    core = core_svd(a, b)
    for k in range(1, r + 1):
        new_b, new_a = balanced_factors(core, a, b, k)
        assert new_b.shape == (d_out, k) and new_a.shape == (k, d_in)
        truncated = new_b @ new_a
        scale = np.linalg.norm(delta)
        assert np.linalg.norm(truncated - best_rank_k(delta, k)) <= 1e-12 * scale
        # Eckart–Young: the error is exactly the energy of the dropped singular values
        tail = math.sqrt(float(np.sum(dense_sv[k:] ** 2)))
        assert np.linalg.norm(delta - truncated) == pytest.approx(tail, rel=1e-9, abs=1e-13 * scale)
        assert optimal_relative_error(padded_spectrum(core, r), k) == pytest.approx(
            tail / scale, rel=1e-9, abs=1e-13
        )


def test_balanced_split_puts_root_sigma_in_each_factor():
    rng = np.random.default_rng(1)
    a, b = factors(rng, 8, 50, 30)
    core = core_svd(a, b)
    new_b, new_a = balanced_factors(core, a, b, 5)
    s = core.singular_values[:5]
    np.testing.assert_allclose(new_b.T @ new_b, np.diag(s), atol=1e-12 * s[0])
    np.testing.assert_allclose(new_a @ new_a.T, np.diag(s), atol=1e-12 * s[0])


def test_rank_beyond_the_update_gives_zero_columns_and_the_exact_update():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((8, 30))
    b = np.zeros((20, 8))
    b[:, :2] = rng.standard_normal((20, 2))  # B·A has rank 2
    core = core_svd(a, b)
    new_b, new_a = balanced_factors(core, a, b, 6)
    assert np.isfinite(new_b).all() and np.isfinite(new_a).all()
    np.testing.assert_allclose(new_b @ new_a, b @ a, atol=1e-12 * np.linalg.norm(b @ a))
    assert np.count_nonzero(np.linalg.norm(new_b, axis=0)) == 2
    # more rank than the core has singular values: padded with zero columns
    new_b, new_a = balanced_factors(core_svd(a[:, :4], b[:3]), a[:, :4], b[:3], 5)
    assert new_b.shape == (3, 5) and new_a.shape == (5, 4)
    np.testing.assert_allclose(new_b @ new_a, b[:3] @ a[:, :4], atol=1e-12)


def test_zero_update_keeps_everything_and_loses_nothing():
    a, b = np.ones((4, 10)), np.zeros((6, 4))
    core = core_svd(a, b)
    new_b, new_a = balanced_factors(core, a, b, 2)
    assert not new_b.any() and not new_a.any()
    assert kept_energy(padded_spectrum(core, 4), 2) == 1.0
    assert optimal_relative_error(padded_spectrum(core, 4), 2) == 0.0


@pytest.mark.parametrize("relative", [0.3, 1e-6, 1e-11])
def test_difference_norm_is_accurate_even_for_tiny_differences(relative):
    rng = np.random.default_rng(3)
    a, b = factors(rng, 8, 60, 40)
    delta = b @ a
    # B·A − (1 + δ)·B·A = −δ·B·A: its norm is known in closed form
    got = difference_norm(a, b, a, b, factor=1 + relative)
    assert got == pytest.approx(relative * np.linalg.norm(delta), rel=1e-4)
    other_a, other_b = factors(rng, 3, 60, 40)
    dense = np.linalg.norm(delta - 0.5 * other_b @ other_a)
    assert difference_norm(a, b, other_a, other_b, factor=0.5) == pytest.approx(dense, rel=1e-12)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_alpha_for_scaling_round_trips_through_peft_to_the_last_bit(use_rslora):
    for alpha, r in [(16, 64), (32, 8), (7, 3), (1, 7), (128, 96), (0.1, 13)]:
        scaling = peft_scaling(alpha, r, use_rslora)
        for k in range(1, 65):
            back = peft_scaling(alpha_for_scaling(scaling, k, use_rslora), k, use_rslora)
            assert abs(back - scaling) <= math.ulp(scaling)
