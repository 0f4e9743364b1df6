"""``audit_adapter``: stream an adapter module by module into a typed AuditResult."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gradience.audit.adapter import (
    CONFIG_NAME,
    LoraModule,
    discover_modules,
    open_weights,
    pattern_warnings,
    read_adapter_config,
)
from gradience.audit.names import layer_index, module_type
from gradience.audit.spectrum import lora_singular_values
from gradience.audit.tensors import TensorSource
from gradience.errors import GradienceError
from gradience.ranks.allowed import normalize_allowed_ranks, powers_of_two_up_to
from gradience.ranks.measures import ENERGY_LEVELS, effective_rank, energy_rank, stable_rank
from gradience.ranks.policies import DEFAULT_POLICIES, parse_policy
from gradience.ranks.suggest import suggest_module_rank, summarize_ranks
from gradience.results import AdapterInfo, AuditResult, AuditSummary, ModuleAudit


def module_audit(
    module: LoraModule,
    singular_values: np.ndarray,
    policies: Sequence[str],
    allowed_ranks: Sequence[int],
    margin: float,
) -> ModuleAudit:
    """Metrics and suggested ranks of one module from its (unscaled, descending) spectrum."""
    sv = np.asarray(singular_values, dtype=np.float64)
    frobenius = float(np.sqrt(np.dot(sv, sv)))
    spectral = float(sv[0]) if sv.size else 0.0
    stable = stable_rank(sv)
    return ModuleAudit(
        name=module.name,
        type=module_type(module.name),
        layer=layer_index(module.name),
        r=module.r,
        alpha=module.alpha,
        scaling=module.scaling,
        d_in=module.d_in,
        d_out=module.d_out,
        params=module.r * (module.d_in + module.d_out),
        singular_values=[float(v) for v in sv],
        frobenius_norm=frobenius,
        spectral_norm=spectral,
        stable_rank=stable,
        effective_rank=effective_rank(sv),
        utilization=stable / module.r,
        energy_rank={str(tau): energy_rank(sv, tau) for tau in ENERGY_LEVELS},
        suggested_rank={
            p: suggest_module_rank(sv, module.r, p, allowed_ranks, margin) for p in policies
        },
        scaled_frobenius_norm=frobenius * module.scaling,
        scaled_spectral_norm=spectral * module.scaling,
    )


def _finite(array: np.ndarray, source: TensorSource, key: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise GradienceError("tensor contains NaN or infinite values", path=source.path, field=key)
    return array


def module_spectrum(source: TensorSource, module: LoraModule) -> np.ndarray:
    """Read one module's factors (only this module is in memory) and return its spectrum."""
    lora_a = _finite(source.read(module.a_key, order="C"), source, module.a_key).reshape(
        module.r, module.d_in
    )
    lora_b = _finite(source.read(module.b_key, order="F"), source, module.b_key)
    lora_b = lora_b.reshape((module.d_out, module.r), order="F")
    return lora_singular_values(lora_a, lora_b, overwrite=True)


def audit_worker_count() -> int:
    """Modules factored at once: one per core, at most 4 (each holds one module's factors)."""
    return max(1, min(4, os.cpu_count() or 1))


def one_blas_thread() -> contextlib.AbstractContextManager | None:
    """A context limiting BLAS to one thread (threadpoolctl), or None if that is not installed.

    A QR of a d×r matrix with r ≤ 64 gains nothing from BLAS threads, and threaded OpenBLAS on
    a machine whose cores are busy spins badly: measured 30× slower on 2 shared cores.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=1, user_api="blas")


def _spectra(source: TensorSource, modules: list[LoraModule], progress: bool) -> list[np.ndarray]:
    """Spectra in module order. With one BLAS thread each, a few modules are read and factored
    at once on worker threads (LAPACK releases the GIL), so memory holds at most
    ``audit_worker_count()`` modules; without threadpoolctl, one module at a time. The first
    error stops the rest (queued modules are cancelled)."""
    limiter = one_blas_thread()
    pool = ThreadPoolExecutor(audit_worker_count() if limiter is not None else 1)
    try:
        with limiter or contextlib.nullcontext():
            results: Iterator[np.ndarray] = pool.map(
                lambda module: module_spectrum(source, module), modules
            )
            if progress:
                from tqdm import tqdm

                results = tqdm(results, total=len(modules), desc="audit", unit="module")
            return list(results)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def check_policies(policies: Sequence[str]) -> list[str]:
    """Validated policy names, in order and without repeats (GradienceError on a bad one)."""
    checked: list[str] = []
    for name in policies:
        try:
            parse_policy(name)
        except ValueError as exc:
            raise GradienceError(str(exc), field="policies") from None
        if name not in checked:
            checked.append(name)
    return checked


def audit_adapter(
    adapter_dir: str | Path,
    policies: Sequence[str] = DEFAULT_POLICIES,
    allowed_ranks: Sequence[int] | None = None,
    margin: float = 1.0,
    allow_pickle: bool = False,
    progress: bool = False,
) -> AuditResult:
    """Audit every LoRA module of a PEFT adapter directory, streaming its weights.

    Module names are relative to the base model (``model.layers.3.self_attn.q_proj``), the
    names PEFT's ``rank_pattern`` matches. Each module gets its spectrum, metrics and the
    suggested rank of every policy (``margin`` × policy rank, rounded up to ``allowed_ranks``
    — default: powers of two up to the adapter's largest r — and capped at its r). Only the
    few modules being factored are in memory (see ``audit_worker_count``). Problems with the
    directory, config or weights raise GradienceError naming the file and field.
    """
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise GradienceError("adapter directory not found", path=adapter_dir)
    policies = check_policies(policies)
    if allowed_ranks is not None:
        try:
            allowed_ranks = normalize_allowed_ranks(allowed_ranks)
        except ValueError as exc:
            raise GradienceError(str(exc), field="allowed_ranks") from None
    if not margin > 0:
        raise GradienceError(f"must be positive, got {margin}", field="margin")
    config = read_adapter_config(adapter_dir / CONFIG_NAME)
    source = open_weights(adapter_dir, allow_pickle)
    try:
        modules = discover_modules(source, config, adapter_dir / CONFIG_NAME)
        allowed = allowed_ranks or powers_of_two_up_to(max(m.r for m in modules))
        spectra = _spectra(source, modules, progress)
    finally:
        source.close()
    info = AdapterInfo(
        path=str(adapter_dir),
        base_model=config.base_model,
        r=config.r,
        lora_alpha=config.lora_alpha,
        use_rslora=config.use_rslora,
    )
    warnings = pattern_warnings(config, [m.name for m in modules])
    return assemble_audit(info, modules, spectra, policies, allowed, margin, warnings)


def assemble_audit(
    info: AdapterInfo,
    modules: Sequence[LoraModule],
    spectra: Sequence[np.ndarray],
    policies: Sequence[str],
    allowed_ranks: Sequence[int],
    margin: float,
    warnings: Sequence[str] = (),
) -> AuditResult:
    """The AuditResult of modules whose spectra are known (from a file, or a model in memory)."""
    audits = [
        module_audit(m, sv, policies, allowed_ranks, margin)
        for m, sv in zip(modules, spectra, strict=True)
    ]
    summary = AuditSummary(
        n_modules=len(audits),
        total_params=sum(m.params for m in audits),
        policies={p: summarize_ranks([m.suggested_rank[p] for m in audits]) for p in policies},
    )
    notes = list(warnings)
    zero = [m.name for m in audits if m.frobenius_norm == 0]
    if zero:
        notes.append(f"{len(zero)} module(s) have B·A = 0 (an untrained adapter?), e.g. {zero[0]}")
    return AuditResult(
        adapter=info,
        modules=audits,
        summary=summary,
        allowed_ranks=list(allowed_ranks),
        warnings=notes,
    )
