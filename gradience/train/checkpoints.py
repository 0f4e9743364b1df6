"""Which Trainer checkpoint can be resumed: the last one that was written completely.

The Trainer writes a checkpoint folder piece by piece (adapter, optimizer, scheduler, RNG
state) and ``trainer_state.json`` last. A process killed in between leaves a folder that
``get_last_checkpoint`` would still pick, and resuming from it fails on every rerun. Here a
checkpoint counts only with a readable ``trainer_state.json``; newer incomplete ones are
removed (the run folder's lock guarantees that no one is still writing them).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def is_complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest complete ``checkpoint-N`` in ``folder`` (incomplete newer ones removed)."""
    found = [
        (int(match[1]), path)
        for path in folder.iterdir()
        if path.is_dir() and (match := _CHECKPOINT.match(path.name))
    ]
    for _, path in sorted(found, reverse=True):
        if is_complete(path):
            return str(path)
        shutil.rmtree(path)
    return None
