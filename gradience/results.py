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
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gradience.results_base import (  # noqa: F401 - SCHEMA_VERSION is read from here
    SCHEMA_VERSION,
    SchemaVersion,
    _Result,
    _Versioned,
)
from gradience.results_tournament import Tournament

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


# ---------------------------------------------------------------- analysis


class TestStat(_Result):
    statistic: float | None
    p: float | None
    reason: str | None = None


class McNemar(_Result):
    b: int = Field(description="Items A got right and B wrong.")
    c: int = Field(description="Items B got right and A wrong.")
    p: float


class PooledItemTest(_Result):
    method: str
    p: float | None
    ci95: tuple[float, float] | None
    reason: str | None = None
    estimate: float | None = Field(
        None, description="Observed mean item difference A - B (over seeds)."
    )
    resamples: int | None = Field(None, description="Bootstrap resamples.")
    rng_seed: int | None = Field(None, description="Bootstrap RNG seed (fixed: reruns agree).")


class ItemLevel(_Result):
    mcnemar: dict[str, McNemar]
    pooled: PooledItemTest


class Contrast(_Result):
    a: str
    b: str
    n_seeds: int
    mean_diff: float | None
    ci95: tuple[float, float] | None
    paired_t: TestStat
    welch_t: TestStat
    cohens_d: float | None
    cohens_dz: float | None
    holm_p: float | None
    item_level: ItemLevel
    seeds_for_80pct_power: int | None
    notes: list[str] = Field(default_factory=list)
    seeds: list[int | str] = Field(default_factory=list, description="The paired seeds used.")
    values_a: list[float] = Field(
        default_factory=list, description="A's per-seed scores, in `seeds` order."
    )
    values_b: list[float] = Field(
        default_factory=list, description="B's per-seed scores, in `seeds` order."
    )
    sd_diff: float | None = Field(None, description="Sample sd (ddof=1) of the paired differences.")
    threshold: float | None = Field(
        None, description="The hypothesis threshold this contrast is judged against."
    )
    power_at_threshold: float | None = Field(
        None,
        description="Power of the paired t at n_seeds for a true difference = threshold (observed sd).",
    )
    seeds_for_80pct_power_at_threshold: int | None = Field(
        None,
        description="Seeds for the target power at a true difference = threshold (observed sd).",
    )
    holm_family: bool = Field(
        False, description="Whether holm_p corrects over the primary contrasts."
    )
    param_ratio: float | None = Field(
        None, description="Mean trainable parameters of a / of b over the paired seeds."
    )
    role: str | None = Field(
        None, description="What the contrast stands for in the verdict, in words."
    )
    primary: bool | None = Field(
        None,
        description="In the primary family (Holm, the verdict's error rate). Files before schema 3 "
        "leave it null: read holm_family.",
    )
    outcome: Literal["pass", "fail", "undetermined"] | None = Field(
        None,
        description="The decision rule's outcome (gradience.stats.verdict) for a contrast the "
        "verdict judges; null for exploratory contrasts.",
    )
    decision_ci: tuple[float, float] | None = Field(
        None,
        description="The family-wise interval: two-sided at decision_confidence = 1 - 2*alpha/m "
        "(m primary contrasts); its upper end is the one-sided bound at alpha/m that FAIL reads. "
        "With m = 2 and alpha = 0.05 it is the 95% CI.",
    )
    decision_confidence: float | None = Field(None, description="Confidence of decision_ci.")
    decision_level: float | None = Field(
        None,
        description="One-sided level the power figures use: alpha/m in the primary family "
        "(the hardest Holm step), alpha for a fixed-sequence contrast.",
    )
    min_detectable_effect: float | None = Field(
        None,
        description="Smallest true difference the one-sided paired t detects with the target "
        "power at decision_level, from the observed sd of the paired differences and n_seeds.",
    )
    item_level_metric: str | None = Field(
        None, description="The metric item_level scores (null in older files: exact_match)."
    )
    item_level_exact_match: ItemLevel | None = Field(
        None,
        description="Item-level tests on exact_match as well, when the primary metric is strict_match.",
    )
    failures_as_loss: TestStat | None = Field(
        None,
        description="Sensitivity when a seed has one variant failed: the failed run scored 0 "
        "(a loss) instead of the seed being dropped; statistic = mean difference, p = one-sided "
        "paired t p. Null when no seed lost exactly one of the two variants.",
    )
    failures_as_loss_ci95: tuple[float, float] | None = Field(
        None, description="The 95% t interval of that sensitivity difference."
    )

    def is_primary(self) -> bool:
        """Whether the contrast is in the primary family (older files: its Holm membership)."""
        return self.holm_family if self.primary is None else self.primary


VerdictLabel = Literal[
    "real_mechanism", "heterogeneity_only", "compression_only", "no_benefit", "inconclusive"
]


class Verdict(_Result):
    label: VerdictLabel
    reasons: list[str]
    alpha_policy: str | None = Field(
        None, description="The alpha policy the verdict is conditional on."
    )


class Placement(_Result):
    """How much a placement contrast could even see in this run."""

    seed_rule_changed_fraction: float | None = Field(
        description="Fraction of modules whose rank the seed's shuffle changes (mean over seeds)."
    )
    within_type_changed_fraction: float | None = Field(
        description="The same for the within-type (parameter-matched) shuffle."
    )
    within_type_moved_fraction: float | None = Field(
        None,
        description="Share of per_layer's LoRA parameters the within-type shuffle puts in another "
        "module: sum |r_pl - r_sh|*(d_in + d_out) / (2 * per_layer's parameters), mean over seeds; "
        "null when the results carry no rank patterns or shapes.",
    )
    min_moved_fraction: float | None = Field(
        None,
        description="hypothesis.min_moved_fraction: below it a placement FAIL is undetermined.",
    )
    shuffle_permutation_significant: bool | None = Field(
        None, description="shuffle_permutation_p <= alpha (null without per_layer_shuffled_k)."
    )
    rank_agreement_across_seeds: float | None = Field(
        description="Mean Spearman correlation of per_layer's ranks between pairs of seeds."
    )
    shuffle_percentile: float | None = Field(
        description="per_layer's percentile among the k shuffles (mean accuracy over seeds); "
        "null without per_layer_shuffled_k."
    )
    shuffle_permutation_p: float | None = Field(
        None, description="(1 + shuffles scoring >= per_layer) / (k + 1); null without shuffles."
    )
    min_detectable_effect: float | None = Field(
        None,
        description="Smallest true placement difference the decision contrast detects with the "
        "target power, from its observed sd of paired differences and number of seeds.",
    )
    threshold: float | None = Field(None, description="hypothesis.mechanism_threshold.")
    decision_contrast: str | None = Field(
        None, description="The contrast placement was decided on."
    )
    notes: list[str] = Field(default_factory=list)


class RankDependence(_Result):
    """How strongly the size of a variant's update depends on its modules' ranks."""

    slope: float | None = Field(
        description="Slope of log ‖s·B·A‖_F on log r, within module type, pooled over seeds "
        "(0: update size independent of rank; 0.5: grows like √r)."
    )
    n_modules: int
    reason: str | None = None


class RegisteredPlan(_Versioned):
    """``analysis_plan.json``: the plan a run registers before its first seed trains
    (:mod:`gradience.stats.registered`)."""

    plan_hash: str
    plan: dict[str, object]


class MechanismAnalysis(_Versioned):
    contrasts: dict[str, Contrast]
    verdict: Verdict
    inputs: dict[str, object]
    placement: Placement | None = None
    update_norm_vs_rank: dict[str, RankDependence] = Field(default_factory=dict)
    plan_hash: str | None = Field(
        None,
        description="Hash of the analysis plan these settings give (gradience.stats.registered).",
    )
    registered_plan_hash: str | None = Field(
        None,
        description="Hash of the plan the run registered before its first seed (analysis_plan.json); "
        "null: none registered (a run before schema 3, or results analysed without their folder).",
    )
    sequential: dict[str, object] | None = Field(
        None, description="The sequential rule's summary (null: a fixed-sample analysis)."
    )
    looks: list[dict[str, object]] = Field(
        default_factory=list,
        description="Every sequential look: seeds so far, the boundary, each contrast's statistic, "
        "p-values and decision.",
    )
    tournament: Tournament | None = Field(
        None,
        description="Every allocator at one parameter budget against the within-type shuffles "
        "(schema 3, optional; null: no alloc_* variant ran).",
    )


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
