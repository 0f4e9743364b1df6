"""Rank policies, rounding to allowed ranks, rank patterns and parameter counts (pure, no I/O).

The control patterns of the mechanism test live in :mod:`gradience.ranks.controls`.
"""

from gradience.ranks.allowed import (
    DEFAULT_ALLOWED_RANKS,
    normalize_allowed_ranks,
    round_up_to_allowed,
)
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
    "DEFAULT_ALLOWED_RANKS",
    "DEFAULT_POLICIES",
    "Policy",
    "default_allowed_ranks",
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
