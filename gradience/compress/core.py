"""``compress_adapter``: truncate every module of a PEFT LoRA adapter and write a PEFT adapter.

Reads top to bottom: check the source → pick each module's rank (a policy on its spectrum, or
given ranks) → truncate (:mod:`.truncate`) → measure the written factors' error → write. The
source is streamed one module at a time, like the audit; only the (smaller) output is held.

Scaling. A heterogeneous export keeps each module's scaling s (to its last bit, see
:func:`~gradience.compress.truncate.alpha_for_scaling`): its rank k goes into ``rank_pattern``
and α′ with α′/k = s (α′/√k with rsLoRA) into ``alpha_pattern``, one anchored key per module. A ``uniform`` export is for servers that apply one rank and one α/r to a whole
adapter (vLLM, TGI): every module is zero-padded to the largest kept rank R, s is multiplied
into lora_B (and into lora_B's bias, which PEFT scales too), and the config says r = α = R.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradience.audit.adapter import (
    CONFIG_NAME,
    SAVED_PREFIX,
    LoraModule,
    discover_modules,
    open_weights,
    read_adapter_config,
)
from gradience.audit.core import check_policies, one_blas_thread
from gradience.audit.names import module_type
from gradience.audit.tensors import TensorSource
from gradience.compress.checks import (
    allowed_ranks_for,
    check_ranks,
    refuse_unknown_lora_tensors,
    refuse_variants,
)
from gradience.compress.export import check_output_dir, storage_dtype, write_adapter_dir
from gradience.compress.truncate import (
    alpha_for_scaling,
    balanced_factors,
    core_svd,
    difference_norm,
    kept_energy,
    optimal_relative_error,
    padded_spectrum,
    peft_scaling,
)
from gradience.errors import GradienceError
from gradience.io import read_json
from gradience.ranks.suggest import suggest_module_rank
from gradience.results import CompressResult, ModuleCompression
from gradience.train.lora_build import pattern_key

_LORA_BIAS = re.compile(r"^(?P<module>.+)\.lora_B(?:\.[^.]+)?\.bias$")


@dataclass
class _Written:
    """One module's written factors (storage dtype) and its record, before uniform padding."""

    module: LoraModule
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    record: ModuleCompression


def truncate_adapter(
    adapter_dir: str | Path,
    ranks: Mapping[str, int],
    output_dir: str | Path,
    *,
    uniform: bool = False,
    allow_pickle: bool = False,
) -> CompressResult:
    """Truncate every module of ``adapter_dir`` to ``ranks[module]`` and write a PEFT adapter.

    ``ranks`` names every LoRA module of the adapter (names relative to the base model, as in
    ``rank_pattern`` and ``gradience audit``), each with a rank in 1..its r. Each module's
    update becomes its best rank-k approximation with its scaling kept; see
    :func:`compress_adapter` for the rest.
    """
    return compress_adapter(
        adapter_dir, output_dir, ranks=ranks, uniform=uniform, allow_pickle=allow_pickle
    )


def compress_adapter(
    adapter_dir: str | Path,
    output_dir: str | Path,
    *,
    policy: str = "energy@0.90",
    allowed_ranks: Sequence[int] | None = None,
    margin: float = 1.0,
    ranks: Mapping[str, int] | None = None,
    ranks_source: str | None = None,
    uniform: bool = False,
    allow_pickle: bool = False,
    progress: bool = False,
) -> CompressResult:
    """Compress a PEFT LoRA adapter by SVD truncation; write ``output_dir`` and return its record.

    Each module's rank is ``policy`` on its spectrum (× ``margin``, rounded up to
    ``allowed_ranks`` — default: powers of two up to the adapter's r — capped at its r, as
    ``gradience suggest`` does), or ``ranks[module]`` when ``ranks`` is given (``ranks_source``
    names its file in messages). ``output_dir`` gets adapter_config.json and
    adapter_model.safetensors (``PeftModel.from_pretrained`` loads them) and compress.json.
    Problems with the input raise GradienceError naming the file and field.
    """
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if not adapter_dir.is_dir():
        raise GradienceError("adapter directory not found", path=adapter_dir)
    config_path = adapter_dir / CONFIG_NAME
    config = read_adapter_config(config_path)
    raw_config: dict[str, Any] = read_json(config_path)  # type: ignore[assignment]
    refuse_variants(raw_config, config_path)
    check_output_dir(output_dir, adapter_dir)
    if ranks is None:
        policy = check_policies([policy])[0]
        if not margin > 0:
            raise GradienceError(f"must be positive, got {margin}", field="margin")

    source = open_weights(adapter_dir, allow_pickle)
    try:
        modules = discover_modules(source, config, config_path)
        refuse_unknown_lora_tensors(source)
        if ranks is not None:
            check_ranks(ranks, modules, ranks_source)
            allowed: list[int] = []
        else:
            allowed = allowed_ranks_for(allowed_ranks, modules)
        # One BLAS thread: QRs of d×r blocks gain nothing from more, and spin on busy cores.
        with one_blas_thread() or contextlib.nullcontext():
            written = [
                _compress_module(
                    source,
                    m,
                    ranks[m.name] if ranks is not None else (policy, allowed, margin),
                    uniform,
                    config.use_rslora,
                )
                for m in _maybe_progress(modules, progress)
            ]
        extra = _other_tensors(source, {m.name: m for m in modules}, uniform)
    finally:
        source.close()

    uniform_rank = max(w.record.rank for w in written) if uniform else None
    if uniform_rank is not None:
        for w in written:
            w.record = w.record.model_copy(
                update={
                    "stored_rank": uniform_rank,
                    "params_after": uniform_rank * (w.record.d_in + w.record.d_out),
                }
            )
    tensors = _output_tensors(written)
    tensors.update(extra)
    result = CompressResult(
        source=str(adapter_dir),
        output=str(output_dir),
        base_model=config.base_model,
        policy=None if ranks is not None else policy,
        ranks_source=ranks_source if ranks is not None else None,
        allowed_ranks=allowed,
        margin=margin if ranks is None else 1.0,
        uniform=uniform,
        uniform_rank=uniform_rank,
        params_before=sum(w.record.params_before for w in written),
        params_after=sum(w.record.params_after for w in written),
        modules=[w.record for w in written],
    )
    write_adapter_dir(
        output_dir, _output_config(raw_config, written, uniform_rank), tensors, result
    )
    return result


def _read_factors(source: TensorSource, module: LoraModule) -> tuple[np.ndarray, np.ndarray]:
    lora_a = source.read(module.a_key, order="C").reshape(module.r, module.d_in)
    lora_b = source.read(module.b_key, order="F").reshape((module.d_out, module.r), order="F")
    for key, array in ((module.a_key, lora_a), (module.b_key, lora_b)):
        if not np.isfinite(array).all():
            raise GradienceError(
                "tensor contains NaN or infinite values", path=source.path, field=key
            )
    return lora_a, lora_b


def _compress_module(
    source: TensorSource,
    module: LoraModule,
    rank_or_policy: int | tuple[str, list[int], float],
    uniform: bool,
    use_rslora: bool,
) -> _Written:
    lora_a, lora_b = _read_factors(source, module)
    core = core_svd(lora_a, lora_b)
    spectrum = padded_spectrum(core, module.r)
    if isinstance(rank_or_policy, int):
        rank = rank_or_policy
    else:
        policy, allowed, margin = rank_or_policy
        rank = suggest_module_rank(spectrum, module.r, policy, allowed, margin)
    new_b, new_a = balanced_factors(core, lora_a, lora_b, rank)
    if uniform:  # one scaling of 1 for the whole adapter: each module's s lives in its lora_B
        new_b *= module.scaling
        out_scaling = 1.0
    else:
        out_scaling = peft_scaling(
            alpha_for_scaling(module.scaling, rank, use_rslora), rank, use_rslora
        )
    infos = source.tensors()
    a_info, b_info = infos[module.a_key], infos[module.b_key]
    stored_a = torch.from_numpy(new_a).to(storage_dtype(a_info))
    stored_b = torch.from_numpy(new_b).to(storage_dtype(b_info))
    error = _relative_error(module, spectrum, lora_a, lora_b, stored_a, stored_b, out_scaling)
    record = ModuleCompression(
        name=module.name,
        type=module_type(module.name),
        r=module.r,
        rank=rank,
        stored_rank=rank,
        d_in=module.d_in,
        d_out=module.d_out,
        scaling=module.scaling,
        output_scaling=out_scaling,
        kept_energy=kept_energy(spectrum, rank),
        optimal_relative_error=optimal_relative_error(spectrum, rank),
        relative_error=error,
        params_before=module.r * (module.d_in + module.d_out),
        params_after=rank * (module.d_in + module.d_out),
    )
    return _Written(module, stored_a, stored_b, a_info.shape, b_info.shape, record)


def _relative_error(
    module: LoraModule,
    spectrum: np.ndarray,
    lora_a: np.ndarray,
    lora_b: np.ndarray,
    stored_a: torch.Tensor,
    stored_b: torch.Tensor,
    out_scaling: float,
) -> float:
    """‖s·B·A − s′·B′·A′‖_F / ‖s·B·A‖_F with B′, A′ as stored (after rounding to their dtype)."""
    norm = float(np.linalg.norm(spectrum))
    if norm == 0 or module.scaling == 0:
        return 0.0
    difference = difference_norm(
        lora_a,
        lora_b,
        stored_a.to(torch.float64).numpy(),
        stored_b.to(torch.float64).numpy(),
        out_scaling / module.scaling,
    )
    return difference / norm


def _output_tensors(written: list[_Written]) -> dict[str, torch.Tensor]:
    """The factors under their source keys and in their source layout (conv tails kept),
    zero-padded to each record's ``stored_rank`` (a uniform export's single rank)."""
    tensors = {}
    for w in written:
        lora_a, lora_b = w.lora_a, w.lora_b
        pad = w.record.stored_rank - w.record.rank
        if pad:
            lora_a = torch.cat([lora_a, lora_a.new_zeros(pad, lora_a.shape[1])])
            lora_b = torch.cat([lora_b, lora_b.new_zeros(lora_b.shape[0], pad)], dim=1)
        stored = lora_a.shape[0]
        tensors[w.module.a_key] = lora_a.reshape(stored, *w.a_shape[1:])
        tensors[w.module.b_key] = lora_b.reshape(lora_b.shape[0], stored, *w.b_shape[2:])
    return tensors


def _other_tensors(
    source: TensorSource, modules: Mapping[str, LoraModule], uniform: bool
) -> dict[str, torch.Tensor]:
    """Every tensor that is not a LoRA factor (modules_to_save, lora_B biases), unchanged, but
    a lora_B bias scaled by its module's s in a uniform export (PEFT scales it with B·A).
    Read as float64 and cast back: exact for every dtype the audit reads."""
    factor_keys = {key for m in modules.values() for key in (m.a_key, m.b_key)}
    out = {}
    for key, info in source.tensors().items():
        if key in factor_keys:
            continue
        value = torch.from_numpy(source.read(key))
        bias = _LORA_BIAS.match(key)
        module = modules.get(bias["module"].removeprefix(SAVED_PREFIX)) if bias else None
        if uniform and module is not None:
            value = value * module.scaling
        out[key] = value.to(storage_dtype(info))
    return out


def _output_config(
    raw: Mapping[str, Any], written: list[_Written], uniform_rank: int | None
) -> dict[str, Any]:
    """The source's adapter_config.json with the new ranks and alphas; everything else kept."""
    config = dict(raw)
    if uniform_rank is not None:
        config.update(
            r=uniform_rank,
            lora_alpha=uniform_rank,  # scaling α/r = 1 exactly: each module's s is in lora_B
            use_rslora=False,
            rank_pattern={},
            alpha_pattern={},
        )
        return config
    use_rslora = bool(raw.get("use_rslora", False))
    top = max(w.record.rank for w in written)
    # Every module has its own key; the global r/α only restate the source's default scaling.
    default_scaling = peft_scaling(
        float(raw.get("lora_alpha", raw["r"])), int(raw["r"]), use_rslora
    )
    config.update(
        r=top,
        lora_alpha=alpha_for_scaling(default_scaling, top, use_rslora),
        rank_pattern={pattern_key(w.module.name): w.record.rank for w in written},
        alpha_pattern={
            pattern_key(w.module.name): alpha_for_scaling(
                w.module.scaling, w.record.rank, use_rslora
            )
            for w in written
        },
    )
    return config


def _maybe_progress(modules: list[LoraModule], progress: bool) -> Any:
    if not progress:
        return modules
    from tqdm import tqdm

    return tqdm(modules, desc="compress", unit="module")
