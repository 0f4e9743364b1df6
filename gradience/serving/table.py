"""``gradience check`` as text: per module, each server's error; per server, its verdict."""

from __future__ import annotations

from collections.abc import Sequence

from gradience.results_serving import ServedModule, ServerCheck, ServingCheck

_CELL = {"dropped": "dropped", "refused": "refused", "unconfirmed": "?"}


def _rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned first column, right-aligned others."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(
            str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *rows]
    ]


def _error(module: ServedModule) -> str:
    if module.status in _CELL:
        return _CELL[module.status]
    if module.status == "exact":
        return "exact"
    return f"{module.scale_error:.3g}"


def _verdict(server: ServerCheck) -> str:
    if server.served_exactly:
        return "exact"
    if server.modules and all(m.status == "refused" for m in server.modules):
        return "REFUSED"
    return "MIS-SERVED"


def _patterns(result: ServingCheck) -> str:
    parts = [
        f"{name}: {len(pattern)} key{'s' if len(pattern) != 1 else ''}"
        for name, pattern in (
            ("rank_pattern", result.rank_pattern),
            ("alpha_pattern", result.alpha_pattern),
        )
        if pattern
    ]
    return "  ".join(parts) or "no rank/alpha patterns"


def render_check(result: ServingCheck) -> str:
    """The text report: config vs tensors, per-module errors, per-server verdicts, the fix."""
    ranks = sorted({m.stored_rank for m in result.modules})
    span = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"
    lines = [
        f"gradience check {result.adapter}: r={result.r} lora_alpha={result.lora_alpha:g} "
        f"rsLoRA {'on' if result.use_rslora else 'off'}; {_patterns(result)}",
        f"config vs tensors: {'match' if result.config_matches else 'DO NOT MATCH'} "
        f"({len(result.modules)} modules, stored ranks {span})",
        *(f"  {issue}" for issue in result.config_issues),
        *(f"  {m.name}: {issue}" for m in result.modules for issue in m.issues),
        "",
    ]
    by_server = {s.server: {m.name: m for m in s.modules} for s in result.servers}
    header = ["module", "rank", "alpha", "PEFT s", *by_server]
    rows = [
        [m.name, str(m.stored_rank), f"{m.alpha:g}", f"{m.peft_scaling:.4g}"]
        + [_error(served[m.name]) for served in by_server.values()]
        for m in result.modules
    ]
    lines += _rows(header, rows)
    lines += [
        "each server's column: relative error of the served update, |s_served/s_peft - 1| "
        "(dropped: not applied; ?: rule unconfirmed)",
        "",
    ]
    header = ["server", "verdict", "max error", "max_lora_rank", "holds params"]
    rows = [
        [
            s.server,
            _verdict(s),
            "-" if s.max_scale_error is None else f"{s.max_scale_error:.3g}",
            "-" if s.max_lora_rank is None else str(s.max_lora_rank),
            "-" if s.held_params is None else f"{s.held_params:,}",
        ]
        for s in result.servers
    ]
    lines += _rows(header, rows)
    for s in result.servers:
        lines.append(f"  {s.server}: {s.rule}")
        lines += [f"    {p}" for p in s.problems]
    lines += ["", *_parameters(result)]
    if result.fix:
        lines.append(f"fix: {result.fix}")
        if result.fix_not_enough_for:
            lines.append(
                f"  (its output is still mis-served by {', '.join(result.fix_not_enough_for)}: "
                "see its problems above)"
            )
    elif not result.served_exactly:
        lines.append(
            "fix: none by gradience compress (it refuses a config that does not describe the "
            "weights, and LoRA variants such as DoRA)"
        )
    return "\n".join(lines)


def _parameters(result: ServingCheck) -> list[str]:
    growth = result.padded_params / result.stored_params - 1 if result.stored_params else 0.0
    held = [(s.server, s.held_params) for s in result.servers if s.held_params is not None]
    lines = [
        f"parameters: {result.stored_params:,} stored; one rank ({result.max_rank}) for every "
        f"module holds {result.padded_params:,} (+{growth:.1%})",
        "  held after each server's padding: "
        + ", ".join(f"{name} {params:,}" for name, params in held),
    ]
    before = result.params_before_compression
    if before:
        shares = ", ".join(f"{name} {params / before:.1%}" for name, params in held)
        lines.append(
            f"compressed from {result.compressed_from} ({before:,} parameters): stored "
            f"{result.stored_params / before:.1%} of it; after padding: {shares}"
        )
    return lines
