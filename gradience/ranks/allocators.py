"""Data-free rank allocators: ranks at an exact parameter budget from an audit (pure, no I/O).

Every allocator reads only what an audit holds — each module's singular spectrum, shape and
layer index — and returns a :class:`~gradience.ranks.budget.BudgetAllocation` whose parameter
count is the budget (to within half the cheapest growable module's rank unit; see
:mod:`gradience.ranks.budget`), every rank in [1, cap] (0 only with ``allow_zero``):

- ``energy@TAU`` (or ``energy``, TAU given apart), ``erank``, ``stable_rank``, ``knee``, ``oht``:
  the policy's raw rank per module (:func:`gradience.ranks.policies.policy_rank`, before any
  margin or rounding to allowed ranks) is the pattern, rescaled to the budget with its shape
  kept (:func:`gradience.ranks.budget.fit_to_budget`);
- ``global_energy``: one threshold on kept energy per parameter across all modules
  (:func:`global_energy_allocation`);
- ``depth``: no data at all, ranks rising linearly with layer depth (:func:`depth_preference`).

:func:`allocate` runs any of them on an :class:`~gradience.results.AuditResult`; the other
functions take plain mappings keyed by module name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gradience.ranks.budget import (
    BudgetAllocation,
    check_reachable,
    checked_budget,
    fit_to_budget,
    make_allocation,
    module_caps,
    module_costs,
    nearest_unit,
)
from gradience.ranks.measures import as_spectrum
from gradience.ranks.policies import parse_policy, policy_rank
from gradience.results import AuditResult

#: Allocator names :func:`allocate` accepts (``energy`` also as ``energy@TAU``).
ALLOCATORS: tuple[str, ...] = (
    "energy",
    "erank",
    "stable_rank",
    "knee",
    "oht",
    "global_energy",
    "depth",
)
#: The last layer's depth preference over the first's, when none is given.
DEFAULT_DEPTH_RATIO = 3.0


def allocator_name(name: str, tau: float = 0.9) -> str:
    """The canonical allocator name: ``energy`` becomes ``energy@TAU``; ValueError if unknown."""
    if name == "energy":
        name = f"energy@{tau:g}"
    if name in ("global_energy", "depth"):
        return name
    try:
        return parse_policy(name).name
    except ValueError:
        raise ValueError(
            f"unknown allocator {name!r}; expected one of {', '.join(ALLOCATORS)} or energy@TAU"
        ) from None


def policy_preference(spectra: Mapping[str, Sequence[float]], policy: str) -> dict[str, float]:
    """Each module's raw policy rank (0..r) as a rank pattern to rescale."""
    parse_policy(policy)
    return {name: float(policy_rank(sv, policy)) for name, sv in spectra.items()}


def policy_allocation(
    spectra: Mapping[str, Sequence[float]],
    shapes: Mapping[str, tuple[int, int]],
    budget: int,
    caps: int | Mapping[str, int],
    policy: str,
    *,
    allow_zero: bool = False,
) -> BudgetAllocation:
    """The policy's raw ranks rescaled to ``budget`` (shape kept; a raw 0 stays at the floor).

    A module whose raw rank is 0 (a zero update) gets rank 1, or 0 with ``allow_zero``.
    """
    preference = policy_preference(spectra, policy)
    return fit_to_budget(preference, shapes, budget, caps, allow_zero=allow_zero)


def global_energy_allocation(
    spectra: Mapping[str, Sequence[float]],
    shapes: Mapping[str, tuple[int, int]],
    budget: int,
    caps: int | Mapping[str, int],
    *,
    allow_zero: bool = False,
) -> BudgetAllocation:
    """One global threshold on kept energy per parameter, across all modules.

    A module's rank-k truncation keeps its k largest components; component j of module i
    keeps energy σᵢⱼ² and costs cᵢ = d_in + d_out parameters. Ranking every component of every
    module by σᵢⱼ²/cᵢ and keeping the best until the budget is spent is one threshold t on
    that ratio: keep every component with σ²/c ≥ t. This is the parameter-aware ("PARA-style")
    allocator: a component of a cheap module is kept before an equally strong one of an
    expensive module, because it buys the same energy for fewer parameters. For a budget that
    equals the parameters of such a prefix, the prefix keeps the most energy any allocation of
    those parameters can (σ² is non-increasing within a module, so the greedy is the optimum of
    the knapsack's relaxation, and the relaxation's optimum is integral there).

    Order: σ²/c descending, ties by module name, then component index (so a module's
    components are taken in order). Without ``allow_zero`` every module first gets its leading
    component (rank 1) whatever it is worth. A component that no longer fits closes its module
    (its later components cost the same); the others keep filling, then
    :func:`gradience.ranks.budget.nearest_unit` adds the one unit that brings the count
    nearest the budget (to the cheapest module that can grow; of equal costs, the one whose
    next component is worth most). Singular values are taken as given: pass *scaled* spectra
    (scaling·σ) where modules' scalings differ, so energy is compared in the model's units.
    """
    budget = checked_budget(budget)
    names = list(spectra)
    if not names:
        raise ValueError("no modules to allocate rank to")
    values = {name: as_spectrum(spectra[name]) for name in names}
    costs = module_costs({name: shapes[name] for name in names})
    cap = module_caps(names, caps)
    cap = {name: min(cap[name], values[name].size) for name in names}
    if any(c < 1 for c in cap.values()):
        raise ValueError("every module needs a non-empty spectrum")
    low = 0 if allow_zero else 1
    minimum = sum(low * costs[n] for n in names)
    maximum = sum(cap[n] * costs[n] for n in names)
    check_reachable(budget, minimum, maximum, allow_zero)

    module, index, density = [], [], []
    for position, name in enumerate(names):
        kept = np.arange(low, cap[name])
        module.extend([position] * kept.size)
        index.extend(kept.tolist())
        density.extend((values[name][kept] ** 2 / costs[name]).tolist())
    name_rank = {name: rank for rank, name in enumerate(sorted(names))}
    by_name = np.array([name_rank[names[p]] for p in module], dtype=np.int64)
    order = np.lexsort((np.array(index), by_name, -np.array(density)))

    ranks = dict.fromkeys(names, low)
    params = minimum
    closed: set[str] = set()
    for k in order:
        name = names[module[k]]
        if name in closed:
            continue
        if params + costs[name] > budget:
            closed.add(name)
            continue
        ranks[name] += 1
        params += costs[name]

    def next_density(name: str) -> float:
        return float(values[name][ranks[name]] ** 2 / costs[name])

    growable = [n for n in names if ranks[n] < cap[n]]
    growable.sort(key=lambda n: (-next_density(n), n))
    return make_allocation(nearest_unit(ranks, costs, cap, budget, growable), shapes, budget)


def depth_preference(
    layers: Mapping[str, int | None], ratio: float = DEFAULT_DEPTH_RATIO
) -> dict[str, float]:
    """Rank preference rising linearly with depth, the same for every module of one layer.

    Layer ℓ of 0..L (L the deepest layer named) gets 1 + (ratio − 1)·ℓ/L: the deepest layer
    ``ratio`` times the first (ratio = 1 is uniform). PRILoRA (Benedek & Wolf, 2024) allocates
    linearly increasing ranks per layer; the slope here is this parameter, not the paper's.
    A module outside any numbered layer (``layers[name]`` is None, e.g. ``lm_head``) gets the
    mean preference, (1 + ratio)/2.
    """
    if not ratio >= 1 or not np.isfinite(ratio):
        raise ValueError(f"the depth ratio must be a finite number >= 1, got {ratio}")
    known = [layer for layer in layers.values() if layer is not None]
    deepest = max(known, default=0)
    if any(layer < 0 for layer in known):
        raise ValueError("layer indices must be non-negative")

    def weight(layer: int | None) -> float:
        if layer is None:
            return (1.0 + ratio) / 2.0
        return 1.0 + (ratio - 1.0) * (layer / deepest if deepest else 0.0)

    return {name: weight(layer) for name, layer in layers.items()}


def depth_allocation(
    layers: Mapping[str, int | None],
    shapes: Mapping[str, tuple[int, int]],
    budget: int,
    caps: int | Mapping[str, int],
    *,
    ratio: float = DEFAULT_DEPTH_RATIO,
) -> BudgetAllocation:
    """:func:`depth_preference` at ``budget``: equal ranks within a layer up to the one rank unit
    the rounding moves (modules of one layer differ in cost, so the last units may differ)."""
    return fit_to_budget(depth_preference(layers, ratio), shapes, budget, caps)


def allocate(
    audit: AuditResult,
    allocator: str,
    budget: int,
    *,
    r_max: int | None = None,
    allow_zero: bool = False,
    tau: float = 0.9,
    depth_ratio: float = DEFAULT_DEPTH_RATIO,
) -> BudgetAllocation:
    """Ranks for every audited module (in the audit's order) at ``budget`` from one allocator.

    ``allocator`` is a name of :data:`ALLOCATORS` or ``energy@TAU`` (``energy`` alone uses
    ``tau``). Each module's cap is its audited rank r, and at most ``r_max`` when given (the
    probe's r in the experiment). ``global_energy`` compares the *scaled* spectra
    (scaling·σ), so a module trained at another alpha/r is measured in the model's units;
    the policies are scale-free. ``depth`` ignores ``allow_zero`` (every module keeps rank ≥ 1).
    """
    if not audit.modules:
        raise ValueError("the audit has no modules")
    name = allocator_name(allocator, tau)
    if r_max is not None and r_max < 1:
        raise ValueError(f"r_max must be positive, got {r_max}")
    shapes = {m.name: (m.d_in, m.d_out) for m in audit.modules}
    caps = {m.name: m.r if r_max is None else min(m.r, r_max) for m in audit.modules}
    if name == "depth":
        layers = {m.name: m.layer for m in audit.modules}
        return depth_allocation(layers, shapes, budget, caps, ratio=depth_ratio)
    if name == "global_energy":
        scaled = {m.name: [m.scaling * s for s in m.singular_values] for m in audit.modules}
        return global_energy_allocation(scaled, shapes, budget, caps, allow_zero=allow_zero)
    spectra = {m.name: m.singular_values for m in audit.modules}
    return policy_allocation(spectra, shapes, budget, caps, name, allow_zero=allow_zero)
