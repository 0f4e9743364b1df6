"""Real PEFT adapters on tiny models, for the audit and ranks tests (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

from gradience.audit.adapter import LoraModule
from gradience.audit.core import module_audit
from gradience.results import AdapterInfo, AuditResult, AuditSummary

MISTRAL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]


def tiny_mistral(layers: int = 2) -> MistralForCausalLM:
    torch.manual_seed(0)
    config = MistralConfig(
        hidden_size=32,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=64,
    )
    return MistralForCausalLM(config)


def tiny_gpt2(layers: int = 2) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=32,
        n_layer=layers,
        n_head=2,
        vocab_size=64,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def make_adapter(
    base: torch.nn.Module,
    out_dir: Path,
    *,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    safe: bool = True,
    planted: dict[str, int] | None = None,
    **lora_kwargs,
) -> PeftModel:
    """get_peft_model with random (non-zero) A and B, optionally planting a rank k in some
    modules' B (so B·A has rank k), then save_pretrained into ``out_dir``."""
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(**{"init_lora_weights": False, **lora_kwargs}))
    generator = torch.Generator().manual_seed(seed + 1)
    for name, module in lora_modules(model).items():
        if planted and name in planted:
            weight = module.lora_B["default"].weight
            k = planted[name]
            left = torch.randn(weight.shape[0], k, generator=generator)
            right = torch.randn(k, weight.shape[1], generator=generator)
            with torch.no_grad():
                weight.copy_(left @ right / weight.shape[1])
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(str(out_dir), safe_serialization=safe)
    return model


def reload_adapter(base: torch.nn.Module, adapter_dir: Path) -> PeftModel:
    """The adapter as PEFT itself loads it back (the saved config is what counts)."""
    return PeftModel.from_pretrained(base, str(adapter_dir))


def lora_modules(model: PeftModel) -> dict[str, LoraLayer]:
    """LoRA layers by name relative to the base model (what rank_pattern matches)."""
    return {
        name: m for name, m in model.base_model.model.named_modules() if isinstance(m, LoraLayer)
    }


def reference_spectra(model: PeftModel) -> dict[str, np.ndarray]:
    """Singular values of the SCALED update, by a dense float64 SVD of B·A·scaling."""
    spectra = {}
    for name, module in lora_modules(model).items():
        a = module.lora_A["default"].weight.detach().to(torch.float64)
        b = module.lora_B["default"].weight.detach().to(torch.float64)
        delta = (b @ a * module.scaling["default"]).numpy()
        spectra[name] = np.linalg.svd(delta, compute_uv=False)
    return spectra


def peft_delta_spectra(model: PeftModel) -> dict[str, np.ndarray]:
    """Singular values of PEFT's own get_delta_weight (scaled, transposed for fan_in_fan_out)."""
    return {
        name: np.linalg.svd(
            module.get_delta_weight("default").detach().double().numpy(), compute_uv=False
        )
        for name, module in lora_modules(model).items()
    }


def rewrite_weights(
    adapter_dir: Path, rename=None, drop: str | None = None, poison: str | None = None
) -> None:
    """Rewrite adapter_model.safetensors: rename keys, drop one key, or put a NaN in one."""
    path = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(path)
    out = {}
    for key, value in tensors.items():
        if drop is not None and drop in key:
            drop = None
            continue
        if poison is not None and poison in key:
            value = value.clone()
            value.view(-1)[0] = float("nan")
            poison = None
        out[rename(key) if rename else key] = value.contiguous()
    save_file(out, path)


def edit_config(adapter_dir: Path, **changes) -> None:
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def synthetic_audit(
    spectra: dict[str, tuple[list[float], int, int]], allowed=(1, 2, 4, 8)
) -> AuditResult:
    """An AuditResult built from given spectra {name: (singular values, d_in, d_out)}."""
    modules = []
    for name, (sv, d_in, d_out) in spectra.items():
        module = LoraModule(
            name,
            f"{name}.lora_A.weight",
            f"{name}.lora_B.weight",
            len(sv),
            d_in,
            d_out,
            16.0,
            16.0 / len(sv),
        )
        modules.append(module_audit(module, np.array(sv), ["energy@0.90"], list(allowed), 1.0))
    summary = AuditSummary(
        n_modules=len(modules), total_params=sum(m.params for m in modules), policies={}
    )
    info = AdapterInfo(path="synthetic", base_model=None, r=8, lora_alpha=16.0, use_rslora=False)
    return AuditResult(adapter=info, modules=modules, summary=summary, allowed_ranks=list(allowed))
