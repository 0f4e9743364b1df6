"""From a policy's raw rank to the rank a module trains with: margin, round up, cap (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence

#: The allowed ranks of the mechanism test's probe (r = 64): powers of two.
DEFAULT_ALLOWED_RANKS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)


def powers_of_two_up_to(max_rank: int) -> list[int]:
    """The allowed ranks when none are given: 1, 2, 4, ... ≤ ``max_rank``, and ``max_rank`` itself."""
    if max_rank <= 0:
        raise ValueError(f"rank must be positive, got {max_rank}")
    return sorted({2**k for k in range(max_rank.bit_length()) if 2**k <= max_rank} | {max_rank})


def normalize_allowed_ranks(allowed_ranks: Sequence[int]) -> list[int]:
    """Sorted, de-duplicated positive integers (ValueError if empty or any is not positive)."""
    ranks = sorted({int(r) for r in allowed_ranks})
    if not ranks or ranks[0] <= 0 or any(int(r) != r for r in allowed_ranks):
        raise ValueError(
            f"allowed ranks must be a non-empty list of positive integers, got {list(allowed_ranks)}"
        )
    return ranks


def round_up_to_allowed(
    raw_rank: float, allowed_ranks: Sequence[int], module_r: int, margin: float = 1.0
) -> int:
    """The rank a module gets: ``raw_rank × margin`` rounded UP to an allowed rank, capped at r.

    The smallest allowed rank ≥ ``raw_rank × margin`` is taken (the largest allowed rank if
    none is that large), then capped at ``module_r``: a module never gets more rank than the
    probe gave it. The result is an allowed rank or ``module_r`` itself. A raw rank of 0 (a
    zero update) becomes the smallest allowed rank: a LoRA module cannot have rank 0.
    """
    if margin <= 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be a positive number, got {margin}")
    if module_r <= 0:
        raise ValueError(f"module rank must be positive, got {module_r}")
    ranks = normalize_allowed_ranks(allowed_ranks)
    target = raw_rank * margin
    # 3 × 1.1 = 3.3000000000000003: a product within round-off of an integer is that integer.
    if abs(target - round(target)) < 1e-9:
        target = round(target)
    chosen = next((r for r in ranks if r >= target), ranks[-1])
    return min(chosen, module_r)
