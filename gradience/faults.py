"""Fault injection: a test seam that kills the process hard at a named point.

The reliability tests must see what a crash, an out-of-memory kill or a pulled plug leaves
behind, at the worst moments. Set ``GRADIENCE_FAULT`` to ``POINT[:DETAIL][@N]`` and the
process ends with ``os._exit`` (no cleanup, no ``finally``, no flush: like SIGKILL) the
``N``-th time (default: the first) it reaches ``POINT`` (with ``DETAIL``, if given). Points:

=================  ===========================================================  ============
point              where                                                        detail
=================  ===========================================================  ============
``train_step``     mid optimizer step (gradients computed, weights not updated) --
``checkpoint``     right after a Trainer checkpoint is complete on disk          --
``eval_batch``     mid evaluation, after a generation batch                      --
``rename``         a file written to its temp copy, not yet renamed into place  file name
``aggregate``      mid aggregation: seed benches written, results file not yet  --
=================  ===========================================================  ============

``rename`` covers every result file (``gradience.io``) and the adapter folder (detail
``adapter``). Unset (the normal case), a fault point costs one environment lookup.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

ENV_VAR = "GRADIENCE_FAULT"
POINTS = ("train_step", "checkpoint", "eval_batch", "rename", "aggregate")
#: Exit status of an injected fault (distinct from gradience's 0/1/2 and a signal's 128+N).
FAULT_EXIT_CODE = 99

_hits: Counter[str] = Counter()


def parse_fault(spec: str) -> tuple[str, str | None, int]:
    """``POINT[:DETAIL][@N]`` as (point, detail or None, n); ValueError for a malformed spec."""
    target, _, count = spec.strip().partition("@")
    point, _, detail = target.partition(":")
    if point not in POINTS:
        raise ValueError(f"{ENV_VAR}={spec!r}: unknown point {point!r}; known: {list(POINTS)}")
    try:
        n = int(count) if count else 1
    except ValueError:
        raise ValueError(f"{ENV_VAR}={spec!r}: @N must be a positive integer") from None
    if n < 1:
        raise ValueError(f"{ENV_VAR}={spec!r}: @N must be a positive integer")
    return point, detail or None, n


def fault_point(point: str, detail: str | None = None) -> None:
    """End the process here if ``GRADIENCE_FAULT`` names this point (and detail) for this hit."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    wanted, wanted_detail, n = parse_fault(spec)
    if point != wanted or (wanted_detail is not None and detail != wanted_detail):
        return
    _hits[spec] += 1
    if _hits[spec] == n:
        where = point + (f":{detail}" if detail else "")
        sys.stderr.write(f"gradience: fault injected at {where} (hit {n}, {ENV_VAR})\n")
        sys.stderr.flush()
        os._exit(FAULT_EXIT_CODE)
