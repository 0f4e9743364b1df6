"""How many ranks a singular spectrum uses: the audit's metrics (pure functions, no I/O).

All functions take the singular values of an unscaled update ΔW = B·A (descending,
non-negative, any length) and follow the definitions in DESIGN.md. A spectrum that is all
zeros (an untrained adapter: PEFT initialises B to zero) has every measure equal to 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Energy thresholds recorded for every module in the audit (keys "0.9", "0.95", "0.99").
ENERGY_LEVELS: tuple[float, ...] = (0.9, 0.95, 0.99)

#: Relative slack for float round-off: a cumulative energy within this fraction of the target
#: counts as reaching it, so energy@1.0 is the number of non-negligible values, not r.
ENERGY_RTOL = 1e-12


def as_spectrum(singular_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Singular values as a float64 vector, checked to be finite, non-negative and descending."""
    sv = np.asarray(singular_values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(sv)) or np.any(sv < 0):
        raise ValueError("singular values must be finite and non-negative")
    if np.any(np.diff(sv) > 1e-12 * max(float(sv.max(initial=0.0)), 1e-300)):
        raise ValueError("singular values must be sorted in descending order")
    return sv


def total_energy(singular_values: Sequence[float] | np.ndarray) -> float:
    """Σσᵢ² = ‖ΔW‖²_F."""
    sv = as_spectrum(singular_values)
    return float(np.dot(sv, sv))


def stable_rank(singular_values: Sequence[float] | np.ndarray) -> float:
    """‖ΔW‖²_F / σ₁² (0 for a zero spectrum)."""
    sv = as_spectrum(singular_values)
    if sv.size == 0 or sv[0] == 0:
        return 0.0
    return float(np.dot(sv, sv) / sv[0] ** 2)


def effective_rank(singular_values: Sequence[float] | np.ndarray) -> float:
    """Roy & Vetterli's effective rank exp(−Σ pᵢ log pᵢ) with pᵢ = σᵢ/Σσ (0 log 0 = 0)."""
    sv = as_spectrum(singular_values)
    total = float(sv.sum())
    if total == 0:
        return 0.0
    p = sv[sv > 0] / total
    return float(math.exp(-float(np.sum(p * np.log(p)))))


def energy_rank(singular_values: Sequence[float] | np.ndarray, tau: float) -> int:
    """Smallest k with Σ_{i≤k} σᵢ² ≥ τ·Σσ² (up to ENERGY_RTOL); 0 for a zero spectrum."""
    if not 0 < tau <= 1:
        raise ValueError(f"energy threshold must be in (0, 1], got {tau}")
    sv = as_spectrum(singular_values)
    total = float(np.dot(sv, sv))
    if total == 0:
        return 0
    cumulative = np.cumsum(sv**2) / total
    reached = np.nonzero(cumulative >= tau * (1 - ENERGY_RTOL))[0]
    return int(reached[0]) + 1


def cumulative_energy(singular_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """The curve E_0 = 0, E_k = Σ_{i≤k}σᵢ²/Σσ² for k = 1..r (length r+1; all zeros if ΔW = 0)."""
    sv = as_spectrum(singular_values)
    total = float(np.dot(sv, sv))
    curve = np.zeros(sv.size + 1)
    if total > 0:
        curve[1:] = np.cumsum(sv**2) / total
        curve[-1] = 1.0  # exact end point, not 1 ± round-off
    return curve
