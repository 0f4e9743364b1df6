"""The configured model's architecture without its weights: for counting, never for running.

``model_skeleton(model_cfg)`` builds the model from its configuration alone on PyTorch's
``meta`` device (shapes, no storage), so parameter counts and the shapes of the modules LoRA
adapts come from the very module tree ``from_pretrained`` would build, for any architecture,
in about a second even for a 7B model. Only the configuration is read: ``config.json`` of a
hub model (downloaded or from the cache, as ``from_pretrained`` would), of a GGUF file's
unpacked folder once a job has built it (:mod:`gradience.models.gguf_cache`), else the GGUF's
metadata, or the embedded model's recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradience.config import ModelConfig
from gradience.errors import GradienceError


def model_config(model_cfg: ModelConfig) -> Any:
    """The transformers ``PretrainedConfig`` of the configured base model (no weights read)."""
    if model_cfg.name.startswith("embedded:"):
        from gradience.models.embedded import DEFAULT_RECIPE, embedded_tokenizer, mistral_config

        return mistral_config(DEFAULT_RECIPE, embedded_tokenizer())
    from transformers import AutoConfig

    from gradience.models.hub import load_failure_message, require_gguf_package, resolve_model_name

    kwargs: dict[str, Any] = {
        "revision": model_cfg.revision,
        "trust_remote_code": model_cfg.trust_remote_code,
    }
    name = resolve_model_name(model_cfg.name)
    if model_cfg.gguf_file is not None:
        unpacked = _unpacked_gguf_dir(Path(name).expanduser() / model_cfg.gguf_file)
        if unpacked is not None:
            name = str(unpacked)  # its config.json: no GGUF parse (~4 s for SmolLM2)
        else:
            require_gguf_package()
            kwargs["gguf_file"] = model_cfg.gguf_file
    try:
        return AutoConfig.from_pretrained(name, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise GradienceError(
            load_failure_message(model_cfg.name, exc), field="model.name"
        ) from None


def _unpacked_gguf_dir(gguf_path: Path) -> Path | None:
    """The GGUF's verified unpacked folder when a job has already built it; never builds one."""
    from gradience.models.gguf_cache import ready_gguf_dir

    return ready_gguf_dir(gguf_path) if gguf_path.is_file() else None


def model_skeleton(model_cfg: ModelConfig) -> Any:
    """The base model's module tree on the ``meta`` device: real shapes, no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(model_cfg)
    if model_cfg.attn_implementation is not None:
        config._attn_implementation = model_cfg.attn_implementation
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(
            config, trust_remote_code=model_cfg.trust_remote_code
        )
