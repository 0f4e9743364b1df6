"""Ranks at an exact LoRA parameter budget (pure: numpy only, no torch, no I/O).

A module of shape (d_in, d_out) at rank r has r·c LoRA parameters, c = d_in + d_out (its
*cost*, the parameters of one rank unit). Given a per-module preference and a budget B,
:func:`fit_to_budget` returns integer ranks whose count P = Σ rᵢ·cᵢ equals B as closely as
integer ranks allow, each rank in [1, capᵢ] (or exactly 0 where the allocator says so).

**Preference.** Either a rank pattern (e.g. a policy's raw ranks: rescaled, the pattern's
shape is kept) or non-negative scores: both are read as *rank* proportional to the value,
rᵢ ∝ wᵢ. To make a module's parameters proportional to a score instead, pass wᵢ/cᵢ.

**Algorithm** (deterministic; the same inputs give the same ranks on every machine):

1. *Scale.* xᵢ(s) = clip(s·wᵢ, loᵢ, capᵢ), with loᵢ = 1 (0 for a module the allocator removes).
   Σ xᵢ(s)·cᵢ is continuous and non-decreasing in s, so bisection finds the largest s (to float
   precision) with Σ xᵢ(s)·cᵢ ≤ B: the continuous allocation that spends the budget.
2. *Floor.* rᵢ = ⌊xᵢ⌋, so P ≤ B.
3. *Largest remainder.* One rank unit at a time goes to the module furthest below its target
   (xᵢ − rᵢ, largest first; ties: module name) among those below their cap whose unit still
   fits (P + cᵢ ≤ B); the first units go by the fractional parts xᵢ − ⌊xᵢ⌋. It stops when no
   unit fits, so the deficit D = B − P is then smaller than the cost of every module that
   could still grow.
4. *Nearest.* One more unit goes to the cheapest module that can still grow (of equal costs,
   the one furthest below its target) when that brings P nearer to B (cᵢ − D < D).

Of two modules with the same cost and cap, the one with the larger preference never gets the
smaller rank (a rescaled pattern keeps its order within a module type).

**Exactness.** Let c_free be the smallest cost among the modules with a positive preference
that are still below their cap after step 3. Then |P − B| ≤ c_free / 2, and P = B when there
is no such module. So |P − B| ≤ min cᵢ / 2 (half of the "one rank step of the smallest
module") whenever some module of the smallest cost can still grow; on Mistral-7B that is
2,560 parameters, 6·10⁻⁵ of a rank-16-sized budget. In every case |P − B| ≤ max cᵢ / 2.
Modules whose preference is 0 stay at their lower bound (1, or 0 when removal is allowed) and
are never given rank to fill a budget.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: Bisection steps: the bracket shrinks by 2⁻²⁰⁰, below float resolution for any budget.
_BISECTION_STEPS = 200
#: Remainders are compared at this many decimals, so float noise never decides an order.
_REMAINDER_DECIMALS = 9


class BudgetError(ValueError):
    """A budget no ranks in the allowed range can reach (below the minimum or above the maximum)."""

    def __init__(self, message: str, *, budget: int, minimum: int, maximum: int):
        super().__init__(message)
        self.budget = budget
        self.minimum = minimum
        self.maximum = maximum


@dataclass(frozen=True)
class BudgetAllocation:
    """Ranks at a parameter budget: ``params`` = Σ rᵢ·(d_inᵢ + d_outᵢ) against ``budget``.

    ``ranks`` names every module given, in the given order; a rank of 0 means the module is
    not adapted.
    """

    ranks: dict[str, int]
    params: int
    budget: int

    @property
    def ratio(self) -> float:
        """Achieved parameters over the budget (1.0 is exact)."""
        return self.params / self.budget

    @property
    def removed(self) -> list[str]:
        """Modules at rank 0 (not adapted), in the given order."""
        return [name for name, rank in self.ranks.items() if rank == 0]


def module_costs(shapes: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """Parameters per rank unit, d_in + d_out, for every module."""
    return {name: int(d_in) + int(d_out) for name, (d_in, d_out) in shapes.items()}


def module_caps(names: list[str], caps: int | Mapping[str, int]) -> dict[str, int]:
    """One positive rank cap per module, from one number or a mapping naming every module."""
    if isinstance(caps, Mapping):
        missing = [name for name in names if name not in caps]
        if missing:
            raise ValueError(f"no rank cap given for module(s) {missing[:3]}")
        result = {name: int(caps[name]) for name in names}
    else:
        result = dict.fromkeys(names, int(caps))
    bad = [name for name, cap in result.items() if cap < 1]
    if bad:
        raise ValueError(f"rank caps must be positive, not for {bad[:3]}")
    return result


def feasible_range(
    preference: Mapping[str, float],
    shapes: Mapping[str, tuple[int, int]],
    caps: int | Mapping[str, int],
    *,
    allow_zero: bool = False,
) -> tuple[int, int]:
    """The smallest and largest budgets :func:`fit_to_budget` can reach with this preference."""
    costs, cap, weights = _checked(preference, shapes, caps)
    low = _lower_bounds(weights, allow_zero)
    minimum = sum(low[n] * costs[n] for n in weights)
    maximum = sum((cap[n] if weights[n] > 0 else low[n]) * costs[n] for n in weights)
    return minimum, maximum


def fit_to_budget(
    preference: Mapping[str, float],
    shapes: Mapping[str, tuple[int, int]],
    budget: int,
    caps: int | Mapping[str, int],
    *,
    allow_zero: bool = False,
) -> BudgetAllocation:
    """Integer ranks ∝ ``preference`` whose LoRA parameter count is ``budget`` (module docstring).

    ``caps`` is the largest rank (the probe's r), one number or one per module. With
    ``allow_zero`` a module whose preference is 0 gets rank 0 (not adapted); without it,
    rank 1. Modules with a positive preference always get at least rank 1. Raises
    :class:`BudgetError` when the budget is out of reach, ValueError on malformed input.
    """
    costs, cap, weights = _checked(preference, shapes, caps)
    budget = checked_budget(budget)
    if not any(w > 0 for w in weights.values()):
        raise ValueError("the preference is 0 for every module: there is nothing to scale")
    minimum, maximum = feasible_range(weights, shapes, cap, allow_zero=allow_zero)
    check_reachable(budget, minimum, maximum, allow_zero)
    low = _lower_bounds(weights, allow_zero)
    names = list(weights)
    w = np.array([weights[n] for n in names])
    lo = np.array([low[n] for n in names], dtype=np.float64)
    hi = np.array([cap[n] if weights[n] > 0 else low[n] for n in names], dtype=np.float64)
    c = np.array([costs[n] for n in names], dtype=np.float64)

    def spent(scale: float) -> float:
        return float(np.dot(np.clip(scale * w, lo, hi), c))

    s_low, s_high = 0.0, float(hi.max() / w[w > 0].min())
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (s_low + s_high)
        if middle in (s_low, s_high):
            break
        if spent(middle) <= budget:
            s_low = middle
        else:
            s_high = middle
    target = np.clip(s_low * w, lo, hi)
    targets = {n: float(x) for n, x in zip(names, target, strict=True) if weights[n] > 0}
    ranks = {n: int(math.floor(x)) for n, x in zip(names, target, strict=True)}
    ranks = add_units(ranks, costs, cap, budget, targets)
    order = sorted(targets, key=lambda n: (-_shortfall(targets, ranks, n), n))
    return make_allocation(nearest_unit(ranks, costs, cap, budget, order), shapes, budget)


def add_units(
    ranks: Mapping[str, int],
    costs: Mapping[str, int],
    caps: Mapping[str, int],
    budget: int,
    targets: Mapping[str, float],
) -> dict[str, int]:
    """Step 3 of the module docstring: single rank units while they fit, most-short first.

    Only modules named in ``targets`` grow, each up to its cap; the next unit goes to the
    module furthest below its continuous target (target − rank, ties: name) among those whose
    unit still fits. Afterwards B − P is smaller than the cost of every module that could grow.
    """
    ranks = dict(ranks)
    params = sum(ranks[n] * costs[n] for n in ranks)
    if params > budget:
        raise ValueError(f"the starting ranks already spend {params:,} > budget {budget:,}")
    queue = [(-_shortfall(targets, ranks, n), n) for n in targets if ranks[n] < caps[n]]
    heapq.heapify(queue)
    while queue:
        _, name = heapq.heappop(queue)
        if params + costs[name] > budget:
            continue  # the budget only shrinks: this module's unit never fits again
        ranks[name] += 1
        params += costs[name]
        if ranks[name] < caps[name]:
            heapq.heappush(queue, (-_shortfall(targets, ranks, name), name))
    return ranks


def nearest_unit(
    ranks: Mapping[str, int],
    costs: Mapping[str, int],
    caps: Mapping[str, int],
    budget: int,
    order: list[str],
) -> dict[str, int]:
    """Step 4 of the module docstring: one more unit when it brings P nearer to B.

    The unit goes to the cheapest module of ``order`` below its cap (of equal costs, the first
    in ``order``), and only when the deficit D = B − P exceeds half its cost. ``ranks`` must
    leave 0 ≤ D < that cost (as :func:`add_units` does); then |P − B| ≤ c_free / 2 after.
    """
    ranks = dict(ranks)
    deficit = budget - sum(ranks[n] * costs[n] for n in ranks)
    growable = [n for n in order if ranks[n] < caps[n]]
    if deficit > 0 and growable:
        cheapest = min(growable, key=lambda n: costs[n])  # min keeps the first of equal costs
        if costs[cheapest] - deficit < deficit:
            ranks[cheapest] += 1
    return ranks


def _shortfall(targets: Mapping[str, float], ranks: Mapping[str, int], name: str) -> float:
    """How far a module is below its continuous target, rounded so float noise never decides."""
    return round(targets[name] - ranks[name], _REMAINDER_DECIMALS)


def make_allocation(
    ranks: Mapping[str, int], shapes: Mapping[str, tuple[int, int]], budget: int
) -> BudgetAllocation:
    """A :class:`BudgetAllocation` of ``ranks`` (their parameters counted from ``shapes``)."""
    costs = module_costs({n: shapes[n] for n in ranks})
    ranks = {n: int(r) for n, r in ranks.items()}
    return BudgetAllocation(
        ranks=ranks, params=sum(r * costs[n] for n, r in ranks.items()), budget=int(budget)
    )


def budget_from(
    spec: str | float,
    per_layer_ranks: Mapping[str, int],
    probe_ranks: Mapping[str, int],
    shapes: Mapping[str, tuple[int, int]],
) -> int:
    """The parameter budget ``compression.budget`` names.

    ``"per_layer"``: the parameters of ``per_layer_ranks``; a fraction F in (0, 1] (a number
    or its text, e.g. ``0.25`` or ``"0.25"``): ⌊F·P_probe + ½⌋ with P_probe the parameters of
    ``probe_ranks``. Raises ValueError for anything else.
    """
    costs = module_costs(shapes)
    if spec == "per_layer":
        return _params(per_layer_ranks, costs)
    if isinstance(spec, bool):
        raise ValueError(f"budget must be 'per_layer' or a fraction in (0, 1], got {spec!r}")
    try:
        fraction = float(spec)
    except (TypeError, ValueError):
        raise ValueError(
            f"budget must be 'per_layer' or a fraction in (0, 1] of the probe's parameters, "
            f"got {spec!r}"
        ) from None
    if not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise ValueError(f"a budget fraction must be in (0, 1], got {spec!r}")
    return math.floor(fraction * _params(probe_ranks, costs) + 0.5)


def _params(ranks: Mapping[str, int], costs: Mapping[str, int]) -> int:
    missing = [n for n in ranks if n not in costs]
    if missing:
        raise ValueError(f"no shape given for module(s) {missing[:3]}")
    return sum(int(r) * costs[n] for n, r in ranks.items())


def _checked(
    preference: Mapping[str, float],
    shapes: Mapping[str, tuple[int, int]],
    caps: int | Mapping[str, int],
) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
    if not preference:
        raise ValueError("no modules to allocate rank to")
    missing = [n for n in preference if n not in shapes]
    if missing:
        raise ValueError(f"no shape given for module(s) {missing[:3]}")
    weights = {n: float(w) for n, w in preference.items()}
    bad = [n for n, w in weights.items() if not (math.isfinite(w) and w >= 0)]
    if bad:
        raise ValueError(f"preferences must be finite and non-negative, not for {bad[:3]}")
    costs = module_costs({n: shapes[n] for n in weights})
    if any(c <= 0 for c in costs.values()):
        raise ValueError("module shapes must be positive")
    return costs, module_caps(list(weights), caps), weights


def checked_budget(budget: int) -> int:
    """``budget`` as an int, or ValueError unless it is a positive whole number."""
    if isinstance(budget, bool) or int(budget) != budget or budget <= 0:
        raise ValueError(
            f"the budget must be a positive whole number of parameters, got {budget!r}"
        )
    return int(budget)


def _lower_bounds(weights: Mapping[str, float], allow_zero: bool) -> dict[str, int]:
    return {n: 0 if (allow_zero and w == 0) else 1 for n, w in weights.items()}


def check_reachable(budget: int, minimum: int, maximum: int, allow_zero: bool) -> None:
    """Raise :class:`BudgetError` unless ``minimum`` ≤ ``budget`` ≤ ``maximum``."""
    if budget < minimum:
        floor = "rank 1 for every module the allocator keeps" if allow_zero else "rank 1 everywhere"
        raise BudgetError(
            f"a budget of {budget:,} parameters is below the least these modules can train "
            f"({minimum:,}: {floor})",
            budget=budget,
            minimum=minimum,
            maximum=maximum,
        )
    if budget > maximum:
        raise BudgetError(
            f"a budget of {budget:,} parameters is above the most these modules can train "
            f"({maximum:,}: every module the preference names at its rank cap)",
            budget=budget,
            minimum=minimum,
            maximum=maximum,
        )
