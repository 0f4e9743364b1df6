"""Rank policies: one integer rank per module from its singular spectrum (pure, no I/O).

A policy name is one of

- ``energy@TAU`` (TAU in (0, 1]): the energy rank, smallest k keeping TAU of ‖ΔW‖²_F;
- ``erank``: ⌈effective rank⌉;
- ``stable_rank``: ⌈stable rank⌉;
- ``knee``: the elbow of the cumulative-energy curve (:func:`knee_rank`);
- ``oht``: the Gavish–Donoho optimal hard threshold (:func:`oht_rank`).

The value returned here is the policy's raw rank (0..r); rounding up to the allowed ranks,
the margin and the cap at the module's r live in :mod:`gradience.ranks.allowed`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gradience.config_lora import validate_policy_name
from gradience.ranks.measures import (
    as_spectrum,
    cumulative_energy,
    effective_rank,
    energy_rank,
    stable_rank,
)

#: Policies the audit evaluates when none are named.
DEFAULT_POLICIES: tuple[str, ...] = (
    "energy@0.90",
    "energy@0.95",
    "erank",
    "stable_rank",
    "knee",
    "oht",
)

#: ω(1) = λ*(1)/√μ₁ = (4/√3)/√(median of the Marchenko–Pastur law with β = 1), as
#: :func:`gavish_donoho_omega` computes it (a test keeps the two equal; the constant spares
#: every audit the numerical integration and the scipy.integrate import).
OMEGA_SQUARE = 2.8583624240695213

#: ⌈x⌉ ignores round-off this small, so an effective rank of exactly k (up to float error) is k.
CEIL_RTOL = 1e-9


@dataclass(frozen=True)
class Policy:
    """A parsed policy name; ``tau`` is set only for ``energy``."""

    name: str
    kind: str
    tau: float | None = None


def parse_policy(name: str) -> Policy:
    """Parse ``energy@0.90``, ``erank``, ``stable_rank``, ``knee`` or ``oht`` (ValueError otherwise)."""
    validate_policy_name(name)
    if name.startswith("energy@"):
        return Policy(name=name, kind="energy", tau=float(name.split("@", 1)[1]))
    return Policy(name=name, kind=name)


def ceil_rank(value: float) -> int:
    """⌈value⌉, forgiving float round-off of relative size CEIL_RTOL."""
    return max(0, math.ceil(value - CEIL_RTOL * max(1.0, abs(value))))


def policy_rank(singular_values: Sequence[float] | np.ndarray, policy: Policy | str) -> int:
    """The policy's raw rank for one spectrum: an integer in 0..len(singular_values)."""
    if isinstance(policy, str):
        policy = parse_policy(policy)
    sv = as_spectrum(singular_values)
    if policy.kind == "energy":
        assert policy.tau is not None
        rank = energy_rank(sv, policy.tau)
    elif policy.kind == "erank":
        rank = ceil_rank(effective_rank(sv))
    elif policy.kind == "stable_rank":
        rank = ceil_rank(stable_rank(sv))
    elif policy.kind == "knee":
        rank = knee_rank(sv)
    elif policy.kind == "oht":
        rank = oht_rank(sv)
    else:  # parse_policy admits nothing else
        raise ValueError(f"unknown policy kind {policy.kind!r}")
    return min(rank, sv.size)


def knee_rank(singular_values: Sequence[float] | np.ndarray) -> int:
    """Elbow of the cumulative-energy curve: the k farthest above its chord (Kneedle).

    The curve is the r+1 points (k, E_k), k = 0..r, with E_0 = 0 and E_k = Σ_{i≤k}σᵢ²/Σσ², so
    E_r = 1. Both axes are used as they are (k/r and E_k already span [0, 1]); no smoothing and
    no re-normalisation, so the end points (0, 0) and (r, 1) stay where they are and the chord
    between them is the straight line E = k/r. The knee is the smallest k maximising
    E_k − k/r. Because σᵢ² is non-increasing the curve is concave, so this k is exactly the
    number of singular values whose energy σᵢ² exceeds the mean energy Σσ²/r.

    A flat spectrum (all σᵢ equal) lies on its chord and has no elbow: the whole rank r is
    used. A zero spectrum gives 0.
    """
    sv = as_spectrum(singular_values)
    r = sv.size
    curve = cumulative_energy(sv)
    if r == 0 or curve[-1] == 0:
        return 0
    height = curve - np.arange(r + 1) / r
    best = float(height.max())
    if best <= 1e-12:  # on the chord: no elbow
        return r
    return int(np.nonzero(height >= best - 1e-12)[0][0])


@functools.lru_cache(maxsize=32)
def gavish_donoho_omega(beta: float) -> float:
    """ω(β) of Gavish & Donoho (2014) for unknown noise: threshold = ω(β)·median(σ).

    ω(β) = λ*(β) / √μ_β, with λ*(β) = √(2(β+1) + 8β / ((β+1) + √(β²+14β+1))) the optimal
    threshold for known noise and μ_β the median of the Marchenko–Pastur law of aspect
    ratio β (solved numerically here, not the paper's cubic fit). ω(1) ≈ 2.858.
    """
    if not 0 < beta <= 1:
        raise ValueError(f"aspect ratio must be in (0, 1], got {beta}")
    from scipy import integrate, optimize

    lam = math.sqrt(2 * (beta + 1) + 8 * beta / ((beta + 1) + math.sqrt(beta**2 + 14 * beta + 1)))
    low, high = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2

    def density(x: float) -> float:
        return math.sqrt(max((high - x) * (x - low), 0.0)) / (2 * math.pi * beta * x)

    def cdf_minus_half(x: float) -> float:
        return integrate.quad(density, low, x, limit=200)[0] - 0.5

    median = optimize.brentq(cdf_minus_half, low + 1e-12, high, xtol=1e-12)
    return lam / math.sqrt(median)


def oht_rank(singular_values: Sequence[float] | np.ndarray) -> int:
    """Number of σᵢ above the Gavish–Donoho threshold ω(1)·median(σ₁..σ_r).

    Noise estimate for a rank-r product: B·A has at most r non-zero singular values, and they
    are exactly those of the r×r core R_B·R_Aᵀ. The median of the full min(d_out, d_in)
    spectrum would be 0, so the observed matrix is taken to be that square r×r core (β = 1)
    and the noise level is read off the median of its r singular values.

    Limits: the rule is asymptotic (r → ∞) and assumes the non-signal part of the core is
    i.i.d. noise; for r ≲ 8 it is rough. The median must fall in the noise bulk, so when more
    than about half of the r values carry signal the threshold is too high and the rank is
    underestimated: since ω(1) > 2, fewer than r/2 values can ever exceed ω·median, so this
    policy never suggests r/2 or more. A zero spectrum gives 0.
    """
    sv = as_spectrum(singular_values)
    if sv.size == 0 or sv[0] == 0:
        return 0
    threshold = OMEGA_SQUARE * float(np.median(sv))
    return int(np.count_nonzero(sv > threshold))
