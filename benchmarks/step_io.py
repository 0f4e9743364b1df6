"""The contract between ``gpu_check.sh`` and its steps: one JSON file per step, always written.

A step (mfu.py, generation.py, gpu_check.py, vllm_parity.py, experiment_cost.py) keeps its
numbers in a :class:`StepOutput`, which rewrites the step's ``--json`` file (atomically) on
every :meth:`StepOutput.update`: whatever the step had measured when it stopped is on disk.
The file always has ``status`` (``running`` while it works, then ``ok``, ``failed``,
``timeout`` or ``skipped``) and ``reason`` (None when ``ok``).

* an exception in the step: ``failed``, the reason its type and message, exit code 1;
* SIGTERM (``timeout`` ending the step at its limit): ``timeout``, exit code 124, written
  from the signal handler, so a step cut short still leaves its partial numbers;
* a goal missed: the step says ``failed`` with the reason, exit code 1;
* ``skipped``: the step cannot run here (no CUDA, an optional package absent), exit code 0.

:func:`read_step` is how a later step reads an earlier one's file: None when it is missing
or unreadable, so a later step copes with what exists.
"""

from __future__ import annotations

import json
import os
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATUSES = ("ok", "failed", "timeout", "skipped")
TIMEOUT_EXIT = 124


class StepOutput:
    """A step's numbers, rewritten to ``path`` (when given) at every change."""

    def __init__(self, path: Path | None, step: str):
        self.path = path
        self.data: dict[str, Any] = {"step": step, "status": "running", "reason": None}
        self.write()

    def update(self, **numbers: Any) -> None:
        self.data.update(numbers)
        self.write()

    def finish(self, status: str, reason: str | None = None) -> int:
        """Record the final status; the exit code the step should return."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self.update(status=status, reason=reason)
        return 1 if status in ("failed", "timeout") else 0

    def write(self) -> None:
        if self.path is None:
            return
        staging = self.path.with_name(self.path.name + ".partial")
        staging.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(staging, self.path)


def read_step(path: Path | str | None) -> dict[str, Any] | None:
    """An earlier step's JSON, or None when it is missing or unreadable."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_step(out: StepOutput, body: Callable[[StepOutput], tuple[str, str | None]]) -> int:
    """Run ``body(out)`` (which returns (status, reason)) so that ``out`` is always finished.

    SIGTERM marks the step ``timeout`` and exits at once with code 124; an exception marks it
    ``failed`` (traceback on stderr). Returns the exit code.
    """

    def on_term(signum: int, frame: Any) -> None:
        out.finish("timeout", "terminated at its time limit (SIGTERM)")
        print(f"{out.data['step']}: timeout (SIGTERM); partial numbers written", flush=True)
        os._exit(TIMEOUT_EXIT)

    signal.signal(signal.SIGTERM, on_term)
    try:
        status, reason = body(out)
    except Exception as error:  # noqa: BLE001 - any failure is recorded, then reported
        traceback.print_exc()
        reason = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        print(f"{out.data['step']}: FAILED: {reason}", flush=True)
        return out.finish("failed", reason)
    return out.finish(status, reason)
