"""The typed, versioned results every stage writes and reads (one schema, end to end).

Each model maps 1:1 to a JSON file the pipeline writes (``audit.json``, ``ranks/<variant>.json``,
``train_result.json``, ``eval.json``, ``bench.json``, ``aggregated_results.json``,
``mechanism_analysis.json``, ``analysis_plan.json``, ``compress.json``). Stages exchange these models, never each
other's internals.
Extra keys are allowed on read so that newer writers stay readable, but ``schema_version``
must be one this version knows. Version 2 added optional fields only (paired init, update
norms, parameter ratios, the placement section, gated seeds); files of version 1 read as they
are, the new fields empty. Version 3 (the verdict that never says more than its intervals) adds
optional fields only: each contrast's ``outcome``, ``primary`` and family-wise ``decision_ci``,
the within-type shuffle's moved share of parameters; a version-1 or 2 analysis reads with
``primary`` taken from ``holm_family`` and the new fields empty.

The models live in this module and its parts, each re-exported here so every stage imports
them from one place: ``results_audit`` (audit, rank patterns), ``results_analysis`` (the
analysis and its registered plan), ``results_tournament``, ``results_compress``,
``results_serving`` (gradience check) and ``results_base`` (their common base).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gradience.results_analysis import (  # noqa: F401 - re-exported: one schema, one import
    Contrast,
    ItemLevel,
    McNemar,
    MechanismAnalysis,
    Placement,
    PooledItemTest,
    RankDependence,
    RegisteredPlan,
    TestStat,
    Verdict,
)
from gradience.results_audit import (  # noqa: F401 - re-exported
    AdapterInfo,
    AuditResult,
    AuditSummary,
    IntruderDimensions,
    IntruderSettings,
    ModuleAudit,
    PolicySummary,
    RankPattern,
)
from gradience.results_base import (  # noqa: F401 - SCHEMA_VERSION is read from here
    SCHEMA_VERSION,
    SchemaVersion,
    _Result,
    _Versioned,
)
from gradience.results_compress import CompressResult, ModuleCompression  # noqa: F401
from gradience.results_tournament import Tournament  # noqa: F401 - re-exported

# ---------------------------------------------------------------- train / eval


#: The truncation arm: variants made by cutting a seed's probe by SVD to a rank pattern, not
#: trained (0 steps, evaluation only). Named here, in the schema module that imports nothing of
#: gradience but its own parts, so that config validation, the experiment DAG and the
#: statistics read one list.
TRUNCATED_VARIANTS = (
    "per_layer_truncated",
    "per_layer_truncated_crossseed",
    "probe_truncated_shuffled",
)
#: Variants whose rank pattern comes from ANOTHER seed's audit (the next seed of
#: ``train.seeds``, cyclically): the truncations never read the spectrum of the probe they
#: cut, and ``per_layer_crossfit`` trains at the other seed's per_layer ranks. They need at
#: least two seeds, and each one's job depends on that other seed's audit.
CROSS_SEED_VARIANTS = (
    "per_layer_truncated_crossseed",
    "probe_truncated_shuffled",
    "per_layer_crossfit",
)
#: The allocation tournament's allocators (gradience.ranks.allocators, gradience.allocate):
#: each trains at ``compression.budget``'s parameters.
ALLOCATOR_VARIANTS = (
    "alloc_energy",
    "alloc_erank",
    "alloc_stable_rank",
    "alloc_knee",
    "alloc_oht",
    "alloc_global_energy",
    "alloc_depth",
    "alloc_eva",
    "alloc_adalora",
)
#: Allocators that need the base model and the training data: their own job allocates.
MODEL_ALLOCATED_VARIANTS = ("alloc_eva", "alloc_adalora")


class TrainResult(_Versioned):
    seed: int
    variant: str | None = None
    base_model: str
    ranks: dict[str, int]
    alphas: dict[str, float]
    alpha_policy: str
    trainable_params: int
    steps: int
    tokens: int = Field(description="Non-padding tokens seen in training.")
    wall_time_s: float
    loss_first: float | None = None
    loss_last: float | None = None
    loss_min: float | None = None
    loss_curve: list[tuple[int, float]] = Field(
        default_factory=list, description="(step, loss) pairs."
    )
    dropped_examples: int = 0
    versions: dict[str, str] = Field(default_factory=dict)
    config_hash: str | None = None
    paired_init: bool | None = Field(
        None,
        description="A drawn per (seed, module) and shared across variants; null: written before it existed.",
    )
    update_norms: dict[str, float] = Field(
        default_factory=dict, description="‖s·B·A‖_F per module after training (the update's size)."
    )
    padding_free: bool | None = Field(
        None,
        description="Batches flattened into one row (no padding); null: written before it existed.",
    )
    scalings: dict[str, float] | None = Field(
        None,
        description="The scaling s each module's saved adapter applies (PEFT's module.scaling "
        "after loading it: alpha/r, or alpha/sqrt(r) with rsLoRA). Written by the truncation "
        "arm, whose modules keep the probe's scaling at a smaller rank; null: not recorded (a "
        "trained variant's follows from its alphas and alpha_policy).",
    )


class EvalResult(_Versioned):
    exact_match: float = Field(
        description="Flexible extraction: '####' answer, else the last number."
    )
    strict_match: float = Field(description="Only answers given after '####'.")
    n_items: int
    item_ids: list[str]
    wall_time_s: float
    tokens_per_s: float
    generated_tokens: int = 0
    adapter: str | None = None
    eval_batch_size: int | None = Field(None, description="Items per generation batch used.")
    eval_batch_size_source: str | None = Field(
        None,
        description="Where that batch size came from: 'config' (pinned), 'free memory', "
        "'cpu default', or 'run' (decided by the seed's probe job for every variant).",
    )
    eval_batch_size_final: int | None = Field(
        None,
        description="Batch size in effect at the end: eval_batch_size halved once per "
        "out-of-memory retry (null: not recorded, e.g. the vLLM backend).",
    )
    oom_retries: int = Field(
        0, description="Generation batches that ran out of memory and were retried at half size."
    )
    decode_row_steps: int | None = Field(
        None,
        description="Rows x forward passes computed while decoding (finished rows leave the batch).",
    )
    decode_row_steps_unpruned: int | None = Field(
        None,
        description="Rows x forward passes had every batch run to its longest completion "
        "(what model.generate computes): the baseline for decode_row_steps.",
    )
    primary_metric: str = Field(
        "exact_match",
        description="The metric the analysis decides on (hypothesis.primary_metric): "
        "'exact_match' (gradience's numeric match, '####' answer else the last number) or "
        "'strict_match'. The lm-eval scores below are shown beside it, never instead of it.",
    )
    eval_backend: str | None = Field(
        None,
        description="What generated the completions: 'hf', 'vllm' or 'lm_eval' "
        "(lm-evaluation-harness's own HFLM and task loop); null in older files.",
    )
    num_fewshot: int | None = Field(
        None, description="Worked examples before each question (the lm_eval backend's)."
    )
    lmeval_strict_match: float | None = Field(
        None,
        description="Mean of lm-eval's gsm8k 'strict-match' rule on these completions "
        "(lm-eval's own filters and exact_match: string comparison); null when lm-eval is "
        "not installed (lmeval_note says why).",
    )
    lmeval_flexible_extract: float | None = Field(
        None,
        description="Mean of lm-eval's gsm8k 'flexible-extract' rule (the last number in "
        "the completion, compared as a string); null when lm-eval is not installed.",
    )
    lmeval_version: str | None = Field(
        None, description="The lm-eval version whose rules scored these completions."
    )
    lmeval_note: str | None = Field(
        None,
        description="Where the lm-eval rules came from (its gsm8k.yaml), or why they are null.",
    )


class Prediction(_Result):
    id: str
    prompt: str
    completion: str
    extracted: str | None
    gold: str
    correct: bool
    strict_correct: bool = False
    lmeval_strict_match: bool | None = Field(
        None,
        description="lm-eval's gsm8k strict-match on this completion: the number after the "
        "first '#### ', compared as a string (null: lm-eval not installed).",
    )
    lmeval_flexible_extract: bool | None = Field(
        None,
        description="lm-eval's gsm8k flexible-extract: the completion's last number, "
        "compared as a string (null: lm-eval not installed).",
    )
    lmeval_answers: dict[str, str] | None = Field(
        None,
        description="What each lm-eval filter extracted ('strict-match', 'flexible-extract'; "
        "'[invalid]' when its regex found nothing), before exact_match's normalisation.",
    )


# ---------------------------------------------------------------- mechanism test


JobStatus = Literal["done", "failed", "skipped", "pending", "gated"]


class SeedVariantSummary(_Result):
    status: JobStatus
    exact_match: float | None = None
    strict_match: float | None = None
    delta_vs_probe: float | None = None
    trainable_params: int | None = None
    rank_histogram: dict[str, int] = Field(default_factory=dict)
    ranks_file: str | None = None
    error: str | None = None


class SeedBench(_Versioned):
    seed: int
    config_hash: str
    status: Literal["done", "partial", "gated", "failed"]
    message: str | None = None
    variants: dict[str, SeedVariantSummary]


class ValueStats(_Result):
    mean: float | None
    std: float | None = Field(
        description="Sample standard deviation (ddof=1); null with one value."
    )
    values: list[float]


class VariantRun(_Result):
    exact_match: float
    strict_match: float
    trainable_params: int
    ranks_file: str
    item_correct: list[int] = Field(description="0/1 per eval item, in eval_item_ids order.")
    item_strict_correct: list[int] | None = Field(
        None, description="0/1 per eval item under strict_match (schema 3; null in older files)."
    )
    ranks: dict[str, int] | None = Field(None, description="The rank each module trained at.")
    update_norms: dict[str, float] | None = Field(
        None, description="‖s·B·A‖_F per module after training (from train_result.json)."
    )
    lmeval_strict_match: float | None = Field(
        None,
        description="lm-eval gsm8k strict-match on the same completions (eval.json; null "
        "without the [lmeval] extra or in older files). Beside the primary metric, never it.",
    )
    lmeval_flexible_extract: float | None = Field(
        None, description="lm-eval gsm8k flexible-extract on the same completions (as above)."
    )


class VariantAggregate(_Result):
    accuracy: ValueStats
    trainable_params: ValueStats
    runs: dict[str, VariantRun] = Field(description="Keyed by seed (as a string).")


class Failure(_Result):
    seed: int
    variant: str
    error: str


class BaseModelEval(_Result):
    """The base model without LoRA on the run's eval items (what fine-tuning starts from)."""

    exact_match: float
    strict_match: float
    n_items: int
    seed: int = Field(
        description="The seed whose probe job measured it (greedy decoding: any seed gives the same)."
    )


class AggregatedResults(_Versioned):
    primary_metric: str
    seeds: list[int]
    config_hash: str
    alpha_policy: str
    eval_item_ids: list[str]
    variants: dict[str, VariantAggregate]
    failures: list[Failure] = Field(default_factory=list)
    gated_seeds: list[int] = Field(
        default_factory=list,
        description="Seeds stopped by the probe gate (judged on training items).",
    )
    paired_init: bool | None = Field(
        None, description="lora.paired_init of the run (null: unknown)."
    )
    base_model: BaseModelEval | None = Field(
        None,
        description="The base model without LoRA on the same eval items (task.eval_base_model); "
        "null: not measured.",
    )
    module_costs: dict[str, int] | None = Field(
        None,
        description="LoRA parameters per rank (d_in + d_out) of every audited module (schema 3; "
        "null in older files): how much capacity a control moves.",
    )
