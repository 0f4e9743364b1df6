"""Control rank patterns built from an audit-guided ``per_layer`` pattern (pure, no I/O).

The mechanism test asks whether *where* the audit puts rank matters. Each control keeps one
property of ``per_layer`` and destroys another:

- ``shuffled_pattern``: the same rank multiset at random places (the seed's rule, exactly).
  Modules differ in shape, so the parameter count changes.
- ``shuffled_within_type``: ranks permuted only among modules of one type: the same name
  suffix *and* the same shape (``module_type_key``), so the parameter count is exactly
  per_layer's even where same-named modules differ in shape (vision towers, MoE experts,
  cross-attention); placement across layers is random.
- ``shuffled_k``: ``k`` independent within-type shuffles, a null distribution of placements
  at exactly per_layer's parameter count.
- ``reversed_within_type``: within each module type, the same ranks assigned in the reverse
  order of the audit's per-module need: the worst placement the audit can name, a bound on
  how much placement can matter at all.
- ``uniform_matched`` / ``uniform_median`` / ``uniform_p90``: no heterogeneity at all, at a
  matched parameter budget (any integer rank: the allowed ranks are for audit-guided
  patterns, not for this control) or at a summary of the per_layer ranks.

Every function returns a new ``{module: rank}`` dict in the input pattern's module order.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from gradience.ranks import lora_params, nearest_rank_percentile

#: Offset the seed's rule adds to the run seed (``random.Random(seed + 10000)``).
SHUFFLE_SEED_OFFSET = 10000


def shuffled_pattern(pattern: Mapping[str, int], seed: int) -> dict[str, int]:
    """The seed's shuffled control, exactly.

    ``ranks = list(pattern.values())`` in the pattern's module order,
    ``random.Random(seed + 10000).shuffle(ranks)``, zipped back onto the same module names.
    """
    ranks = list(pattern.values())
    random.Random(seed + SHUFFLE_SEED_OFFSET).shuffle(ranks)
    return dict(zip(pattern.keys(), ranks, strict=True))


def module_type_key(suffix: str, d_in: int, d_out: int) -> str:
    """What "type" means for every within-type control: name suffix and shape together.

    ``q_proj`` modules of a text stack share one key; a vision tower's ``q_proj`` of another
    width gets its own, so a shuffle never trades rank between modules of different cost.
    """
    return f"{suffix}[{d_in}x{d_out}]"


def moved_fraction(
    pattern: Mapping[str, int], other: Mapping[str, int], costs: Mapping[str, int]
) -> float | None:
    """Share of ``pattern``'s LoRA parameters that ``other`` holds in a different module.

    ``costs`` are parameters per rank (d_in + d_out). For two patterns with the same parameter
    count, sum |r_a - r_b|·cost counts every moved parameter twice (once where it left, once
    where it arrived), so the share is that sum over twice ``pattern``'s parameters: 0 when
    nothing moved, 1 when no parameter stayed where it was. None without a cost for a module.
    """
    if any(name not in costs or name not in other for name in pattern):
        return None
    total = sum(rank * costs[name] for name, rank in pattern.items())
    if total <= 0:
        return None
    moved = sum(abs(rank - other[name]) * costs[name] for name, rank in pattern.items())
    return moved / (2 * total)


def shuffled_within_type(
    pattern: Mapping[str, int], module_types: Mapping[str, str], seed: int
) -> dict[str, int]:
    """Permute ranks only among modules of the same type (parameter-matched shuffle).

    RNG rule: one ``random.Random(seed + 10000)`` (the seed rule's generator); for each module
    type in the order it first appears in ``pattern``, the ranks of that type's modules (in
    pattern order) are shuffled with it and assigned back to those modules in pattern order.
    """
    return _shuffle_by_type(pattern, module_types, random.Random(seed + SHUFFLE_SEED_OFFSET))


def _shuffle_by_type(
    pattern: Mapping[str, int], module_types: Mapping[str, str], rng: random.Random
) -> dict[str, int]:
    missing = [name for name in pattern if name not in module_types]
    if missing:
        raise ValueError(f"no module type given for {missing[:3]}")
    by_type: dict[str, list[str]] = {}
    for name in pattern:
        by_type.setdefault(module_types[name], []).append(name)
    shuffled: dict[str, int] = {}
    for names in by_type.values():
        ranks = [pattern[name] for name in names]
        rng.shuffle(ranks)
        shuffled.update(zip(names, ranks, strict=True))
    return {name: shuffled[name] for name in pattern}


def reversed_within_type(
    pattern: Mapping[str, int], module_types: Mapping[str, str], need: Mapping[str, float]
) -> dict[str, int]:
    """Within each module type, the largest rank goes to the module that needs it least.

    Modules of one type are ordered by need, descending (ties: by name), and given that type's
    ranks in ascending order; so the parameter count is exactly ``pattern``'s and every module
    the audit rates above another of its type gets a rank no larger than that one's.
    """
    missing = [name for name in pattern if name not in module_types or name not in need]
    if missing:
        raise ValueError(f"no module type or need given for {missing[:3]}")
    by_type: dict[str, list[str]] = {}
    for name in pattern:
        by_type.setdefault(module_types[name], []).append(name)
    reversed_ranks: dict[str, int] = {}
    for names in by_type.values():
        neediest_first = sorted(names, key=lambda n: (-need[n], n))
        ascending = sorted(pattern[name] for name in names)
        reversed_ranks.update(zip(neediest_first, ascending, strict=True))
    return {name: reversed_ranks[name] for name in pattern}


def shuffled_k_seed(seed: int, index: int) -> str:
    """Seed of the ``index``-th of the k independent shuffles: ``"per_layer_shuffled_k:{seed}:{index}"``.

    A string seed (hashed by ``random.Random`` with SHA-512) keeps these draws independent of
    the main ``seed + 10000`` shuffle and of each other for any run seed.
    """
    return f"per_layer_shuffled_k:{seed}:{index}"


def shuffled_k(
    pattern: Mapping[str, int], module_types: Mapping[str, str], seed: int, k: int
) -> dict[str, dict[str, int]]:
    """``k`` independent within-type shuffles, named ``per_layer_shuffled_k0`` ... ``k{k-1}``.

    Shuffle ``i`` is :func:`shuffled_within_type`'s rule with its own generator,
    ``random.Random(shuffled_k_seed(seed, i))``: every shuffle has exactly ``pattern``'s
    parameter count, so they form a null distribution of *placements*, not of capacities.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    return {
        f"per_layer_shuffled_k{index}": _shuffle_by_type(
            pattern, module_types, random.Random(shuffled_k_seed(seed, index))
        )
        for index in range(k)
    }


def uniform(pattern: Mapping[str, int], rank: int) -> dict[str, int]:
    """Every module of ``pattern`` at one rank."""
    return {name: rank for name in pattern}


def uniform_matched(
    pattern: Mapping[str, int], shapes: Mapping[str, tuple[int, int]]
) -> dict[str, int]:
    """One uniform rank whose LoRA parameter count is closest to ``pattern``'s.

    Candidates are every integer from 1 to the pattern's largest rank (the probe cap): the
    allowed ranks shape the audit-guided patterns, not this control, whose one job is to
    match per_layer's parameter count (with powers of two it could be off by a third). Ties
    (two ranks equally far from the target) go to the smaller rank: the control should never
    get more capacity than the pattern it is matched to by a tie.
    """
    if not pattern:
        raise ValueError("empty rank pattern")
    candidates = range(1, max(pattern.values()) + 1)
    target = lora_params(pattern, shapes)
    best = min(
        candidates, key=lambda r: (abs(lora_params(uniform(pattern, r), shapes) - target), r)
    )
    return uniform(pattern, best)


def uniform_median(pattern: Mapping[str, int]) -> dict[str, int]:
    """Every module at the median per_layer rank.

    The nearest-rank median of the audit summaries (:func:`gradience.ranks.nearest_rank_percentile`):
    always one of the pattern's ranks, the lower middle one for an even count.
    """
    return uniform(pattern, nearest_rank_percentile(list(pattern.values()), 50))


def uniform_p90(pattern: Mapping[str, int]) -> dict[str, int]:
    """Every module at the 90th-percentile per_layer rank (nearest-rank, as the audit's p90)."""
    return uniform(pattern, nearest_rank_percentile(list(pattern.values()), 90))


def rank_histogram(pattern: Mapping[str, int]) -> dict[str, int]:
    """``{"rank": number of modules}``, ranks ascending (keys are strings for JSON)."""
    counts: dict[int, int] = {}
    for rank in pattern.values():
        counts[rank] = counts.get(rank, 0) + 1
    return {str(rank): counts[rank] for rank in sorted(counts)}
