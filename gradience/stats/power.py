"""Power of the one-sided paired t-test, and the number of seeds it needs.

With n paired seeds and standardised effect d_z = mean(diff) / sd(diff), the paired t
statistic follows a noncentral t with n - 1 degrees of freedom and noncentrality d_z·√n, so
power(n) = P(T > t_{1-α, n-1}) = ``nct.sf(t_crit, n - 1, d_z·√n)``. Power rises with n for
d_z > 0; the seeds needed is the smallest n >= 2 with power(n) >= target, found by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import optimize, stats

#: Beyond this the answer is "not feasible", not a number anyone would run.
MAX_SEEDS = 100_000


@dataclass(frozen=True)
class SeedsNeeded:
    """Smallest number of paired seeds reaching the target power, or ``None`` with a reason."""

    n: int | None
    reason: str | None = None


def paired_t_power(dz: float, n: int, alpha: float) -> float:
    """Power of the one-sided paired t-test at level ``alpha`` with ``n`` seeds and effect ``dz``."""
    if n < 2:
        raise ValueError("a paired t-test needs at least 2 seeds")
    df = n - 1
    critical = stats.t.ppf(1 - alpha, df)
    return float(stats.nct.sf(critical, df, dz * math.sqrt(n)))


def seeds_for_power(dz: float | None, alpha: float, power: float = 0.8) -> SeedsNeeded:
    """Seeds needed for ``power`` to detect ``dz`` with the one-sided paired t-test at ``alpha``."""
    if dz is None or not math.isfinite(dz):
        return SeedsNeeded(None, "d_z is undefined")
    if dz <= 0:
        return SeedsNeeded(
            None,
            f"d_z = {dz:.3g} is not in the hypothesised direction (A > B): "
            "no number of seeds gives power to show A > B",
        )
    if paired_t_power(dz, MAX_SEEDS, alpha) < power:
        return SeedsNeeded(None, f"d_z = {dz:.3g} is too small: more than {MAX_SEEDS} seeds needed")
    low, high = 2, MAX_SEEDS  # invariant: power(high) >= target
    if paired_t_power(dz, low, alpha) >= power:
        return SeedsNeeded(low)
    while high - low > 1:
        mid = (low + high) // 2
        if paired_t_power(dz, mid, alpha) >= power:
            high = mid
        else:
            low = mid
    return SeedsNeeded(high)


def min_detectable_effect(
    sd_diff: float | None, n: int, alpha: float, power: float
) -> float | None:
    """Smallest true mean difference the one-sided paired t at ``alpha`` detects with ``power``
    over ``n`` seeds, given the sd of the paired differences (None if undefined)."""
    if sd_diff is None or not math.isfinite(sd_diff) or sd_diff <= 0 or n < 2:
        return None
    dz = optimize.brentq(lambda d: paired_t_power(d, n, alpha) - power, 1e-9, 1e3)
    return float(dz * sd_diff)
