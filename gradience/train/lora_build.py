"""Build a PEFT LoRA model whose per-module ranks and scalings are exactly the intended ones.

PEFT matches ``rank_pattern``/``alpha_pattern`` keys with ``re.match(rf"(.*\\.)?({key})$", name)``
(first match wins) and only *warns* about keys that match nothing. A variant that silently
trains at the wrong rank would invalidate the whole mechanism test, so this module:

1. writes one key per module, ``^<re.escape(name)>$`` — the ``^`` can only match at the
   start of the name, so the key matches that one module and no module whose name merely
   ends the same way (``language_model.model.layers.0...``);
2. checks the pattern against the model's real module names *before* building (unknown or
   missing names are a GradienceError, not a warning);
3. after ``get_peft_model``, checks every adapted module's ``lora_A``/``lora_B`` shapes and
   ``scaling`` against the intent and fails loudly on any difference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from gradience.errors import GradienceError

if TYPE_CHECKING:
    import torch.nn as nn
    from peft import LoraConfig, PeftModel

    from gradience.config import LoraSection

ADAPTER_NAME = "default"
_SCALING_RTOL = 1e-6


def target_module_names(model: nn.Module, target_modules: Sequence[str]) -> list[str]:
    """Names (relative to the base model, in model order) that PEFT adapts for ``target_modules``.

    Same rule as PEFT for a list of targets: the name equals a target or ends with ``.target``.
    """
    targets = list(target_modules)
    return [
        name
        for name, _ in model.named_modules()
        if name and any(name == t or name.endswith("." + t) for t in targets)
    ]


def uniform_ranks(module_names: Sequence[str], r: int) -> dict[str, int]:
    """The same rank ``r`` for every module."""
    return {name: int(r) for name in module_names}


def pattern_key(module_name: str) -> str:
    """The rank_pattern/alpha_pattern key that matches exactly ``module_name``."""
    return "^" + re.escape(module_name) + "$"


def module_alphas(ranks: Mapping[str, int], lora: LoraSection) -> dict[str, float]:
    """LoRA alpha per module under ``lora.alpha_policy``.

    constant_scale: α_i = r_i·α/r_probe, so α_i/r_i = α/r_probe in every module (only rank varies);
    fixed_alpha and rslora: α_i = α (scale α/r_i, resp. α/√r_i).
    """
    if lora.alpha_policy == "constant_scale":
        return {name: r * lora.lora_alpha / lora.probe_r for name, r in ranks.items()}
    return {name: float(lora.lora_alpha) for name in ranks}


def expected_scalings(ranks: Mapping[str, int], lora: LoraSection) -> dict[str, float]:
    """The scaling PEFT must end up with in every module (α_i/r_i, or α/√r_i for rslora)."""
    alphas = module_alphas(ranks, lora)
    if lora.alpha_policy == "rslora":
        return {name: alphas[name] / math.sqrt(r) for name, r in ranks.items()}
    return {name: alphas[name] / r for name, r in ranks.items()}


def validate_ranks(ranks: Mapping[str, int], source: str | None = None) -> None:
    """Every rank a positive integer, at least one module."""
    if not ranks:
        raise GradienceError("the rank pattern names no module", path=source, field="ranks")
    for name, r in ranks.items():
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise GradienceError(
                f"module {name!r} has rank {r!r}; ranks must be positive integers",
                path=source,
                field="ranks",
            )


def check_ranks_match_model(
    model: nn.Module,
    ranks: Mapping[str, int],
    target_modules: Sequence[str],
    source: str | None = None,
) -> list[str]:
    """Raise unless ``ranks`` names exactly the modules ``target_modules`` adapts; return those names."""
    validate_ranks(ranks, source)
    targeted = target_module_names(model, target_modules)
    if not targeted:
        raise GradienceError(
            f"lora.target_modules {list(target_modules)} match no module of the model",
            field="lora.target_modules",
        )
    unknown = [name for name in ranks if name not in set(targeted)]
    if unknown:
        hint = ""
        if any(name.startswith("base_model.model.") for name in unknown):
            hint = " (drop the 'base_model.model.' prefix: names are relative to the base model)"
        raise GradienceError(
            f"{len(unknown)} module(s) in the rank pattern are not adapted modules of this model, "
            f"e.g. {unknown[:3]}{hint}; expected names like {targeted[0]!r}",
            path=source,
            field="ranks",
        )
    missing = [name for name in targeted if name not in ranks]
    if missing:
        raise GradienceError(
            f"the rank pattern gives no rank to {len(missing)} module(s) that lora.target_modules "
            f"adapts, e.g. {missing[:3]}; every adapted module needs an explicit rank",
            path=source,
            field="ranks",
        )
    return targeted


def build_lora_config(ranks: Mapping[str, int], lora: LoraSection) -> LoraConfig:
    """A LoraConfig with one anchored, escaped rank and alpha key per module and the alpha policy applied."""
    from peft import LoraConfig

    validate_ranks(ranks)
    alphas = module_alphas(ranks, lora)
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.probe_r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=list(lora.target_modules),
        bias=lora.bias,
        use_rslora=lora.alpha_policy == "rslora",
        rank_pattern={pattern_key(name): int(r) for name, r in ranks.items()},
        alpha_pattern={pattern_key(name): float(alphas[name]) for name in ranks},
    )


def lora_layers(peft_model: PeftModel) -> dict[str, nn.Module]:
    """The LoRA-wrapped layers of a PeftModel, keyed by name relative to the base model."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    return {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}


def adapter_mismatches(
    peft_model: PeftModel, ranks: Mapping[str, int], expected_scaling: Mapping[str, float]
) -> list[str]:
    """Every difference between the built adapter and the intent, one line each."""
    layers = lora_layers(peft_model)
    problems = [
        f"{name}: intended rank {ranks[name]} but the module has no LoRA"
        for name in ranks
        if name not in layers
    ]
    problems += [
        f"{name}: has LoRA but is not in the rank pattern" for name in layers if name not in ranks
    ]
    for name, layer in layers.items():
        if name not in ranks:
            continue
        r = ranks[name]
        a_shape = tuple(layer.lora_A[ADAPTER_NAME].weight.shape)
        b_shape = tuple(layer.lora_B[ADAPTER_NAME].weight.shape)
        d_in, d_out = layer.in_features, layer.out_features
        if a_shape != (r, d_in) or b_shape != (d_out, r):
            problems.append(
                f"{name}: lora_A {a_shape}, lora_B {b_shape}; intended ({r}, {d_in}), ({d_out}, {r})"
            )
        scaling = float(layer.scaling[ADAPTER_NAME])
        want = float(expected_scaling[name])
        if not math.isclose(scaling, want, rel_tol=_SCALING_RTOL):
            problems.append(f"{name}: scaling {scaling!r}, intended {want!r}")
    return problems


def verify_adapter(
    peft_model: PeftModel, ranks: Mapping[str, int], expected_scaling: Mapping[str, float]
) -> None:
    """Raise GradienceError unless every module's LoRA shapes and scaling are exactly the intended ones."""
    problems = adapter_mismatches(peft_model, ranks, expected_scaling)
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise GradienceError(
            f"the built LoRA adapter differs from the rank pattern in {len(problems)} place(s): {shown}{more}"
        )


def update_norms(peft_model: PeftModel) -> dict[str, float]:
    """‖s·B·A‖_F per module: the size of the update each module's LoRA has made to its weight.

    From the r×r Gram matrices (‖BA‖²_F = Σ (BᵀB) ⊙ (AAᵀ)), in float64; no d_out×d_in matrix.
    """
    import torch

    norms = {}
    for name, layer in lora_layers(peft_model).items():
        a = layer.lora_A[ADAPTER_NAME].weight.detach().to(device="cpu", dtype=torch.float64)
        b = layer.lora_B[ADAPTER_NAME].weight.detach().to(device="cpu", dtype=torch.float64)
        squared = float(((b.T @ b) * (a @ a.T)).sum().clamp_min(0.0))
        norms[name] = abs(float(layer.scaling[ADAPTER_NAME])) * math.sqrt(squared)
    return norms


def trainable_parameter_count(model: nn.Module) -> int:
    """Parameters that receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_peft_model(
    model: nn.Module, ranks: Mapping[str, int], lora: LoraSection, source: str | None = None
) -> tuple[PeftModel, int]:
    """Wrap ``model`` with the verified LoRA adapter; return it and its trainable parameter count.

    Seed the RNG *before* calling this: LoRA's A matrices are initialised here.
    """
    from peft import get_peft_model

    from gradience.models import quiet_peft_deprecations

    check_ranks_match_model(model, ranks, lora.target_modules, source)
    with quiet_peft_deprecations():
        peft_model = get_peft_model(model, build_lora_config(ranks, lora))
    verify_adapter(peft_model, ranks, expected_scalings(ranks, lora))
    return peft_model, trainable_parameter_count(peft_model)
