"""A compression as readable text: per module type, ranks kept, energy kept, error, parameters."""

from __future__ import annotations

import statistics

from gradience.audit.table import _format_rows
from gradience.results import CompressResult, ModuleCompression


def _ranks(modules: list[ModuleCompression]) -> str:
    ranks = sorted(m.rank for m in modules)
    return str(ranks[0]) if ranks[0] == ranks[-1] else f"{ranks[0]}-{ranks[-1]}"


def render_compress(result: CompressResult) -> str:
    """The text report of ``gradience compress``."""
    groups: dict[str, list[ModuleCompression]] = {}
    for module in result.modules:
        groups.setdefault(module.type, []).append(module)
    rows = [
        [
            kind,
            str(len(modules)),
            ",".join(str(r) for r in sorted({m.r for m in modules})),
            _ranks(modules),
            f"{statistics.median(m.kept_energy for m in modules):.3f}",
            f"{max(m.relative_error for m in modules):.3g}",
            f"{sum(m.params_after for m in modules):,}",
        ]
        for kind, modules in groups.items()
    ]
    header = ["type", "n", "r", "kept rank", "kept energy", "max rel. error", "params"]
    share = result.params_after / result.params_before if result.params_before else 0.0
    chosen = (
        f"policy {result.policy}, allowed ranks {','.join(map(str, result.allowed_ranks))}"
        + (f", margin {result.margin:g}" if result.margin != 1 else "")
        if result.policy
        else f"ranks from {result.ranks_source or 'the caller'}"
    )
    layout = (
        f"uniform r = lora_alpha = {result.uniform_rank} (zero-padded; each module's scaling "
        "folded into lora_B)"
        if result.uniform
        else "per-module rank_pattern/alpha_pattern (each module's scaling kept)"
    )
    lines = [
        f"compressed {result.source} -> {result.output}  ({chosen})",
        *_format_rows(header, rows),
        "",
        "kept energy: median share of ||B·A||_F^2 kept; rel. error: ||s·ΔW - s'·ΔW'||_F / "
        "||s·ΔW||_F of the written factors",
        f"{len(result.modules)} modules: {result.params_before:,} -> {result.params_after:,} "
        f"LoRA parameters ({share:.1%}); {layout}",
    ]
    return "\n".join(lines)
