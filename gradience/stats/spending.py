"""Error spending for sequential seeds: the boundaries of :mod:`gradience.stats.sequential`.

**Error spending** (Lan & DeMets 1983, "Discrete sequential boundaries for clinical trials",
Biometrika 70:659-663; Jennison & Turnbull 2000, *Group Sequential Methods with Applications
to Clinical Trials*, ch. 7). The O'Brien-Fleming-type spending function for a one-sided
level a,

    a(t) = 2 · (1 − Φ(z_{1−a/2} / √t)),   a(1) = a,

spends almost nothing early and nearly all of a at the last look. On the canonical joint
distribution of the standardised statistics (Z_k ~ N(0, 1) under H0, corr(Z_i, Z_j) =
√(n_i / n_j) for n_i ≤ n_j), the boundaries are c_1 = Φ⁻¹(1 − a(t_1)) and, for k ≥ 2, the
c_k with

    P(Z_1 < c_1, …, Z_{k−1} < c_{k−1}, Z_k ≥ c_k) = a(t_k) − a(t_{k−1}),

so that the probability of crossing at any look up to k is exactly a(t_k). The probabilities
are computed by recursive numerical integration of the density of the score process
S_k = Z_k·√t_k (independent Gaussian increments; Armitage, McPherson & Rowe 1969; Jennison &
Turnbull 2000, ch. 19) with Simpson's rule on a fine grid, not with
``scipy.stats.multivariate_normal.cdf``: Genz's quasi-Monte-Carlo there is randomised, slow in
13-18 dimensions and only accurate to ~1e-5 absolute, while the recursion is deterministic
and accurate to better than 1e-7 in the spent alpha (tested against the closed form for one
look, against ``multivariate_normal.cdf`` for three, and by Monte-Carlo). The corresponding
one-sided p level of look k is p_k = 1 − Φ(c_k); with a single look (n_min = n_max) it is a,
the fixed-sample level (the levels the t-tests use are calibrated from these: see below).
Looks left out (a seed that failed, a run stopped early) only remove chances to cross: the
error stays at most a.

**Small samples: the spending applied to the t process itself (a fix).** The boundaries
above are for a normal statistic with known variance; the seeds give a paired t with n − 1
degrees of freedom. The design as first written mapped each look's t onto c_k through its
p-value (the "significance level approach" to group sequential t-tests in Jennison &
Turnbull 2000: cross when the t p-value is ≤ 1 − Φ(c_k), kept here as ``normal_p``). Each
single look then has exactly its nominal level, but the joint law of the t statistics across
looks is not the canonical one (every look re-estimates the sd from few seeds), and the
crossings at the different looks add up to more than a. For the mechanism
test's designs (looks at 3..15 and 3..20 seeds, a = 0.025) that approach's error was 0.0275 and
0.0278 per contrast in 400,000 simulated null paths of the paired t (0.026-0.029 in
``benchmarks/sequential_simulation.py``), and its family-wise crossing rate 0.051-0.053, above
α = 0.05. So the decisions use levels that spend a(t_k) on the paired t process
itself: under H0 that process is pivotal (its law is free of the mean and of σ, and the same
for the FAIL statistic at δ = τ), so one simulation of 2^20 standard normal seed sequences
with a fixed generator gives, look by look, the t threshold at which the share of paths that
have crossed by look k is a(t_k) (Monte-Carlo sd of the spent alpha ≈ 1.5e-4 at a = 0.025;
deterministic for a given numpy). The first look is exact (one look: the t p-value is
uniform, so its level is a(t_1)); looks that spend too little to simulate (fewer than 100
expected crossings) keep ``normal_p``, and their crossings count towards the later targets.
The calibrated levels are about 10-15% below ``normal_p`` at the later looks. At n = 3 the
OBF level is tiny (5.4e-7 for a = 0.025, n_max = 15: a paired t above 963 with 2 degrees of
freedom), so the first looks decide only overwhelming, very consistent effects: that is the
price of spending nothing early.

Pure functions: no I/O, nothing printed; cached per design.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import optimize, special, stats

#: The integration grid spans ± this many sd of the score process at each look.
_GRID_SD = 12.0
#: Grid points per sd of the smallest increment of information (Simpson's error ~ h⁴).
_POINTS_PER_SD = 10
#: A look whose spent alpha is below this cannot reject at all (c_k = +∞, p_k = 0).
_NO_SPEND = 1e-300
#: Simulated null paths of the paired t process that calibrate the levels (Monte-Carlo sd of
#: the spent alpha: sqrt(a(1 − a) / 2^20) ≈ 1.5e-4 at a = 0.025), and their fixed seed.
_T_DRAWS = 1 << 20
_T_SEED = 18_2024
#: Looks whose cumulative spending is expected to make fewer crossings are not simulated.
_MIN_CROSSINGS = 100


def obf_spending(t: float, level: float) -> float:
    """Lan-DeMets O'Brien-Fleming-type alpha spent by information fraction ``t``:
    a(t) = 2·(1 − Φ(z_{1−a/2}/√t)), 0 at t = 0, ``level`` at t = 1."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if t <= 0.0:
        return 0.0
    t = min(t, 1.0)
    return float(2.0 * special.ndtr(-stats.norm.isf(level / 2.0) / math.sqrt(t)))


@dataclass(frozen=True)
class SequentialBoundary:
    """The boundaries of one design at one-sided level ``level``, one entry per look."""

    looks: tuple[int, ...]  # seeds at each look
    n_max: int
    level: float  # one-sided a (α/m in the mechanism test)
    information: tuple[float, ...]  # t_k = n_k / n_max
    spent: tuple[float, ...]  # cumulative alpha a(t_k) spent by look k
    z: tuple[float, ...]  # c_k of the canonical (known-variance) process (inf: cannot reject)
    normal_p: tuple[float, ...]  # 1 − Φ(c_k): the significance-level approach's levels
    #: The levels the decisions use: the same spending on the paired t process (module doc);
    #: a look's one-sided t p-value <= nominal_p[k] crosses. Increasing; 0: cannot reject.
    nominal_p: tuple[float, ...]
    t_critical: tuple[float, ...]  # the same levels as t_{n_k − 1} quantiles

    def nominal_p_at(self, n: int) -> float:
        """The nominal one-sided p level of the look at ``n`` seeds."""
        try:
            return self.nominal_p[self.looks.index(n)]
        except ValueError:
            raise ValueError(f"no look at {n} seeds in this design {self.looks}") from None


def _simpson_weights(n_points: int, h: float) -> np.ndarray:
    weights = np.ones(n_points)
    weights[1:-1:2] = 4.0
    weights[2:-1:2] = 2.0
    return weights * h / 3.0


def _grid(low: float, high: float, h_target: float) -> tuple[np.ndarray, np.ndarray]:
    """An odd number of equally spaced points on [low, high] and their Simpson weights."""
    intervals = max(100, 2 * math.ceil((high - low) / h_target / 2))
    points = np.linspace(low, high, intervals + 1)
    return points, _simpson_weights(points.size, (high - low) / intervals)


@lru_cache(maxsize=128)
def _boundaries(looks: tuple[int, ...], n_max: int, level: float) -> SequentialBoundary:
    info = np.asarray(looks, dtype=float) / n_max
    spent = [obf_spending(t, level) for t in info]
    increments = np.diff([0.0, *spent])
    steps = np.diff([0.0, *info])
    h_target = math.sqrt(float(steps.min())) / _POINTS_PER_SD

    z: list[float] = []
    # Look 1: S_1 ~ N(0, t_1), a closed form.
    z.append(float(stats.norm.isf(increments[0])) if increments[0] > _NO_SPEND else math.inf)
    root = math.sqrt(info[0])
    s, w = _grid(-_GRID_SD * root, min(z[0], _GRID_SD) * root, h_target)
    density = stats.norm.pdf(s, scale=root)
    for k in range(1, len(looks)):
        mass = density * w  # the sub-density of S_{k-1} on the continuation region, weighted
        sd_step, root = math.sqrt(steps[k]), math.sqrt(info[k])

        def crossing(c: float, s=s, mass=mass, sd_step=sd_step, root=root) -> float:
            return float(mass @ special.ndtr((s - c * root) / sd_step))

        if increments[k] > _NO_SPEND:
            c = optimize.brentq(
                lambda c, inc=increments[k]: crossing(c) - inc,
                -_GRID_SD,
                4 * _GRID_SD,
                xtol=1e-12,
                rtol=1e-12,
            )
        else:
            c = math.inf
        z.append(float(c))
        s_next, w = _grid(-_GRID_SD * root, min(c, _GRID_SD) * root, h_target)
        kernel = stats.norm.pdf((s_next[:, None] - s[None, :]) / sd_step) / sd_step
        s, density = s_next, kernel @ mass
    normal_p = tuple(float(stats.norm.sf(c)) for c in z)
    nominal_p = _t_levels(looks, tuple(spent), normal_p)
    return SequentialBoundary(
        looks=looks,
        n_max=n_max,
        level=level,
        information=tuple(float(t) for t in info),
        spent=tuple(spent),
        z=tuple(z),
        normal_p=normal_p,
        nominal_p=nominal_p,
        t_critical=tuple(
            float(stats.t.isf(p, n - 1)) if p > 0 else math.inf
            for n, p in zip(looks, nominal_p, strict=True)
        ),
    )


def _t_levels(
    looks: tuple[int, ...], spent: tuple[float, ...], normal_p: tuple[float, ...]
) -> tuple[float, ...]:
    """Nominal p levels that spend ``spent`` on the paired t process itself (module doc).

    Under H0 the sequence of paired t statistics is pivotal (free of the mean and of σ), so
    one simulation of standard normal seeds, with a fixed generator, serves every data set.
    Look k's level is set so that the share of simulated paths that have crossed by look k is
    a(t_k); the first look, and looks whose cumulative spending is too small to simulate
    (fewer than ``_MIN_CROSSINGS`` expected crossings), use the exact marginal level (first
    look) or the significance-level approach's level ``normal_p``; the crossings they make
    count towards the later looks' targets.
    """
    rng = np.random.default_rng(_T_SEED)
    total = np.zeros(_T_DRAWS)
    squares = np.zeros(_T_DRAWS)
    alive = np.ones(_T_DRAWS, dtype=bool)
    crossed = 0
    levels: list[float] = []
    seen = 0
    for k, n in enumerate(looks):
        while seen < n:
            x = rng.standard_normal(_T_DRAWS)
            total += x
            squares += x * x
            seen += 1
        variance = np.maximum(squares - total * total / n, 0.0) / (n - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (total / n) / np.sqrt(variance / n)
        if spent[k] * _T_DRAWS < _MIN_CROSSINGS:
            level = normal_p[k]
        elif k == 0:
            level = spent[0]  # one look: the t-test's p-value is exactly uniform under H0
        else:
            need = round(spent[k] * _T_DRAWS) - crossed
            candidates = t[alive]
            if need <= 0 or need >= candidates.size:
                level = 0.0 if need <= 0 else normal_p[k]
            else:
                top = -np.partition(-candidates, [need - 1, need])[[need - 1, need]]
                level = float(stats.t.sf((top[0] + top[1]) / 2, n - 1))
        levels.append(float(level))
        if level > 0:
            hit = alive & (t >= stats.t.isf(level, n - 1))
            crossed += int(hit.sum())
            alive &= ~hit
    return tuple(levels)


def boundaries(looks: Sequence[int], n_max: int, level: float) -> SequentialBoundary:
    """O'Brien-Fleming-type boundaries for looks at ``looks`` seeds out of ``n_max``, one-sided
    level ``level`` (module doc); cached, deterministic."""
    looks_t = tuple(int(n) for n in looks)
    if not looks_t:
        raise ValueError("a sequential design needs at least one look")
    if any(b <= a for a, b in zip(looks_t, looks_t[1:], strict=False)):
        raise ValueError(f"looks must be strictly increasing, got {looks_t}")
    if looks_t[0] < 2 or looks_t[-1] > n_max:
        raise ValueError(f"looks must lie in 2..n_max = {n_max}, got {looks_t}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return _boundaries(looks_t, int(n_max), float(level))


def design_boundaries(alpha: float, m: int, n_min: int, n_max: int) -> SequentialBoundary:
    """The mechanism test's design: a look at every n in n_min..n_max at level α/m."""
    if m < 1:
        raise ValueError("the family needs at least one contrast")
    if not 2 <= n_min <= n_max:
        raise ValueError(f"need 2 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    return boundaries(range(n_min, n_max + 1), n_max, alpha / m)
