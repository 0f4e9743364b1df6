"""The analysis plan a run registers before its first seed trains, and its hash (pure).

The plan fixes what the verdict will be decided on before any data exist: the primary
contrasts, their thresholds, α, the power target, the d rule, the metric, the moved-share
minimum and, for a sequential run, the boundary and its seed range. The run folder keeps it
as ``analysis_plan.json``; every analysis and report quotes its hash, and an analysis whose
settings differ from the registered ones says so in its first line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gradience.config import HypothesisConfig, hash_data

#: The file the run folder keeps the registered plan in: {"schema_version", "plan_hash", "plan"}.
PLAN_FILE = "analysis_plan.json"

#: What the sequential rule is, in words (gradience.stats.sequential).
SEQUENTIAL_RULE = (
    "group-sequential: a look after every completed seed from min_seeds to max_seeds; each "
    "primary contrast at one-sided level alpha/m (Bonferroni over the family), Lan-DeMets "
    "O'Brien-Fleming-type alpha spending, levels calibrated on the paired t process; PASS and "
    "FAIL both error-controlled across looks; a decided contrast stays decided"
)


def primary_contrasts(variants: Sequence[str]) -> list[str]:
    """The primary family a run with these variants will be judged on."""
    family = ["per_layer_vs_probe"]
    if "per_layer_shuffled_within_type" in variants:
        family.append("per_layer_vs_per_layer_shuffled_within_type")
    elif "per_layer_shuffled" in variants:
        family.append("per_layer_vs_per_layer_shuffled (stands in only within 0.95-1.05)")
    return family


def analysis_plan(
    hypothesis: HypothesisConfig, variants: Sequence[str], n_seeds: int
) -> dict[str, Any]:
    """The plan as JSON-ready data (``n_seeds``: the configured seeds, the sequential cap)."""
    sequential = None
    if hypothesis.until_decided:
        sequential = {
            "rule": SEQUENTIAL_RULE,
            "min_seeds": hypothesis.min_seeds,
            "max_seeds": hypothesis.max_seeds or n_seeds,
        }
    return {
        "primary_contrasts": primary_contrasts(variants),
        "thresholds": {
            "compression": hypothesis.compression_threshold,
            "placement": hypothesis.mechanism_threshold,
        },
        "alpha": hypothesis.alpha,
        "power": hypothesis.power,
        "min_effect_size": hypothesis.min_effect_size,
        "primary_metric": hypothesis.primary_metric,
        "min_moved_fraction": hypothesis.min_moved_fraction,
        "decision": "PASS: Holm p < alpha over the family, estimate above the threshold (and "
        "Cohen's d for efficacy); FAIL: one-sided upper bound at alpha/m below the threshold"
        if sequential is None
        else "sequential (see sequential.rule)",
        "sequential": sequential,
    }


def plan_hash(plan: Mapping[str, Any]) -> str:
    return hash_data(dict(plan))


def plan_differences(registered: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ, as 'key: registered -> now' (nested keys dotted)."""
    out: list[str] = []
    for key in sorted(set(registered) | set(current)):
        old, new = registered.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out += [f"{key}.{d}" for d in plan_differences(old, new)]
        elif old != new:
            out.append(f"{key}: {old!r} -> {new!r}")
    return out
