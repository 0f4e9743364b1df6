"""The audit as readable text: per-type summary, suggested ranks per policy, extreme modules."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from gradience.results import AuditResult, ModuleAudit, RankPattern


def _format_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-align the first column, right-align the others."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


def modules_by_type(audit: AuditResult) -> dict[str, list[ModuleAudit]]:
    """Modules grouped by type, types in the order they first appear."""
    groups: dict[str, list[ModuleAudit]] = {}
    for module in audit.modules:
        groups.setdefault(module.type, []).append(module)
    return groups


def _type_table(audit: AuditResult) -> list[str]:
    rows = []
    for kind, modules in modules_by_type(audit).items():
        shapes = sorted({f"{m.d_in}->{m.d_out}" for m in modules})
        ranks = sorted({m.r for m in modules})
        rows.append(
            [
                kind,
                str(len(modules)),
                ",".join(map(str, ranks)),
                shapes[0] if len(shapes) == 1 else f"{len(shapes)} shapes",
                f"{statistics.median(m.stable_rank for m in modules):.2f}",
                f"{statistics.median(m.effective_rank for m in modules):.2f}",
                f"{statistics.median(m.utilization for m in modules):.3f}",
                f"{statistics.median(m.energy_rank['0.9'] for m in modules):g}",
                f"{statistics.median(m.frobenius_norm * m.scaling for m in modules):.3g}",
            ]
        )
    header = [
        "type",
        "n",
        "r",
        "d_in->d_out",
        "stable",
        "erank",
        "util",
        "E90 rank",
        "scaled |dW|_F",
    ]
    return _format_rows(header, rows)


def _policy_table(audit: AuditResult) -> list[str]:
    probe_params = audit.summary.total_params
    rows = []
    for policy, summary in audit.summary.policies.items():
        params = sum(m.suggested_rank[policy] * (m.d_in + m.d_out) for m in audit.modules)
        share = params / probe_params if probe_params else 0.0
        rows.append(
            [
                policy,
                str(summary.median),
                str(summary.p90),
                str(summary.max),
                f"{params:,}",
                f"{share:.1%}",
            ]
        )
    return _format_rows(["policy", "median", "p90", "max", "params", "of probe"], rows)


def _module_rows(modules: Sequence[ModuleAudit], policies: Sequence[str]) -> list[list[str]]:
    return [
        [
            m.name,
            str(m.r),
            f"{m.stable_rank:.2f}",
            f"{m.effective_rank:.2f}",
            f"{m.utilization:.3f}",
        ]
        + [str(m.suggested_rank[p]) for p in policies]
        for m in modules
    ]


def _intruder_lines(audit: AuditResult, top: int) -> list[str]:
    """Intruder dimensions per module type, and the modules with the most of them."""
    run = audit.intruders
    if run is None:
        return []
    rows = []
    for kind, modules in modules_by_type(audit).items():
        scans = [m.intruder_dimensions for m in modules if m.intruder_dimensions is not None]
        if not scans:
            continue
        found = [d for d in scans if d.count]
        strongest = max(
            (max(d.singular_values) / d.base_spectral_norm for d in found if d.base_spectral_norm),
            default=None,
        )
        rows.append(
            [
                kind,
                str(len(scans)),
                str(len(found)),
                str(sum(d.count for d in scans)),
                str(max(d.count for d in scans)),
                "-" if strongest is None else f"{strongest:.2f}",
            ]
        )
    header = ["type", "scanned", "with", "intruders", "max", "max σ/σ1(W0)"]
    lines = [
        "",
        f"Intruder dimensions against {run.base} (top-{run.top_k} singular vectors of "
        f"W0 + s·B·A with max |cos| < {run.epsilon:g} to every singular vector of W0):",
        *_format_rows(header, rows),
        f"{run.modules_with_intruders} of {sum(int(r[1]) for r in rows)} modules have intruders, {run.total} in all; W0 SVDs from cache: {run.cached_modules}",
    ]
    ranked = sorted(
        (m for m in audit.modules if m.intruder_dimensions and m.intruder_dimensions.count),
        key=lambda m: -m.intruder_dimensions.count,  # type: ignore[union-attr]
    )[:top]
    if ranked:
        lines += ["", f"Top {len(ranked)} modules by intruder dimensions:"]
        lines += _format_rows(
            ["module", "intruders", "at index", "first's σ", "its max |cos|"],
            [
                [
                    m.name,
                    str(d.count),
                    ",".join(str(i + 1) for i in d.index),
                    f"{d.singular_values[0]:.3g}",
                    f"{d.max_similarity[0]:.3f}",
                ]
                for m in ranked
                if (d := m.intruder_dimensions) is not None
            ],
        )
    return lines


def render_audit(audit: AuditResult, top: int = 5) -> str:
    """The text report of ``gradience audit``: medians per module type (over layers), the
    suggested ranks of every policy (median/p90/max, nearest-rank), and the ``top`` modules that
    use the most and the least of their rank (by utilization = stable rank / r)."""
    info = audit.adapter
    policies = list(audit.summary.policies)
    lines = [
        f"adapter {info.path}  base={info.base_model or '?'}  r={info.r}  alpha={info.lora_alpha:g}"
        f"  rslora={'yes' if info.use_rslora else 'no'}",
        f"{audit.summary.n_modules} modules, {audit.summary.total_params:,} LoRA parameters; "
        f"allowed ranks {','.join(map(str, audit.allowed_ranks))}",
        "",
        "Per module type (medians over modules; metrics of the unscaled B·A):",
        *_type_table(audit),
        "",
        "Suggested ranks (rounded up to the allowed ranks, capped at r):",
        *_policy_table(audit),
    ]
    for warning in getattr(audit, "warnings", None) or []:
        lines += ["", f"warning: {warning}"]
    if top > 0:
        ordered = sorted(audit.modules, key=lambda m: m.utilization)
        header = ["module", "r", "stable", "erank", "util", *policies]
        lines += ["", f"Top {top} modules using the most of their rank:"]
        lines += _format_rows(header, _module_rows(ordered[::-1][:top], policies))
        lines += ["", f"Top {top} modules using the least of their rank:"]
        lines += _format_rows(header, _module_rows(ordered[:top], policies))
    lines += _intruder_lines(audit, top)
    return "\n".join(lines)


def render_pattern(pattern: RankPattern, probe_params: int) -> str:
    """One paragraph on a rank pattern: rank histogram and parameters against the probe."""
    histogram: dict[int, int] = {}
    for rank in pattern.ranks.values():
        histogram[rank] = histogram.get(rank, 0) + 1
    counts = ", ".join(f"r={r}: {n}" for r, n in sorted(histogram.items()))
    share = pattern.trainable_params / probe_params if probe_params else 0.0
    return (
        f"policy {pattern.policy}: {len(pattern.ranks)} modules ({counts}); "
        f"{pattern.trainable_params:,} trainable LoRA parameters = {share:.1%} of the probe (r={pattern.probe_r})"
    )
