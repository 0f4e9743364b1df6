"""Seed-level statistics: one number per training run, paired by seed.

The seed is the unit of replication of the mechanism test (each seed is a full, independent
training run of every variant), so the decision statistics live here. Every function takes
plain sequences of per-seed scores, never reads files, never prints, and returns a small
frozen result. Where a statistic is undefined (fewer than two seeds, a zero denominator) the
value is ``None`` and ``reason`` says why: a NaN never leaves this module.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Spreads at or below this are zero: accuracies are k/N floats, so "equal" diffs can differ
#: in the last bit, and scipy would turn that rounding noise into t = ±inf.
ZERO_SPREAD = 1e-12


@dataclass(frozen=True)
class Estimate:
    """A number that may be undefined; ``reason`` explains a ``None`` value."""

    value: float | None
    reason: str | None = None


@dataclass(frozen=True)
class TTest:
    """A t-test's statistic and one-sided p-value (both ``None`` with a reason when undefined)."""

    statistic: float | None
    p: float | None
    df: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class MeanDiff:
    """Mean of the paired differences A - B over seeds, with its t-based 95% CI."""

    n: int
    mean: float | None
    sd: float | None
    ci95: tuple[float, float] | None
    reason: str | None = None


def _as_array(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=float)


def _check_paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a_arr, b_arr = _as_array(a), _as_array(b)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise ValueError(
            f"paired samples must be 1-D and of equal length, got {a_arr.shape} and {b_arr.shape}"
        )
    return a_arr, b_arr


def _is_constant(values: np.ndarray) -> bool:
    return values.size > 0 and float(np.ptp(values)) <= ZERO_SPREAD


def _sd(values: np.ndarray) -> float:
    """Sample standard deviation (ddof=1); exactly 0 for constant values (see ZERO_SPREAD)."""
    return 0.0 if _is_constant(values) else float(np.std(values, ddof=1))


def mean_diff(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> MeanDiff:
    """Mean of A - B over paired seeds and its t interval: mean ± t_{n-1} · sd/√n."""
    a_arr, b_arr = _check_paired(a, b)
    diffs = a_arr - b_arr
    n = diffs.size
    if n == 0:
        return MeanDiff(0, None, None, None, "no seed has both variants")
    mean = float(diffs.mean())
    if n < 2:
        return MeanDiff(n, mean, None, None, "one seed: no variance, no interval")
    sd = _sd(diffs)
    if sd == 0.0:
        return MeanDiff(
            n,
            mean,
            0.0,
            None,
            "the paired differences are identical in every seed: "
            "zero variance, the t interval is undefined",
        )
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sd / math.sqrt(n)
    return MeanDiff(n, mean, sd, (mean - half, mean + half))


def _finite_test(result: object, df: float | None) -> TTest:
    statistic = float(result.statistic)  # type: ignore[attr-defined]
    p = float(result.pvalue)  # type: ignore[attr-defined]
    if not (math.isfinite(statistic) and math.isfinite(p)):
        return TTest(None, None, df, "the test statistic is not finite")
    return TTest(statistic, p, df)


def paired_t(a: Sequence[float], b: Sequence[float]) -> TTest:
    """One-sided paired t-test of H1: mean(A - B) > 0 (``scipy.stats.ttest_rel``)."""
    a_arr, b_arr = _check_paired(a, b)
    n = a_arr.size
    if n < 2:
        return TTest(None, None, None, f"{n} paired seed(s): a paired t-test needs at least 2")
    if _is_constant(a_arr - b_arr):
        return TTest(
            None,
            None,
            float(n - 1),
            "the paired differences are identical in every seed: zero variance, t is undefined",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(a_arr, b_arr, alternative="greater")
    return _finite_test(result, float(result.df))


def welch_t(a: Sequence[float], b: Sequence[float]) -> TTest:
    """One-sided Welch t-test of H1: mean(A) > mean(B), ignoring the pairing (a companion)."""
    a_arr, b_arr = _as_array(a), _as_array(b)
    if min(a_arr.size, b_arr.size) < 2:
        return TTest(None, None, None, "Welch's t-test needs at least 2 seeds per variant")
    if _is_constant(a_arr) and _is_constant(b_arr):
        return TTest(
            None, None, None, "both variants have zero variance over seeds: t is undefined"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a_arr, b_arr, equal_var=False, alternative="greater")
    return _finite_test(result, float(result.df))


def cohens_d(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """(mean A - mean B) / sqrt((sd_A² + sd_B²) / 2), sd with ddof=1 (the seed's definition)."""
    a_arr, b_arr = _as_array(a), _as_array(b)
    if min(a_arr.size, b_arr.size) < 2:
        return Estimate(None, "Cohen's d needs at least 2 seeds per variant")
    pooled = math.sqrt((_sd(a_arr) ** 2 + _sd(b_arr) ** 2) / 2)
    if pooled == 0.0:
        return Estimate(None, "both variants have zero variance over seeds: d is undefined")
    return Estimate(float(a_arr.mean() - b_arr.mean()) / pooled)


def cohens_dz(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """mean(A - B) / sd(A - B, ddof=1): the standardised paired effect the paired t-test sees."""
    a_arr, b_arr = _check_paired(a, b)
    diffs = a_arr - b_arr
    if diffs.size < 2:
        return Estimate(None, "d_z needs at least 2 paired seeds")
    sd = _sd(diffs)
    if sd == 0.0:
        return Estimate(
            None, "the paired differences are identical in every seed: d_z is undefined"
        )
    return Estimate(float(diffs.mean()) / sd)
