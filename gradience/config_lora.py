"""The ``lora`` and ``compression`` sections of the experiment configuration: the probe's
LoRA, the rank policy and the variants the mechanism test trains.

Split from :mod:`gradience.config` (which re-exports both sections) to keep each file
readable; like every section they reject unknown keys.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gradience.config_env import Section
from gradience.results import ALLOCATOR_VARIANTS

#: Names of the variants the mechanism test can train (see gradience.experiment).
VARIANT_NAMES = (
    "probe",
    "per_layer",
    "per_layer_shuffled",
    "per_layer_shuffled_within_type",
    "uniform_matched",
    "uniform_median",
    "uniform_p90",
    "per_layer_shuffled_k",
    "per_layer_reversed",
    "per_layer_truncated",
    "per_layer_truncated_crossseed",
    "probe_truncated_shuffled",
    "per_layer_crossfit",
    *ALLOCATOR_VARIANTS,
)

AlphaPolicy = Literal["constant_scale", "fixed_alpha", "rslora"]

_POLICY_RE = re.compile(r"^(energy@(0(\.\d+)?|1(\.0+)?)|erank|stable_rank|knee|oht)$")


def validate_policy_name(name: str) -> str:
    """Check a rank-policy name (``energy@0.90``, ``erank``, ``stable_rank``, ``knee``, ``oht``)."""
    if not _POLICY_RE.match(name):
        raise ValueError(
            f"unknown rank policy {name!r}; expected energy@TAU with TAU in (0, 1], "
            "erank, stable_rank, knee or oht"
        )
    if name.startswith("energy@") and float(name.split("@", 1)[1]) <= 0:
        raise ValueError(f"energy threshold in {name!r} must be in (0, 1]")
    return name


DEFAULT_PROBE_SCALE = 0.5


class LoraSection(Section):
    probe_r: int = Field(
        64, gt=0, description="Uniform rank of the probe adapter that gets audited."
    )
    lora_alpha: float | None = Field(
        None,
        gt=0,
        description="LoRA alpha of the probe (alpha_policy says what the other ranks get). "
        "Unset (null): the alpha that gives the probe the scale 0.5 under every alpha_policy, "
        "the seed's 32/64 at r = 64: 0.5*sqrt(probe_r) under 'rslora' (scale alpha/sqrt(r)), "
        "0.5*probe_r under 'constant_scale' and 'fixed_alpha' (scale alpha/r), so switching "
        "policy never changes the probe's step size by itself (a fixed default alpha of 32 would "
        "give an r = 64 probe scale 4 under rslora, 8x the seed's). Resolved when the config is "
        "validated: every consumer, the dumped config and the results see that number. An alpha "
        "set explicitly is used as given.",
    )
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        min_length=1,
        description="Module-name suffixes to adapt.",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train.")
    alpha_policy: AlphaPolicy = Field(
        "rslora",
        description="How alpha follows rank: 'rslora' (default) scales by alpha/sqrt(r_i), under "
        "which the size of the trained update depends least on rank (measured: "
        "experiments/README.md, 'Step size'); 'constant_scale' keeps alpha/r equal to the probe's "
        "in every module (the update then grows with rank under Adam); 'fixed_alpha' keeps alpha "
        "(scale = alpha/r_i; lower ranks then make larger updates).",
    )
    paired_init: bool = Field(
        True,
        description="Draw each module's LoRA A from its own generator seeded by (run seed, module "
        "name): probe_r rows drawn, the first r_i kept, so every variant of a seed starts from "
        "the probe's init wherever their ranks overlap. Off: PEFT's draws from the global stream.",
    )

    @model_validator(mode="after")
    def _default_alpha(self) -> LoraSection:
        # Idempotent: with validate_assignment the assignment below re-runs this validator once.
        if self.lora_alpha is None:
            root = self.probe_r**0.5 if self.alpha_policy == "rslora" else self.probe_r
            self.lora_alpha = DEFAULT_PROBE_SCALE * root
        return self


class CompressionConfig(Section):
    policy: str = Field(
        "energy@0.90", description="Rank policy that turns the probe's audit into per-module ranks."
    )
    allowed_ranks: list[int] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32, 64],
        min_length=1,
        description="Ranks a module may get; a policy's value is rounded UP to the next allowed rank.",
    )
    margin: float = Field(
        1.0, gt=0, description="Multiply each policy rank by this before rounding up."
    )
    variants: list[str] = Field(
        default_factory=lambda: [
            "probe",
            "per_layer",
            "per_layer_shuffled_within_type",
            "per_layer_shuffled",
        ],
        min_length=1,
        description="Variants to train, in order. 'probe' always runs first (the audit needs it). "
        "The placement decision needs 'per_layer_shuffled_within_type' (parameter-matched); "
        "'per_layer_shuffled' is the seed's rule, reported with its parameter ratio.",
    )
    budget: Literal["per_layer"] | float = Field(
        "per_layer",
        description="The parameter budget of the allocation tournament's alloc_* variants and "
        "of its within-type shuffles: 'per_layer' (the parameters of the audit's per_layer "
        "ranks, which the shuffles then move exactly) or a fraction in (0, 1] of the probe's "
        "(the shuffles then move alloc_energy's ranks at that budget).",
    )
    shuffle_k: int = Field(
        19,
        gt=0,
        description="Number of independent within-type shuffles for 'per_layer_shuffled_k'. The "
        "permutation p = (1 + #shuffles scoring >= per_layer) / (k + 1) can be no smaller than "
        "1/(k + 1): k = 19 is the fewest that can reach 0.05.",
    )
    probe_gate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Stop a seed right after its probe if the probe's exact match on 64 of its "
        "*training* items is below this (never judged on the eval items: that would select seeds "
        "on the outcome). 0 turns the gate off.",
    )

    @field_validator("policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        return validate_policy_name(value)

    @field_validator("allowed_ranks")
    @classmethod
    def _ranks(cls, value: list[int]) -> list[int]:
        if any(r <= 0 for r in value):
            raise ValueError("ranks must be positive integers")
        return sorted(set(value))

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: str | float) -> str | float:
        if isinstance(value, float) and not 0 < value <= 1:
            raise ValueError("a budget fraction must be in (0, 1] of the probe's parameters")
        return value

    @field_validator("variants")
    @classmethod
    def _variants(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in VARIANT_NAMES]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; known: {list(VARIANT_NAMES)}")
        if len(set(value)) != len(value):
            raise ValueError("a variant is listed twice")
        return value
