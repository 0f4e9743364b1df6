"""``check_serving``: the adapter's config against its tensors, then each server's treatment.

Reads top to bottom: read the folder's config and tensor shapes (:mod:`.layout`) → compare
them module by module (PEFT's rules are the reference) → apply each server's loading rule
(:mod:`.rules`, :mod:`.vllm_loader`, :mod:`.sglang_loader`, :mod:`.lorax_loader`) → count
what one rank for every module holds → name the command that fixes it.

The fix is ``gradience compress --uniform --policy energy@1.0``: energy@1.0 keeps every
direction but those carrying less than 1e-12 of a module's energy (rounded up to a power of
two, capped at the module's r, so the largest rank normally stays), each module's scaling is
folded into its lora_B and the config says r = lora_alpha = the one rank, so every one-α/r
server applies exactly 1. Before naming it, that export's layout (:func:`uniform_layout`, at
the adapter's largest rank) goes through the same server rules; a server that would still
mis-serve it is named.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from gradience.results_serving import ModuleLayoutCheck, ServedModule, ServerCheck, ServingCheck
from gradience.serving.layout import AdapterLayout, ModuleLayout, read_layout
from gradience.serving.lorax_loader import check_lorax
from gradience.serving.rules import check_peft, peft_scaling
from gradience.serving.sglang_loader import check_sglang
from gradience.serving.vllm_loader import check_vllm

SERVERS: tuple[str, ...] = ("peft", "vllm", "sglang", "lorax")
_CHECKS: dict[str, Callable[[AdapterLayout], ServerCheck]] = {
    "peft": check_peft,
    "vllm": check_vllm,
    "sglang": check_sglang,
    "lorax": check_lorax,
}


def check_serving(
    adapter_dir: str | Path,
    servers: Sequence[str] = SERVERS,
    *,
    vllm_version: tuple[int, ...] | None = None,
    allow_pickle: bool = False,
) -> ServingCheck:
    """Check ``adapter_dir`` for ``servers``; GradienceError on bad input (exit 2 in the CLI).

    ``vllm_version`` picks vLLM's rule (None: releases up to 0.31.0, which ignore the
    patterns; see :mod:`.vllm_loader`).
    """
    unknown = [s for s in servers if s not in _CHECKS]
    if unknown:
        raise ValueError(f"unknown servers {unknown}; known: {list(SERVERS)}")
    checks_by_name = {**_CHECKS, "vllm": lambda layout: check_vllm(layout, vllm_version)}
    layout = read_layout(adapter_dir, allow_pickle)
    modules = [_module_check(layout, m) for m in layout.modules]
    config_issues = [
        f"{field} key {key!r} matches no module of the weights"
        for field, keys in layout.unmatched_keys.items()
        for key in keys
    ]
    checks = [_variant_guard(layout, checks_by_name[s](layout)) for s in dict.fromkeys(servers)]
    config_matches = not config_issues and not any(m.issues for m in modules)
    served_exactly = config_matches and all(c.served_exactly for c in checks)
    widths = sum(m.width for m in layout.modules)
    max_rank = max(m.stored_rank for m in layout.modules)
    record = layout.compress_record or {}
    before = record.get("params_before")
    return ServingCheck(
        adapter=str(adapter_dir),
        r=layout.config.r,
        lora_alpha=layout.config.lora_alpha,
        use_rslora=layout.config.use_rslora,
        rank_pattern=layout.config.rank_pattern,
        alpha_pattern=layout.config.alpha_pattern,
        config_matches=config_matches,
        config_issues=config_issues,
        modules=modules,
        stored_params=sum(m.stored_rank * m.width for m in layout.modules),
        max_rank=max_rank,
        padded_params=max_rank * widths,
        params_before_compression=before if isinstance(before, int) else None,
        compressed_from=record.get("source") if isinstance(record.get("source"), str) else None,
        servers=checks,
        served_exactly=served_exactly,
        **({} if served_exactly else _fix_fields(layout, config_matches, servers, checks_by_name)),
    )


def _module_check(layout: AdapterLayout, m: ModuleLayout) -> ModuleLayoutCheck:
    issues = []
    if m.b_rank != m.stored_rank:
        issues.append(f"lora_A has rank {m.stored_rank} but lora_B has {m.b_rank} columns")
    if m.stored_rank != m.config_rank:
        issues.append(
            f"stored rank {m.stored_rank}, but r/rank_pattern gives {m.config_rank}: PEFT "
            "refuses to load it"
        )
    if not m.targeted:
        issues.append("not selected by target_modules: PEFT ignores its weights")
    return ModuleLayoutCheck(
        name=m.name,
        type=m.type,
        stored_rank=m.stored_rank,
        config_rank=m.config_rank,
        d_in=m.d_in,
        d_out=m.d_out,
        alpha=m.alpha,
        peft_scaling=peft_scaling(layout, m),
        targeted=m.targeted,
        issues=issues,
    )


def _variant_guard(layout: AdapterLayout, check: ServerCheck) -> ServerCheck:
    """A LoRA variant's update is not s·B·A alone: outside PEFT, nothing here is confirmed."""
    if not layout.variants or check.server == "peft" or not check.served_exactly:
        return check
    variants = ", ".join(layout.variants)
    why = f"{variants}: the update is not s·B·A alone (this check is for plain LoRA)"
    return check.model_copy(
        update={
            "served_exactly": False,
            "max_scale_error": None,
            "problems": [*check.problems, why],
            "modules": [
                ServedModule(name=m.name, status="unconfirmed", note=why) for m in check.modules
            ],
        }
    )


def uniform_layout(layout: AdapterLayout) -> AdapterLayout:
    """The layout ``compress --uniform`` writes at full rank: every module at the largest
    rank R, r = lora_alpha = R, no rsLoRA, no patterns (each scaling folded into lora_B, so
    PEFT's scaling of every written module is 1)."""
    top = max(m.stored_rank for m in layout.modules)
    config = dataclasses.replace(
        layout.config,
        r=top,
        lora_alpha=float(top),
        use_rslora=False,
        rank_pattern={},
        alpha_pattern={},
    )
    raw = {**layout.raw, "r": top, "lora_alpha": top, "use_rslora": False}
    raw.update(rank_pattern={}, alpha_pattern={})
    modules = [
        dataclasses.replace(m, stored_rank=top, b_rank=top, config_rank=top, alpha=float(top))
        for m in layout.modules
    ]
    return dataclasses.replace(layout, config=config, raw=raw, modules=modules, unmatched_keys={})


def _fix_fields(
    layout: AdapterLayout,
    config_matches: bool,
    servers: Sequence[str],
    checks: dict[str, Callable[[AdapterLayout], ServerCheck]],
) -> dict[str, object]:
    """``fix``: the one command that fixes the adapter; ``fix_not_enough_for``: the servers
    that would still mis-serve its output (None and [] when no command can fix it)."""
    if not config_matches or layout.variants:
        # compress reads the adapter as PEFT does: it refuses a config that does not describe
        # the weights, and LoRA variants (DoRA, ...) whose update is not s·B·A alone.
        return {"fix": None, "fix_not_enough_for": []}
    folder = str(layout.folder).rstrip("/")
    source, output = shlex.quote(folder), shlex.quote(f"{folder}-uniform")
    exported = uniform_layout(layout)
    return {
        "fix": f"gradience compress {source} --uniform --policy energy@1.0 --output {output}",
        "fix_not_enough_for": [
            s for s in dict.fromkeys(servers) if not checks[s](exported).served_exactly
        ],
    }
