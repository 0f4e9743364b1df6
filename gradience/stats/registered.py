"""The analysis plan a run registers before its first seed trains, and its hash (pure).

The plan fixes what the verdict will be decided on before any data exist: the primary
contrasts, their thresholds, α, the power target, the d rule, the metric, the moved-share
minimum and, for a sequential run, the boundary and its seed range. The run folder keeps it
as ``analysis_plan.json``; every analysis and report quotes its hash, and an analysis whose
settings differ from the registered ones says so in its first line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


#: The variant pairs the verdict reads (A, B: the difference A - B).
EFFICACY = ("per_layer", "probe")
PLACEMENT_MATCHED = ("per_layer", "per_layer_shuffled_within_type")
MECHANISM = ("per_layer", "per_layer_shuffled")  # the seed's rule: capacity changes with it
HETEROGENEITY = ("per_layer", "uniform_matched")


@dataclass(frozen=True)
class PlannedContrast:
    """A primary contrast the config's variants make: its variants, role and threshold key."""

    a: str
    b: str
    role: str  # "efficacy" or "placement"
    threshold_key: str  # the hypothesis field holding its threshold

    @property
    def name(self) -> str:
        return f"{self.a}_vs_{self.b}"


def primary_contrasts(variants: Sequence[str]) -> list[PlannedContrast]:
    """The verdict's primary family for a run of ``variants`` (the probe always runs).

    Efficacy always; placement on the within-type shuffle when listed, else on the seed's
    shuffle (which stands in only if its parameter ratio turns out within 0.95-1.05), else
    none (m = 1).
    """
    family = [PlannedContrast(*EFFICACY, "efficacy", "compression_threshold")]
    for pair in (PLACEMENT_MATCHED, MECHANISM):
        if pair[1] in variants:
            family.append(PlannedContrast(*pair, "placement", "mechanism_threshold"))
            break
    return family


def _planned_names(variants: Sequence[str]) -> list[str]:
    return [
        c.name + (" (stands in only within 0.95-1.05)" if (c.a, c.b) == MECHANISM else "")
        for c in primary_contrasts(variants)
    ]


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
        "primary_contrasts": _planned_names(variants),
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
