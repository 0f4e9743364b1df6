"""``gradience check``'s result: does each server apply the update PEFT trained, module by module?

Written by :func:`gradience.serving.check_serving` (``gradience check --json`` prints it);
rendered by :mod:`gradience.serving.table`. The reference is PEFT itself: each module's
scaling s = α/r (α/√r with rsLoRA) with r and α from ``rank_pattern``/``alpha_pattern`` by
PEFT's matching rule. Kept apart from :mod:`gradience.results` so each file stays readable.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gradience.results_base import _Result, _Versioned

ServerName = Literal["peft", "vllm", "sglang", "lorax"]
#: exact: served ΔW = PEFT's; mis-scaled: same B·A, another scaling; dropped: not applied at
#: all (served ΔW = 0); refused: the server does not load the adapter; unconfirmed: the
#: server's rule for this case could not be established from its source.
ModuleStatus = Literal["exact", "mis-scaled", "dropped", "refused", "unconfirmed"]


class ModuleLayoutCheck(_Result):
    """One module's stored tensors against adapter_config.json."""

    name: str = Field(description="Module name relative to the base model.")
    type: str
    stored_rank: int = Field(description="Rank of the stored lora_A (its rows).")
    config_rank: int = Field(
        description="Rank the config gives it: rank_pattern by PEFT's rule, else r."
    )
    d_in: int
    d_out: int
    alpha: float = Field(
        description="α the config gives it: alpha_pattern by PEFT's rule, else lora_alpha."
    )
    peft_scaling: float = Field(
        description="PEFT's scaling: alpha/config_rank, alpha/sqrt(config_rank) with rsLoRA."
    )
    targeted: bool = Field(
        description="Whether target_modules selects it (PEFT ignores weights of other modules)."
    )
    issues: list[str] = Field(
        default_factory=list, description="Where tensors and config disagree."
    )


class ServedModule(_Result):
    """What one server does with one module."""

    name: str
    status: ModuleStatus
    served_scaling: float | None = Field(
        None,
        description="The scaling the server multiplies B·A by (null when refused/unconfirmed).",
    )
    scale_error: float | None = Field(
        None,
        description="Relative error of the served ΔW, "
        "||s_served·B·A - s_peft·B·A||/||s_peft·B·A|| = |s_served/s_peft - 1|; 1 when "
        "dropped; null when refused or unconfirmed.",
    )
    served_rank: int | None = Field(
        None,
        description="The rank slot the server holds the module in, after its own zero-padding "
        "(zero rows of A and columns of B add nothing: padding itself is exact).",
    )
    note: str | None = None


class ServerCheck(_Result):
    """One server's treatment of the whole adapter."""

    server: ServerName
    source: str = Field(
        description="The server code the rule is read from: repository, version, file, function."
    )
    rule: str = Field(description="The scaling rule, in one line.")
    served_exactly: bool = Field(description="Every module confirmed exact and nothing refused.")
    max_scale_error: float | None = Field(
        None, description="Largest scale_error over the modules (null when none could be computed)."
    )
    max_lora_rank: int | None = Field(
        None,
        description="The max_lora_rank setting the server needs for this adapter "
        "(null: no such setting).",
    )
    held_params: int | None = Field(
        None,
        description="LoRA parameters the server holds for this adapter after its padding "
        "(one adapter slot).",
    )
    problems: list[str] = Field(
        default_factory=list, description="Why the server refuses or mis-serves, in words."
    )
    modules: list[ServedModule] = Field(default_factory=list)


class ServingCheck(_Versioned):
    adapter: str = Field(description="The adapter folder checked.")
    r: int
    lora_alpha: float
    use_rslora: bool
    rank_pattern: dict[str, int] = Field(default_factory=dict)
    alpha_pattern: dict[str, float] = Field(default_factory=dict)
    config_matches: bool = Field(
        description="Every module's stored tensors match the config (ranks, targets, patterns)."
    )
    config_issues: list[str] = Field(
        default_factory=list,
        description="Adapter-level disagreements (e.g. a pattern key that matches nothing).",
    )
    modules: list[ModuleLayoutCheck]
    stored_params: int = Field(description="Σ stored_rank·(d_in + d_out): what PEFT holds.")
    max_rank: int = Field(
        description="The largest stored rank: the one rank a uniform export pads every module to."
    )
    padded_params: int = Field(
        description="max_rank·Σ(d_in + d_out): what one rank for every module holds."
    )
    params_before_compression: int | None = Field(
        None, description="From compress.json, when the adapter is a gradience compress output."
    )
    compressed_from: str | None = None
    servers: list[ServerCheck]
    served_exactly: bool = Field(
        description="The config matches the tensors and every checked server serves exactly."
    )
    fix: str | None = Field(
        None,
        description="The one command that writes an adapter the servers serve exactly (null when "
        "served exactly already, or when no command can fix it: a config that does not describe "
        "the weights, a LoRA variant).",
    )
    fix_not_enough_for: list[str] = Field(
        default_factory=list,
        description="Servers that would still mis-serve the fixed adapter (checked on its layout).",
    )
