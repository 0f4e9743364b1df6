"""Garbage collections that cost what a job allocated, not what the process imported.

With torch, transformers and PEFT imported a process holds millions of objects, and every
full ``gc.collect()`` walks them all: ~0.3 s each on a 2-core machine. A job makes two or
three (``gradience.models.release_memory``, accelerate's ``free_memory`` after training):
40% of a job of the tiny test config, and a second or more of every real job.

:func:`collections_skip_older_objects` (around every job, and around a local run's jobs)
moves the objects that live across jobs out of the collector's view with ``gc.freeze()``:
on entry, after one collection; and, inside a run, once more when its first job has ended,
by when that job has imported the training stack (the jobs import it lazily) and dropped
its own models. Only objects alive between jobs are frozen (the modules, a base model kept
for reuse, the run's own state), never a job's model; the jobs' reference cycles (a Trainer
and its model) are made later and are still collected. On exit ``gc.unfreeze()`` hands
every frozen object back, so one dropped meanwhile is collected then. Dropping a frozen
model inside (the reused base model, after a failed job) calls :func:`collect` with
``everything=True``, which looks at the frozen objects too.

Torch-free, so that the job functions can use it without importing torch when they are
merely imported (``gradience mechanism status`` reads a run without torch).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Nesting depth of collections_skip_older_objects, and whether a job inside has ended.
_SCOPE = {"depth": 0, "refrozen": False}


@contextlib.contextmanager
def collections_skip_older_objects() -> Iterator[None]:
    """Full collections inside walk only the objects made inside; nested uses are one scope."""
    if _SCOPE["depth"] == 0:
        gc.collect()
        gc.freeze()
        _SCOPE["refrozen"] = False
    _SCOPE["depth"] += 1
    try:
        yield
    finally:
        _SCOPE["depth"] -= 1
        if _SCOPE["depth"] == 0:
            gc.unfreeze()
        elif not _SCOPE["refrozen"]:  # the first job of a run has ended
            gc.collect()
            gc.freeze()
            _SCOPE["refrozen"] = True


def collect(everything: bool = False) -> None:
    """``gc.collect()``; ``everything``: the frozen objects too (they stay frozen if alive)."""
    if everything and _SCOPE["depth"]:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
    else:
        gc.collect()
