"""Module names: type, layer index and a human sort order (pure)."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"(\d+)")


def module_type(name: str) -> str:
    """The last name component: ``q_proj``, ``down_proj``, ``c_attn``, ..."""
    return name.rsplit(".", 1)[-1]


def layer_index(name: str) -> int | None:
    """The first purely numeric name component (``model.layers.3...`` → 3, ``transformer.h.0...``
    → 0), or None when the module is not inside a numbered block (e.g. ``lm_head``)."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def natural_sort_key(name: str) -> tuple:
    """Sort key that orders ``layers.2`` before ``layers.10`` (numbers compared as numbers)."""
    return tuple(
        (0, int(piece), "") if piece.isdigit() else (1, 0, piece)
        for piece in _NUMBER.split(name)
        if piece
    )
