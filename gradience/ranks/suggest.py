"""Rank patterns from an audit: one explicit rank per audited module, and their summaries."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from gradience.ranks.allowed import (
    normalize_allowed_ranks,
    powers_of_two_up_to,
    round_up_to_allowed,
)
from gradience.ranks.policies import parse_policy, policy_rank
from gradience.results import AuditResult, PolicySummary, RankPattern


def lora_params(ranks: Mapping[str, int], shapes: Mapping[str, tuple[int, int]]) -> int:
    """LoRA parameters Σ rᵢ·(d_in + d_out) with ``shapes[name] = (d_in, d_out)``."""
    missing = [name for name in ranks if name not in shapes]
    if missing:
        raise ValueError(f"no shape given for module(s) {missing[:3]}")
    return sum(int(r) * (shapes[name][0] + shapes[name][1]) for name, r in ranks.items())


def suggest_module_rank(
    singular_values: Sequence[float],
    module_r: int,
    policy: str,
    allowed_ranks: Sequence[int],
    margin: float = 1.0,
) -> int:
    """One module's rank under ``policy``: raw policy rank → × margin → round up → cap at r."""
    return round_up_to_allowed(
        policy_rank(singular_values, policy), allowed_ranks, module_r, margin
    )


def default_allowed_ranks(audit: AuditResult) -> list[int]:
    """The audit's own allowed ranks, else powers of two up to the largest module rank."""
    if audit.allowed_ranks:
        return normalize_allowed_ranks(audit.allowed_ranks)
    return powers_of_two_up_to(max((m.r for m in audit.modules), default=1))


def suggest_ranks(
    audit: AuditResult, policy: str, allowed_ranks: Sequence[int], margin: float = 1.0
) -> RankPattern:
    """The rank pattern ``policy`` gives: every audited module named, in the audit's order.

    Ranks are recomputed from each module's singular values (so any policy works, not only the
    ones the audit evaluated). ``probe_r`` is the largest module rank in the audit and
    ``trainable_params`` = Σ rᵢ·(d_in + d_out) at the suggested ranks.
    """
    parse_policy(policy)
    allowed = normalize_allowed_ranks(allowed_ranks)
    if not audit.modules:
        raise ValueError("the audit has no modules")
    ranks = {
        m.name: suggest_module_rank(m.singular_values, m.r, policy, allowed, margin)
        for m in audit.modules
    }
    shapes = {m.name: (m.d_in, m.d_out) for m in audit.modules}
    return RankPattern(
        policy=policy,
        allowed_ranks=allowed,
        probe_r=max(m.r for m in audit.modules),
        ranks=ranks,
        trainable_params=lora_params(ranks, shapes),
    )


def nearest_rank_percentile(values: Sequence[int], percent: float) -> int:
    """The nearest-rank percentile: the ⌈p/100·n⌉-th smallest value (1-based), for 0 < p ≤ 100.

    It is always one of the values (so a summary of allowed ranks is an allowed rank), and it is
    the smallest value v such that at least p% of the values are ≤ v. The median (p = 50) is
    therefore the lower median for an even count: [1, 2, 4, 8] → 2.
    """
    if not values:
        raise ValueError("no values to summarise")
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    ordered = sorted(values)
    index = math.ceil(round(percent / 100 * len(ordered), 9)) - 1
    return int(ordered[max(index, 0)])


def summarize_ranks(ranks: Sequence[int]) -> PolicySummary:
    """median, p90 (nearest-rank, see :func:`nearest_rank_percentile`) and max of module ranks."""
    return PolicySummary(
        median=nearest_rank_percentile(ranks, 50),
        p90=nearest_rank_percentile(ranks, 90),
        max=max(ranks),
    )
