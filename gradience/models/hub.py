"""Load a model and tokenizer by Hugging Face hub id or local path, as the config says."""

from __future__ import annotations

import logging
from typing import Any

import torch

from gradience.config import ModelConfig
from gradience.errors import GradienceError

log = logging.getLogger(__name__)


def load_hub_model(
    model_cfg: ModelConfig, dtype: torch.dtype, device: torch.device
) -> tuple[Any, Any]:
    """(model, tokenizer) via ``from_pretrained``; network or auth problems become GradienceError."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common: dict[str, Any] = {
        "revision": model_cfg.revision,
        "trust_remote_code": model_cfg.trust_remote_code,
    }
    if model_cfg.trust_remote_code:
        log.warning(
            "model.trust_remote_code is on: %s may run its own Python code while loading",
            model_cfg.name,
        )
    if model_cfg.gguf_file is not None:
        common["gguf_file"] = model_cfg.gguf_file
    model_kwargs: dict[str, Any] = dict(common)
    if model_cfg.gguf_file is None and not model_cfg.allow_pickle:
        model_kwargs["use_safetensors"] = True  # a .bin is a pickle: never loaded by default
    # transformers 5 renamed torch_dtype to dtype; older releases only know torch_dtype.
    dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model_kwargs[dtype_key] = dtype
    if model_cfg.attn_implementation is not None:
        model_kwargs["attn_implementation"] = model_cfg.attn_implementation
    if model_cfg.device_map is not None:
        model_kwargs["device_map"] = model_cfg.device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_cfg.name, **common)
        model = AutoModelForCausalLM.from_pretrained(model_cfg.name, **model_kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise refusal(model_cfg, exc) or GradienceError(
            _load_failure_message(model_cfg.name, exc), field="model.name"
        ) from None
    if model_cfg.device_map is None:
        model.to(device)
    ensure_pad_token(tokenizer, model)
    return model, tokenizer


def ensure_pad_token(tokenizer: Any, model: Any) -> None:
    """Give the tokenizer a pad token when it has none (Mistral, Llama ship without one).

    Reusing EOS (or UNK) adds no embedding row, so the model stays the released one. It is
    safe because padding is masked by the attention mask and padded label positions are
    -100 by the collator, decided from positions, not token ids: the real EOS that ends each
    completion stays in the loss, so the model still learns to stop.
    """
    if tokenizer.pad_token is None:
        replacement = tokenizer.eos_token or tokenizer.unk_token
        if replacement is None:
            raise GradienceError(
                "the tokenizer has no pad, eos or unk token to pad batches with", field="model.name"
            )
        tokenizer.pad_token = replacement
    if (
        getattr(model, "generation_config", None) is not None
        and model.generation_config.pad_token_id is None
    ):
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def refusal(model_cfg: ModelConfig, exc: Exception) -> GradienceError | None:
    """The load failed because gradience refused to run code or unpickle: say which switch."""
    text = str(exc)
    if "trust_remote_code" in text and not model_cfg.trust_remote_code:
        return GradienceError(
            f"{model_cfg.name!r} ships its own Python code, which gradience runs only with "
            "model.trust_remote_code: true (set it only for a repository you trust)",
            field="model.trust_remote_code",
        )
    if "safetensors" in text and not model_cfg.allow_pickle and model_cfg.gguf_file is None:
        return GradienceError(
            f"{model_cfg.name!r} has no safetensors weights; pickle weights (.bin) can run code "
            "when loaded and are used only with model.allow_pickle: true (then through "
            "torch.load(weights_only=True)), or convert them to safetensors",
            field="model.allow_pickle",
        )
    return None


def _load_failure_message(name: str, exc: Exception) -> str:
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return (
        f"could not load model {name!r} ({reason}). Offline or without Hub access: download it "
        f"once (huggingface-cli download {name} --local-dir DIR) and set model.name to its local "
        "folder DIR, or set HF_HUB_OFFLINE=1 to use a copy already in the Hugging Face cache. If "
        "it is a hub id: check the spelling and model.revision, your network, and for gated "
        "models (e.g. Mistral) accept the licence and run `huggingface-cli login` (or set "
        "HF_TOKEN). If it is a local folder, check that it holds config.json and the weights. "
        "No download at all: model.name: embedded:tiny-mistral"
    )
