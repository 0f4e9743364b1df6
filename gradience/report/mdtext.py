"""Markdown building blocks the reports share: numbers, p-values, intervals, tables (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def num(x: float | None, fmt: str = ".4f") -> str:
    """``x`` formatted, or a dash when there is none (or it is not finite)."""
    return "—" if x is None or not math.isfinite(x) else format(x, fmt)


def p_value(x: float | None) -> str:
    """A p-value: scientific below 1e-4, else 4 decimals; a dash when there is none."""
    return "—" if x is None else (f"{x:.2e}" if x < 1e-4 else f"{x:.4f}")


def interval(ci: Sequence[float] | None) -> str:
    """A signed interval to 4 decimals; a dash when there is none."""
    return "—" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines, with a blank line after it."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]
