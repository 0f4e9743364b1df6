"""Rank policies, rounding to allowed ranks, rank patterns and parameter counts (pure, no I/O).

The control patterns of the mechanism test live in :mod:`gradience.ranks.controls`; ranks at
an exact parameter budget in :mod:`gradience.ranks.budget`, and the data-free allocators that
use it in :mod:`gradience.ranks.allocators`.
"""

from gradience.ranks.allowed import (
    DEFAULT_ALLOWED_RANKS,
    normalize_allowed_ranks,
    round_up_to_allowed,
)
from gradience.ranks.budget import BudgetAllocation, BudgetError, budget_from, fit_to_budget
from gradience.ranks.policies import DEFAULT_POLICIES, Policy, parse_policy, policy_rank
from gradience.ranks.suggest import (
    default_allowed_ranks,
    lora_params,
    nearest_rank_percentile,
    suggest_module_rank,
    suggest_ranks,
    summarize_ranks,
)

__all__ = [
    "BudgetAllocation",
    "BudgetError",
    "DEFAULT_ALLOWED_RANKS",
    "DEFAULT_POLICIES",
    "Policy",
    "budget_from",
    "default_allowed_ranks",
    "fit_to_budget",
    "lora_params",
    "nearest_rank_percentile",
    "normalize_allowed_ranks",
    "parse_policy",
    "policy_rank",
    "round_up_to_allowed",
    "suggest_module_rank",
    "suggest_ranks",
    "summarize_ranks",
]
