"""``gradience audit --base``: every module's intruder dimensions, streamed from the base.

For each LoRA module of the adapter, in order: read its base tensor W0 from the base model's
safetensors (one tensor in memory at a time, hashed as it is read), take W0's thin SVD from
the cache or compute and cache it, read the module's A and B, and scan the top-k singular
vectors of W0 + s·B·A (:func:`gradience.audit.intruder.top_vectors`). The result is the
audit with ``intruder_dimensions`` filled in per module and ``intruders`` (the settings and
totals) at the top.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from gradience.audit.adapter import (
    CONFIG_NAME,
    LoraModule,
    discover_modules,
    open_weights,
    read_adapter_config,
)
from gradience.audit.base_weights import BaseWeights, SvdCache, base_key, resolve_base
from gradience.audit.intruder import EPSILON, TOP_K, BaseFactors, base_factors, top_vectors
from gradience.audit.tensors import TensorSource
from gradience.errors import GradienceError
from gradience.results import AuditResult, IntruderDimensions, IntruderSettings


def stored_transposed(
    shape: tuple[int, ...], d_in: int, d_out: int, transposed_hint: bool
) -> bool | None:
    """Whether the base stores the module's weight as d_in × d_out (GPT-2's Conv1D, an
    embedding) rather than d_out × d_in (``nn.Linear``; conv kernels flattened past the first
    axis); None when it is neither, i.e. not this adapter's base. A square weight fits both:
    ``transposed_hint`` (the config's fan_in_fan_out, or an embedding) decides, as in PEFT."""
    rows, cols = shape[0], math.prod(shape[1:])
    normal = (rows, cols) == (d_out, d_in)
    flipped = len(shape) == 2 and (rows, cols) == (d_in, d_out)
    if normal and flipped:
        return transposed_hint
    if normal or flipped:
        return flipped
    return None


def _raw_flags(config_path: Path) -> tuple[bool, bool]:
    """The adapter config's ``fan_in_fan_out`` and ``use_dora`` (read_adapter_config has
    checked that the file is a JSON object)."""
    raw = json.loads(config_path.read_text(encoding="utf-8"))
    return bool(raw.get("fan_in_fan_out", False)), bool(raw.get("use_dora", False))


def _factors(source: TensorSource, module: LoraModule) -> tuple[np.ndarray, np.ndarray]:
    """(B, A) of one module as d_out × r and r × d_in float64 arrays."""
    lora_a = source.read(module.a_key).reshape(module.r, module.d_in)
    lora_b = source.read(module.b_key).reshape(module.d_out, module.r)
    for key, array in ((module.a_key, lora_a), (module.b_key, lora_b)):
        if not np.isfinite(array).all():
            raise GradienceError(
                "tensor contains NaN or infinite values", path=source.path, field=key
            )
    return lora_b, lora_a


class _FactorSource:
    """W0's SVD from the cache, or computed and cached; counts hits, notes write failures."""

    def __init__(self, cache: SvdCache):
        self.cache, self.hits, self.warning = cache, 0, None
        self._threads = ThreadpoolController()

    def one_blas_thread(self) -> contextlib.AbstractContextManager:
        """BLAS limited to one thread: the scan's products are thin (m × r) and threaded
        OpenBLAS spins on busy cores (measured 4-10x slower on 2 shared cores); W0's full
        SVD, outside this context, keeps every thread."""
        return self._threads.limit(limits=1, user_api="blas")

    def get(self, w0: np.ndarray, digest: str) -> BaseFactors:
        entry = self.cache.load(digest, w0.shape)
        if entry is not None:
            self.hits += 1
            return BaseFactors(*entry)
        factors = base_factors(w0)
        try:
            self.cache.save(digest, factors.left, factors.values)
        except OSError as exc:
            self.warning = (
                f"could not write the SVD cache under {self.cache.root} ({exc.strerror or exc}); "
                "a second audit will recompute it (set GRADIENCE_CACHE to a writable folder)"
            )
        return factors


def module_intruders(
    weights: BaseWeights,
    key: str,
    module: LoraModule,
    lora: tuple[np.ndarray, np.ndarray],
    transposed_hint: bool,
    factor_source: _FactorSource,
    top_k: int,
    epsilon: float,
) -> IntruderDimensions:
    """One module: W0 from the base, its SVD (cached), the scan of W0 + s·B·A."""
    shape = weights.info(key).shape
    transposed = stored_transposed(shape, module.d_in, module.d_out, transposed_hint)
    if transposed is None:
        raise GradienceError(
            f"base tensor {key} has shape {list(shape)}, but module {module.name} maps "
            f"{module.d_in} -> {module.d_out}; is this the adapter's base model?",
            path=weights.files[key],
            field=key,
        )
    w0, digest = weights.read(key)
    w0 = w0.reshape(shape[0], -1)
    if not np.isfinite(w0).all():
        raise GradienceError(
            "tensor contains NaN or infinite values", path=weights.files[key], field=key
        )
    factors = factor_source.get(w0, digest)
    lora_b, lora_a = lora
    b, a = (lora_a.T, lora_b.T) if transposed else (lora_b, lora_a)
    with factor_source.one_blas_thread():
        top = top_vectors(w0, factors, b, a, module.scaling, top_k)
    index = top.intruders(epsilon)
    return IntruderDimensions(
        count=int(index.size),
        index=[int(i) for i in index],
        singular_values=[float(top.singular_values[i]) for i in index],
        max_similarity=[float(top.similarity[i]) for i in index],
        top_singular_values=[float(v) for v in top.singular_values],
        top_similarity=[float(v) for v in top.similarity],
        base_spectral_norm=float(factors.values[0]) if factors.values.size else 0.0,
        base_tensor=key,
        transposed=transposed,
    )


def _progress(items: list, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="intruders", unit="module")


def add_intruder_dimensions(
    audit: AuditResult,
    adapter_dir: str | Path,
    base: str,
    *,
    top_k: int = TOP_K,
    epsilon: float = EPSILON,
    allow_pickle: bool = False,
    cache: SvdCache | None = None,
    progress: bool = False,
) -> AuditResult:
    """``audit`` (of ``adapter_dir``) with every module's intruder dimensions against ``base``.

    ``base`` is anything :func:`gradience.audit.base_weights.resolve_base` accepts. Modules
    whose base tensor is absent (e.g. an ``lm_head`` tied to the embeddings) are listed in a
    warning and left without ``intruder_dimensions``; a base holding none of them, or a tensor
    of the wrong shape, is a GradienceError. Memory holds one base tensor, its SVD and one
    module's factors at a time.
    """
    if top_k < 1:
        raise GradienceError(f"must be >= 1, got {top_k}", field="--intruder-top-k")
    if not 0 < epsilon <= 1:
        raise GradienceError(f"must be in (0, 1], got {epsilon}", field="--intruder-epsilon")
    adapter_dir = Path(adapter_dir)
    folder = resolve_base(base)
    config_path = adapter_dir / CONFIG_NAME
    config = read_adapter_config(config_path)
    fan_in_fan_out, use_dora = _raw_flags(config_path)
    factor_source = _FactorSource(cache or SvdCache())
    weights = BaseWeights(folder)
    source = open_weights(adapter_dir, allow_pickle)
    found: dict[str, IntruderDimensions] = {}
    try:
        modules = discover_modules(source, config, config_path)
        keys = {m.name: base_key(m.name, weights.files) for m in modules}
        if not any(keys.values()):
            raise GradienceError(
                f"no base tensor for any adapter module (looked for e.g. {modules[0].name}.weight); "
                "is this the adapter's base model?",
                path=folder,
                field="--base",
            )
        for module in _progress([m for m in modules if keys[m.name]], progress):
            hint = fan_in_fan_out or "lora_embedding" in module.a_key
            found[module.name] = module_intruders(
                weights,
                keys[module.name],  # type: ignore[arg-type]
                module,
                _factors(source, module),
                hint,
                factor_source,
                top_k,
                epsilon,
            )
    finally:
        source.close()
        weights.close()
    notes = list(audit.warnings)
    missing = [name for name, key in keys.items() if key is None]
    if missing:
        notes.append(
            f"{len(missing)} module(s) have no tensor in the base, no intruder scan: "
            f"e.g. {missing[0]}"
        )
    if use_dora:
        notes.append(
            "use_dora: intruders are scanned in W0 + s·B·A without DoRA's magnitude vector, "
            "as PEFT's reduce_intruder_dimension does"
        )
    if factor_source.warning:
        notes.append(factor_source.warning)
    modules_out = [
        m.model_copy(update={"intruder_dimensions": found.get(m.name)}) for m in audit.modules
    ]
    settings = IntruderSettings(
        base=base,
        base_path=str(folder),
        top_k=top_k,
        epsilon=epsilon,
        modules_with_intruders=sum(1 for d in found.values() if d.count),
        total=sum(d.count for d in found.values()),
        cached_modules=factor_source.hits,
        cache_dir=str(factor_source.cache.root),
    )
    return audit.model_copy(
        update={"modules": modules_out, "warnings": notes, "intruders": settings}
    )
