"""``compress.json`` (gradience compress): part of the one schema of :mod:`gradience.results`,
which re-exports every model here.
"""

from __future__ import annotations

from pydantic import Field

from gradience.results_base import _Result, _Versioned

# ---------------------------------------------------------------- compress (gradience compress)


class ModuleCompression(_Result):
    name: str = Field(
        description="Module name relative to the base model, as rank_pattern matches it."
    )
    type: str
    r: int = Field(description="The module's rank in the source adapter.")
    rank: int = Field(
        description="Rank kept: the truncated update is the best rank-`rank` approximation."
    )
    stored_rank: int = Field(
        description="Rank of the written factors: `rank`, or the uniform rank they are zero-padded to."
    )
    d_in: int
    d_out: int
    scaling: float = Field(
        description="The module's LoRA scaling in the source adapter (alpha/r, or alpha/sqrt(r) with rsLoRA)."
    )
    output_scaling: float = Field(
        description="The scaling PEFT applies to the written module (1 in a uniform export, where it is folded into lora_B)."
    )
    kept_energy: float = Field(
        description="Share of ||B·A||_F^2 kept: sum of the first `rank` squared singular values over all."
    )
    optimal_relative_error: float = Field(
        description="Eckart–Young bound sqrt(1 - kept_energy): the least error any rank-`rank` update can have."
    )
    relative_error: float = Field(
        description="||scaling·ΔW - output_scaling·ΔW'||_F / ||scaling·ΔW||_F of the written factors (storage rounding included)."
    )
    params_before: int
    params_after: int


class CompressResult(_Versioned):
    source: str = Field(description="The adapter directory that was compressed.")
    output: str = Field(description="The PEFT adapter directory written.")
    base_model: str | None
    policy: str | None = Field(
        description="Rank policy, or null when the ranks were given (ranks_source)."
    )
    ranks_source: str | None = Field(
        None, description="Where given ranks came from (a rank pattern file), if any."
    )
    allowed_ranks: list[int] = Field(
        default_factory=list, description="Ranks a policy rank was rounded up to."
    )
    margin: float = 1.0
    uniform: bool = Field(
        description="One rank and one scaling for every module (zero-padded, scaling folded into lora_B)."
    )
    uniform_rank: int | None = None
    params_before: int
    params_after: int
    modules: list[ModuleCompression]
