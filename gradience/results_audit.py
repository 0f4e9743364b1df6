"""The audit's and suggest's result files (``audit.json``, ``ranks/<variant>.json``): part of the
one schema of :mod:`gradience.results`, which re-exports every model here.
"""

from __future__ import annotations

from pydantic import Field

from gradience.results_base import _Result, _Versioned

# ---------------------------------------------------------------- audit (gradience audit)


class AdapterInfo(_Result):
    path: str
    base_model: str | None
    r: int
    lora_alpha: float
    use_rslora: bool


class IntruderDimensions(_Result):
    """Intruder dimensions of one module (``gradience audit --base``; see
    :mod:`gradience.audit.intruder` for the definition, PEFT's): of the top_k left singular
    vectors of W0 + s·B·A (the base tensor as stored), those whose largest |cos| with every
    left singular vector of W0 is below epsilon."""

    count: int = Field(description="Number of intruder dimensions among the top_k.")
    index: list[int] = Field(description="Their positions among the top_k (0 = largest).")
    singular_values: list[float] = Field(description="Their singular values in W0 + s·B·A.")
    max_similarity: list[float] = Field(
        description="Their largest |cos| with any singular vector of W0 (all below epsilon)."
    )
    top_singular_values: list[float] = Field(
        description="The top_k singular values of W0 + s·B·A, descending."
    )
    top_similarity: list[float] = Field(
        description="Largest |cos| with W0's singular vectors of each of the top_k vectors."
    )
    base_spectral_norm: float = Field(description="σ₁ of W0, to read the values against.")
    base_tensor: str = Field(description="The base checkpoint tensor W0.")
    transposed: bool = Field(
        False, description="W0 is stored d_in × d_out (Conv1D, embeddings): vectors of d_in."
    )


class IntruderSettings(_Result):
    base: str = Field(description="The --base MODEL as given.")
    base_path: str = Field(description="The folder its safetensors were read from.")
    top_k: int = Field(description="Singular vectors of W0 + s·B·A tested (PEFT: 10).")
    epsilon: float = Field(description="Intruder when the largest |cos| is below this (PEFT: 0.5).")
    modules_with_intruders: int
    total: int = Field(description="Intruder dimensions over all modules.")
    cached_modules: int = Field(0, description="Modules whose W0 SVD came from the cache.")
    cache_dir: str | None = None


class ModuleAudit(_Result):
    name: str = Field(
        description="Module name relative to the base model, as rank_pattern matches it."
    )
    type: str = Field(description="Last name component: q_proj, ..., c_attn.")
    layer: int | None = Field(description="Transformer block index, or null if the name has none.")
    r: int
    alpha: float
    scaling: float
    d_in: int
    d_out: int
    params: int = Field(description="LoRA parameters of this module: r * (d_in + d_out).")
    singular_values: list[float] = Field(description="Of B·A, unscaled, descending, length r.")
    frobenius_norm: float
    spectral_norm: float
    stable_rank: float
    effective_rank: float
    utilization: float
    energy_rank: dict[str, int]
    suggested_rank: dict[str, int]
    scaled_frobenius_norm: float | None = Field(None, description="Frobenius norm of scaling·B·A.")
    scaled_spectral_norm: float | None = Field(None, description="Spectral norm of scaling·B·A.")
    intruder_dimensions: IntruderDimensions | None = Field(
        None, description="With audit --base: this module's intruder dimensions (optional)."
    )


class PolicySummary(_Result):
    median: int
    p90: int
    max: int


class AuditSummary(_Result):
    n_modules: int
    total_params: int
    policies: dict[str, PolicySummary]


class AuditResult(_Versioned):
    adapter: AdapterInfo
    modules: list[ModuleAudit]
    summary: AuditSummary
    allowed_ranks: list[int] = Field(default_factory=list)
    warnings: list[str] = Field(
        default_factory=list,
        description="Things a user should know, e.g. ambiguous rank_pattern keys.",
    )
    intruders: IntruderSettings | None = Field(
        None, description="With audit --base: the intruder-dimension scan's settings (optional)."
    )


# ---------------------------------------------------------------- ranks (gradience suggest)


class RankPattern(_Versioned):
    policy: str = Field(description="Policy or variant rule that produced the ranks.")
    allowed_ranks: list[int]
    probe_r: int
    ranks: dict[str, int] = Field(description="Every module, in the audit's module order.")
    trainable_params: int
    budget: int | None = Field(
        None,
        description="The parameter budget an alloc_* pattern was fitted to (schema 3, optional).",
    )
    param_ratio: float | None = Field(
        None, description="trainable_params / budget for an alloc_* pattern (schema 3, optional)."
    )
