"""Garbage collections that cost what a job allocated, not what the process imported.

With torch, transformers and PEFT imported a process holds millions of objects, and every
full ``gc.collect()`` walks them all: ~0.3 s each on a 2-core machine. A job makes two or
three (``gradience.models.release_memory``, accelerate's ``free_memory`` after training):
40% of a job of the tiny test config, and a second or more of every real job.

:func:`collections_skip_older_objects` (around every job, and around a local run's jobs)
moves the objects that live across jobs out of the collector's view with ``gc.freeze()``:
once on entry, and once more at the first :func:`collect` inside, by when the first job has
imported the training stack (the jobs import it lazily). The jobs' own reference cycles (a
Trainer and its model) are made later, so they are still collected. On exit
``gc.unfreeze()`` hands every frozen object back: one dropped meanwhile (the caller's, or
whatever was alive at that first collection) is collected then, not kept.

Torch-free, so that the job functions can use it without importing torch when they are
merely imported (``gradience mechanism status`` reads a run without torch).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Nesting depth of collections_skip_older_objects, and whether its first collect() has run.
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


def collect() -> None:
    """``gc.collect()``; the first one inside a scope also freezes what survives it."""
    gc.collect()
    if _SCOPE["depth"] and not _SCOPE["refrozen"]:
        gc.freeze()
        _SCOPE["refrozen"] = True
