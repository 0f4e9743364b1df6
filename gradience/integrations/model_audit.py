"""Audit the LoRA modules of a model in memory, with the same math as ``gradience audit``.

The factors are read from the PEFT layers (copied to float64 on the CPU, one module at a time)
and go through the audit's own :func:`~gradience.audit.spectrum.lora_singular_values` and
:mod:`gradience.ranks.measures`; :func:`audit_model` assembles the same
:class:`~gradience.results.AuditResult` that ``gradience audit`` writes for a saved adapter.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gradience.audit.adapter import SAVED_PREFIX, LoraModule
from gradience.audit.core import assemble_audit, one_blas_thread
from gradience.audit.names import module_type, natural_sort_key
from gradience.audit.spectrum import lora_singular_values
from gradience.errors import GradienceError
from gradience.ranks.allowed import powers_of_two_up_to
from gradience.ranks.measures import effective_rank, energy_rank, stable_rank
from gradience.results import AdapterInfo, AuditResult


def _adapter_of(layer: Any, adapter_name: str | None) -> str | None:
    names = list(layer.lora_A) + list(layer.lora_embedding_A)
    if adapter_name is not None:
        return adapter_name if adapter_name in names else None
    if len(names) > 1:
        raise GradienceError(
            f"the model has several LoRA adapters {sorted(names)}; name the one to audit",
            field="adapter_name",
        )
    return names[0] if names else None


def _factors(layer: Any, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A as r×d_in, B as d_out×r) of one layer: linear, Conv1D, embedding or convolution."""
    if adapter in layer.lora_A:
        a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    else:
        a, b = layer.lora_embedding_A[adapter], layer.lora_embedding_B[adapter]
    return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)


def lora_modules(
    model: torch.nn.Module, adapter_name: str | None = None
) -> list[tuple[LoraModule, torch.Tensor, torch.Tensor]]:
    """Every LoRA module of ``model`` (a PeftModel or the model inside it) with its factors,
    named relative to the base model as ``rank_pattern`` and the audit name them."""
    from peft.tuners.lora import LoraLayer

    found = []
    for full_name, layer in model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        adapter = _adapter_of(layer, adapter_name)
        if adapter is None:
            continue
        name = full_name.rpartition(SAVED_PREFIX)[2] if SAVED_PREFIX in full_name else full_name
        a, b = _factors(layer, adapter)
        r, d_in, d_out = a.shape[0], a.shape[1], b.shape[0]
        alpha, scaling = float(layer.lora_alpha[adapter]), float(layer.scaling[adapter])
        module = LoraModule(
            name, f"{name}.lora_A", f"{name}.lora_B", r, d_in, d_out, alpha, scaling
        )
        found.append((module, a, b))
    if not found:
        raise GradienceError("the model has no LoRA modules to audit", field="model")
    return sorted(found, key=lambda item: natural_sort_key(item[0].name))  # the audit's order


def spectra(
    model: torch.nn.Module, adapter_name: str | None = None
) -> list[tuple[LoraModule, np.ndarray]]:
    """(module, singular values of its unscaled B·A) for every LoRA module, in audit order."""
    out = []
    # One BLAS thread: r-column QRs gain nothing from more, and training holds the cores.
    with torch.no_grad(), one_blas_thread() or contextlib.nullcontext():
        for module, a, b in lora_modules(model, adapter_name):
            # copy=True even when the weights already are float64 on the CPU: the QR below
            # overwrites its inputs, which must never be the model's own parameters.
            lora_a = a.detach().to(device="cpu", dtype=torch.float64, copy=True).numpy()
            lora_b = b.detach().to(device="cpu", dtype=torch.float64, copy=True).numpy()
            # Fortran order lets the QR work in place (Aᵀ of a C-ordered A already is)
            lora_b = np.asfortranarray(lora_b)
            out.append((module, lora_singular_values(lora_a, lora_b, overwrite=True)))
    return out


def type_metrics(
    module_spectra: Sequence[tuple[LoraModule, np.ndarray]],
    energy: float = 0.9,
    prefix: str = "rank",
) -> dict[str, float]:
    """Per module type, the median over its modules of stable rank, effective rank,
    utilisation (stable rank / r) and energy rank at ``energy``: flat keys
    ``{prefix}/{type}/{metric}`` that any Trainer reporter accepts (letters, digits, ``_./``)."""
    groups: dict[str, list[tuple[LoraModule, np.ndarray]]] = {}
    for module, sv in module_spectra:
        groups.setdefault(module_type(module.name), []).append((module, sv))
    metrics: dict[str, float] = {}
    for kind, members in groups.items():
        stable = [stable_rank(sv) for _, sv in members]
        values = {
            "stable_rank": stable,
            "effective_rank": [effective_rank(sv) for _, sv in members],
            "utilization": [s / m.r for s, (m, _) in zip(stable, members, strict=True)],
            f"energy_rank_{energy:g}": [float(energy_rank(sv, energy)) for _, sv in members],
        }
        for metric, series in values.items():
            metrics[f"{prefix}/{kind}/{metric}"] = float(statistics.median(series))
    return metrics


def audit_model(
    model: torch.nn.Module,
    *,
    policies: Sequence[str],
    allowed_ranks: Sequence[int] | None = None,
    margin: float = 1.0,
    adapter_name: str | None = None,
    path: str = "<in memory>",
) -> AuditResult:
    """The full audit (every metric and policy, as ``gradience audit``) of a model in memory."""
    pairs = spectra(model, adapter_name)
    modules = [m for m, _ in pairs]
    config = _peft_config(model, adapter_name)
    info = AdapterInfo(
        path=path,
        base_model=getattr(config, "base_model_name_or_path", None),
        r=int(getattr(config, "r", max(m.r for m in modules))),
        lora_alpha=float(getattr(config, "lora_alpha", modules[0].alpha)),
        use_rslora=bool(getattr(config, "use_rslora", False)),
    )
    allowed = (
        list(allowed_ranks) if allowed_ranks else powers_of_two_up_to(max(m.r for m in modules))
    )
    return assemble_audit(info, modules, [sv for _, sv in pairs], policies, allowed, margin)


def _peft_config(model: torch.nn.Module, adapter_name: str | None) -> Any:
    configs = getattr(model, "peft_config", None) or {}
    if adapter_name is None and len(configs) == 1:
        return next(iter(configs.values()))
    return configs.get(adapter_name or "default")
