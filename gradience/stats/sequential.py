"""Sequential seeds: add seeds only until every primary contrast is decided (issue 18).

A group-sequential version of the verdict's PASS / FAIL rule (``gradience.stats.verdict``)
that looks at the data after every completed seed and keeps the family-wise error at α
across all the looks, for FAIL as well as for PASS.

**Looks.** One look after each completed seed, at n = n_min, n_min + 1, …, n_max seeds
(n_min = 3 by default: the first n where the paired t has more than one degree of freedom).
Look k uses the first n_k seeds of each contrast, in seed order; its information fraction is
t_k = n_k / n_max (the sd of the paired differences is the same at every look, so the
information n/σ² is proportional to n).

**Contrasts: Bonferroni, not Holm.** Each of the m primary contrasts gets its own one-sided
level a = α/m, at every look. Bonferroni is valid whatever the correlation of the contrasts
(in the mechanism test they share per_layer's runs) and whatever the looks. The fixed-sample
verdict uses Holm's step-down instead, which is uniformly more powerful; sequential mode is
Bonferroni-conservative because Holm's step-down across a group-sequential design needs a
graphical alpha-recycling procedure (Maurer & Bretz 2013, "Multiple testing in group
sequential trials using graphical approaches", Stat. Biopharm. Res. 5:311-320): the α of a
contrast that passes is passed on to the others *with its whole boundary sequence*, and the
recipients' boundaries must be recomputed at the larger level for the looks already made.
That is left out; with m = 2 it costs at most the difference between α/2 and α for the second
contrast.

**Error spending** and its calibration on the paired t process: :mod:`gradience.stats.spending`
(Lan & DeMets 1983; Jennison & Turnbull 2000): each look k has a one-sided level p_k, the
levels together spending exactly a = α/m on the paired t process under H0.

**The rule, per contrast, at look k** over its first n_k seeds (difference A − B, threshold
τ, minimum Cohen's d d_min where given):

* PASS   the one-sided paired t p-value of H0: δ ≤ 0 (``scipy.stats.ttest_rel``, via
         :func:`gradience.stats.seed_level.paired_t`) is ≤ the look's level p_k
         (``nominal_p``), AND the mean difference is above τ, AND (where given) Cohen's
         d > d_min: the seed's rule, at the look's level.
* FAIL   the one-sided p-value of H0: δ ≥ τ, p' = t_{n−1}.cdf((mean − τ) / (sd/√n)), is ≤ p_k:
         the look's upper confidence bound lies below τ, with the same spending, so a FAIL
         when δ = τ has probability at most (about) a per contrast.
* open   anything else, including undefined statistics (zero sd): the contrast is looked at
         again after the next seed.

**A property of the seed's rule under repeated looks** (not an error the rule bounds): the
point-estimate condition mean > τ is not a test, and every look is a new chance for the
estimate to land above τ. A true difference at or below τ therefore PASSES more often than in
the fixed design: simulated (``benchmarks/sequential_simulation.py``), at δ = τ about 0.63-0.69
instead of 0.50, and at δ = 0.75·τ 0.26-0.31 instead of 0.09-0.19. PASS still claims only
δ > 0 at the family-wise level, with a reason that says whether the bounds exclude values
below τ.

PASS and FAIL cannot both hold (PASS needs mean > τ, FAIL mean < τ). A contrast decided at a
look stays decided: its later seeds are not tested again (the reported outcome is that of the
look that decided it, and its numbers are that look's, kept in the result). Each direction is
a *non-binding* boundary for the other: stopping a contrast for FAIL only removes chances to
PASS and vice versa, and the extra conditions of PASS (mean > τ, d > d_min) only remove PASS
events, so PASS happens only on paths where the p-value crosses its boundary, which has
probability at most a when δ ≤ 0; the same holds for FAIL when δ ≥ τ. A caller that vetoes a
FAIL (the placement contrast also needs the shuffle to move enough parameters) keeps the
contrast open; that is valid for the same reason.

The run stops when every primary contrast is decided or n_max seeds are reached; contrasts
still open at n_max are UNDETERMINED. Seeds beyond the stopping look (finished in parallel)
or beyond n_max are not used by the decision: testing again after stopping would spend α
that the design does not have ("overrunning" in Jennison & Turnbull 2000).

**Intervals.** Each look also gives repeated confidence bounds, mean ∓ t_{1−p_k, n−1}·sd/√n
(one-sided at p_k each), consistent with the decisions (Jennison & Turnbull 2000, ch. 9): the
fixed-sample t interval at the stopping n does not have its nominal coverage after a
data-dependent stop. A fixed-sequence contrast read only after the primary family (the
verdict's heterogeneity contrast) is outside this design: tested at the data-dependent
stopping n its error rate is not controlled by these boundaries.

Pure functions: no I/O, nothing printed, small frozen results (``None`` with a reason for an
undefined statistic, never NaN).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from gradience.stats.seed_level import cohens_d, mean_diff, paired_t
from gradience.stats.spending import SequentialBoundary, design_boundaries
from gradience.stats.verdict import Outcome

#: The first look: the paired t needs n - 1 >= 2 degrees of freedom to say anything useful.
N_MIN = 3


@dataclass(frozen=True)
class LookDecision:
    """One contrast at one look: its statistics, the look's level, and what it decided.

    ``decision`` is ``Outcome.PASS`` or ``Outcome.FAIL``, or ``None`` while the contrast is
    open; ``reason`` says why in a sentence.
    """

    n: int
    threshold: float
    level_p: float
    mean: float | None
    sd: float | None
    statistic: float | None  # paired t of H0: δ <= 0
    p_pass: float | None  # its one-sided p (alternative "greater")
    statistic_fail: float | None  # (mean − τ)/(sd/√n), H0: δ >= τ
    p_fail: float | None  # its one-sided p (alternative "less")
    cohens_d: float | None
    min_d: float | None
    bounds: tuple[float, float] | None  # repeated confidence bounds, one-sided at level_p each
    decision: Outcome | None
    reason: str


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.4g}"


def look(
    values_a: Sequence[float],
    values_b: Sequence[float],
    threshold: float,
    level_p: float,
    min_d: float | None = None,
) -> LookDecision:
    """PASS / FAIL / open for one contrast at one look at nominal level ``level_p`` (module doc)."""
    a, b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    diff = mean_diff(a, b)  # validates the pairing
    n = diff.n

    def open_(reason: str, **fields: object) -> LookDecision:
        base: dict[str, object] = {
            "n": n,
            "threshold": threshold,
            "level_p": level_p,
            "mean": diff.mean,
            "sd": diff.sd,
            "statistic": None,
            "p_pass": None,
            "statistic_fail": None,
            "p_fail": None,
            "cohens_d": None,
            "min_d": min_d,
            "bounds": None,
            "decision": None,
            "reason": reason,
        }
        return LookDecision(**{**base, **fields})  # type: ignore[arg-type]

    if diff.mean is None:
        return open_(diff.reason or "no paired seeds")
    test = paired_t(a, b)
    if test.statistic is None or test.p is None or not diff.sd:
        return open_(test.reason or diff.reason or "the paired t is undefined")
    se = diff.sd / math.sqrt(n)
    t_fail = (diff.mean - threshold) / se
    p_fail = float(stats.t.cdf(t_fail, n - 1))
    d = cohens_d(a, b).value
    bounds = None
    if level_p > 0.0:
        half = float(stats.t.isf(level_p, n - 1)) * se
        bounds = (diff.mean - half, diff.mean + half)
    fields = {
        "statistic": test.statistic,
        "p_pass": test.p,
        "statistic_fail": float(t_fail),
        "p_fail": p_fail,
        "cohens_d": d,
        "bounds": bounds,
    }
    head = (
        f"{n} seeds: mean {diff.mean:+.4f}, p (vs 0) = {_fmt(test.p)}, "
        f"p (vs threshold {threshold:g}) = {_fmt(p_fail)}, nominal level {_fmt(level_p)}"
    )
    if level_p <= 0.0:
        return open_(f"{head}; this look spends no alpha and cannot decide", **fields)
    significant, above = test.p <= level_p, diff.mean > threshold
    if significant and above:
        if min_d is not None and (d is None or d <= min_d):
            return open_(
                f"{head}; significant and above the threshold, but Cohen's d = {_fmt(d)} is "
                f"not above {min_d:g}: open",
                **fields,
            )
        d_text = "" if min_d is None else f", Cohen's d = {d:.2f} > {min_d:g}"
        return replace(
            open_(
                f"{head}; PASS: significant against 0 at the look's level and above the "
                f"threshold {threshold:g}{d_text}",
                **fields,
            ),
            decision=Outcome.PASS,
        )
    if p_fail <= level_p and bounds is not None:
        return replace(
            open_(
                f"{head}; FAIL: the look's upper bound {bounds[1]:+.4f} lies below the "
                f"threshold {threshold:g}",
                **fields,
            ),
            decision=Outcome.FAIL,
        )
    why = "above the threshold but not significant" if above else "the threshold not ruled out"
    return open_(f"{head}; open: {why} at the look's level", **fields)


@dataclass(frozen=True)
class Look:
    """One look: ``n`` seeds, the boundary, and each still-open contrast's decision there."""

    n: int
    nominal_p: float
    t_critical: float  # the paired t that crosses at this look (inf: none)
    decisions: Mapping[str, LookDecision]


@dataclass(frozen=True)
class SequentialContrast:
    """One contrast's outcome: PASS / FAIL at ``decided_at`` seeds, or UNDETERMINED (open)."""

    name: str
    threshold: float
    outcome: Outcome
    decided_at: int | None
    #: The look that decided it, else its latest look (None: no look yet).
    last: LookDecision | None


@dataclass(frozen=True)
class SequentialResult:
    """The looks so far and where the run stands.

    ``stopped``: every contrast is decided or n_max seeds were looked at; otherwise the run
    should add a seed and call :func:`run_sequential` again with every seed so far (the looks
    are replayed deterministically, so earlier decisions stay). ``n_seeds``: the seeds the
    decision used (the stopping look; while open, the seeds looked at so far).
    """

    alpha: float
    level: float
    n_min: int
    n_max: int
    boundary: SequentialBoundary
    looks: tuple[Look, ...]
    contrasts: tuple[SequentialContrast, ...]
    n_seeds: int
    stopped: bool
    reason: str

    @property
    def outcomes(self) -> dict[str, Outcome]:
        return {c.name: c.outcome for c in self.contrasts}

    @property
    def decided_at(self) -> dict[str, int | None]:
        return {c.name: c.decided_at for c in self.contrasts}


def run_sequential(
    per_contrast_pairs: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    thresholds: Mapping[str, float],
    alpha: float,
    n_min: int = N_MIN,
    n_max: int = 15,
    min_d: Mapping[str, float | None] | None = None,
) -> SequentialResult:
    """Replay the looks n_min..n_max over the seeds so far (module doc).

    ``per_contrast_pairs``: the primary family, name -> (values of A, values of B) per seed in
    seed order (the family size m is its length). ``thresholds``: τ per name. ``min_d``: the
    minimum Cohen's d per name (absent or None: no d rule). A contrast with fewer seeds than a
    look is looked at when it has them.
    """
    if not per_contrast_pairs:
        raise ValueError("the primary family is empty")
    missing = set(per_contrast_pairs) - set(thresholds)
    if missing:
        raise ValueError(f"no threshold for {sorted(missing)}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    m = len(per_contrast_pairs)
    boundary = design_boundaries(alpha, m, n_min, n_max)
    min_d = min_d or {}
    pairs = {
        name: (np.asarray(a, float), np.asarray(b, float))
        for name, (a, b) in per_contrast_pairs.items()
    }
    for name, (a, b) in pairs.items():
        if a.shape != b.shape or a.ndim != 1:
            raise ValueError(f"{name}: paired values must be 1-D and of equal length")
    available = max(a.size for a, _ in pairs.values())

    outcome: dict[str, Outcome] = {name: Outcome.UNDETERMINED for name in pairs}
    decided_at: dict[str, int | None] = {name: None for name in pairs}
    last: dict[str, LookDecision | None] = {name: None for name in pairs}
    looks: list[Look] = []
    n_seeds = min(available, n_min - 1)
    for n, level_p, t_crit in zip(
        boundary.looks, boundary.nominal_p, boundary.t_critical, strict=True
    ):
        if n > available or all(at is not None for at in decided_at.values()):
            break
        decisions: dict[str, LookDecision] = {}
        for name, (a, b) in pairs.items():
            if decided_at[name] is not None or a.size < n:
                continue
            decision = look(a[:n], b[:n], thresholds[name], level_p, min_d.get(name))
            decisions[name] = last[name] = decision
            if decision.decision is not None:
                outcome[name], decided_at[name] = decision.decision, n
        looks.append(Look(n=n, nominal_p=level_p, t_critical=t_crit, decisions=decisions))
        n_seeds = n

    all_decided = all(at is not None for at in decided_at.values())
    stopped = all_decided or n_seeds >= n_max
    if all_decided:
        reason = f"every primary contrast decided by {n_seeds} seeds"
    elif stopped:
        open_names = ", ".join(name for name, at in decided_at.items() if at is None)
        reason = f"{n_max} seeds (n_max) reached with {open_names} still open: UNDETERMINED"
    elif n_seeds < n_min:
        reason = f"{available} seed(s): the first look is at {n_min}"
    else:
        open_names = ", ".join(name for name, at in decided_at.items() if at is None)
        reason = f"{open_names} open after {n_seeds} seeds: add a seed"
    if available > n_seeds and stopped:
        reason += (
            f"; {available - n_seeds} later seed(s) not used: testing again after the "
            "stopping look would spend alpha the design does not have"
        )
    contrasts = tuple(
        SequentialContrast(
            name, float(thresholds[name]), outcome[name], decided_at[name], last[name]
        )
        for name in pairs
    )
    return SequentialResult(
        alpha=float(alpha),
        level=alpha / m,
        n_min=n_min,
        n_max=n_max,
        boundary=boundary,
        looks=tuple(looks),
        contrasts=contrasts,
        n_seeds=n_seeds,
        stopped=stopped,
        reason=reason,
    )
