"""TrainingArguments from the config: every ``train`` key honoured, mixed precision from ``env``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradience.config import ExperimentConfig

if TYPE_CHECKING:
    import torch
    from transformers import TrainingArguments


def training_arguments(
    cfg: ExperimentConfig,
    seed: int,
    checkpoint_dir: Path,
    *,
    quiet: bool,
    held_out: bool = True,
) -> TrainingArguments:
    """TrainingArguments honouring every field of ``cfg.train`` (and mixed precision from ``cfg.env``).

    ``quiet`` turns off the Trainer's own tqdm bar (the caller shows progress); ``held_out``
    says whether there is a held-out set for ``eval_steps``. ``train.optim`` goes through
    :func:`resolve_optimizer`. The Trainer's own token counting is off (it syncs the GPU
    every step): :class:`gradience.train.trainer.GradienceTrainer` counts the same tokens.
    """
    from transformers import TrainingArguments

    from gradience.models import resolve_device

    t = cfg.train
    device = resolve_device(cfg.env)
    bf16, fp16 = mixed_precision(cfg, device)
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=resolve_optimizer(t.optim, device),
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # LossGuard must see a NaN, not the running mean
        eval_strategy="steps" if t.eval_steps and held_out else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=1,  # resuming needs only the last one
        **_checkpointing_arguments(t.gradient_checkpointing),
        report_to=[name for name in t.report_to if name != "none"] or "none",
        dataloader_num_workers=t.dataloader_num_workers,
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        fp16=fp16,
        use_cpu=device.type == "cpu",
        remove_unused_columns=False,
        include_num_input_tokens_seen=False,  # GradienceTrainer counts, without a per-step sync
        disable_tqdm=quiet,
        save_only_model=False,
    )


#: Optimizers run with PyTorch's fused kernel on CUDA: the same update rule in one kernel
#: launch for all parameters (transformers' own default since torch 2.8).
FUSED_ON_CUDA = {"adamw_torch": "adamw_torch_fused"}


def resolve_optimizer(name: str, device: torch.device) -> str:
    """The transformers optimizer name to train with: ``adamw_torch`` is fused AdamW on CUDA.

    Fused and unfused AdamW apply the same update (they differ in float rounding only:
    ``tests/test_train_fast_path.py``); fused does it in one kernel instead of a few per
    parameter group. On a CPU ``adamw_torch`` stays as it is, so CPU runs are unchanged.
    Resolved here, not in the config, so the configured name (and every config hash) stays
    what the user wrote; a name written explicitly, ``adamw_torch_fused`` included, is used
    as given on every device.
    """
    if device.type == "cuda":
        return FUSED_ON_CUDA.get(name, name)
    return name


def _checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    """Activation checkpointing under the argument name this transformers version uses."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing"
    )
    # non-reentrant: PyTorch's recommended variant; it needs no input that requires grad
    return {prefix: enabled, f"{prefix}_kwargs": {"use_reentrant": False} if enabled else None}


def mixed_precision(cfg: ExperimentConfig, device: torch.device) -> tuple[bool, bool]:
    """(bf16, fp16) autocast for the Trainer: on CUDA only, and bf16 only where the GPU has it."""
    import torch

    from gradience.models import resolve_dtype

    if device.type != "cuda":
        return False, False
    dtype = resolve_dtype(cfg.env)
    return dtype == torch.bfloat16 and torch.cuda.is_bf16_supported(), dtype == torch.float16
