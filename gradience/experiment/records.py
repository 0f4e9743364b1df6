"""Job records (``job.json``): what makes the run resumable.

Every job folder holds one ``job.json``: the hash of the job's inputs, its status, timings
and error. A job whose record says ``done`` with the same inputs hash (and whose outputs are
still there) is skipped on rerun; anything else runs again. A record left ``running`` by a
killed process is simply unfinished: the next run restarts the job, resuming training from
its last Trainer checkpoint when the config allows.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gradience.errors import GradienceError
from gradience.io import read_model, write_model
from gradience.results import SCHEMA_VERSION, SchemaVersion

JOB_FILE = "job.json"

RecordStatus = Literal["running", "done", "failed"]


class JobProgress(BaseModel):
    model_config = ConfigDict(extra="allow")

    phase: str = Field(description="'train' or 'eval'.")
    step: int | None = None
    max_steps: int | None = None
    loss: float | None = None


class JobRecord(BaseModel):
    """The state of one job, rewritten atomically at every change."""

    model_config = ConfigDict(extra="allow")

    schema_version: SchemaVersion = SCHEMA_VERSION
    job: str = Field(description="Job id: 'seed_42/probe', 'seed_42/audit', ...")
    kind: Literal["train_eval", "audit"]
    seed: int
    variant: str | None = None
    inputs_hash: str = Field(description="Hash of everything the job's outputs depend on.")
    status: RecordStatus
    attempts: int = Field(0, description="How many times the job has been started.")
    phases_done: list[str] = Field(
        default_factory=list,
        description="Finished phases of this attempt's inputs ('train', 'eval').",
    )
    started_at: str | None = None
    finished_at: str | None = None
    wall_time_s: float | None = Field(
        None, description="Wall time of the attempt that finished it."
    )
    error: str | None = None
    traceback: str | None = Field(None, description="Full traceback of the failure, for debugging.")
    progress: JobProgress | None = None
    output_digest: str | None = Field(
        None,
        description="sha256 of the job's main output (the adapter weights), for downstream hashes.",
    )
    worker: dict[str, str] | None = Field(
        None,
        description="Where the latest attempt ran: host, pid and CUDA_VISIBLE_DEVICES (which GPU).",
    )


def worker_identity() -> dict[str, str]:
    """The process running a job: on Ray, which worker and which GPU it was given."""
    return {
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_record(folder: Path) -> JobRecord | None:
    """The folder's record, or None if there is none or it cannot be read (= never finished)."""
    path = folder / JOB_FILE
    if not path.is_file():
        return None
    try:
        return read_model(path, JobRecord)
    except GradienceError:
        return None


def write_record(folder: Path, record: JobRecord) -> None:
    write_model(folder / JOB_FILE, record)


#: A train+eval job's main output; its sha256 is the record's ``output_digest``.
ADAPTER_WEIGHTS = Path("adapter") / "adapter_model.safetensors"
#: Left in place of ADAPTER_WEIGHTS by :func:`gradience.experiment.reuse.copy_without_weights`:
#: the removed file's sha256, so a copy of a finished job carried to another machine without
#: its weights (into git, say) still counts as finished there.
WEIGHTS_REMOVED = Path("adapter") / "weights_removed.json"


def weights_accounted_for(folder: Path, record: JobRecord) -> bool:
    """The job's adapter weights are on disk, or were removed on purpose after it finished
    (a marker naming the very digest its record holds). A file deleted by hand is neither."""
    if (folder / ADAPTER_WEIGHTS).is_file():
        return True
    marker = folder / WEIGHTS_REMOVED
    if record.output_digest is None or not marker.is_file():
        return False
    try:
        removed = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(removed, dict) and removed.get("sha256") == record.output_digest


def file_digest(path: Path) -> str:
    """sha256 of a file, streamed (adapters of 7B models are hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class JobClock:
    """Start and finish a record: attempts, timestamps and wall time in one place."""

    def __init__(self, folder: Path, record: JobRecord):
        self.folder = folder
        self.record = record
        self._start = time.perf_counter()
        self._last_progress_write = 0.0

    @classmethod
    def start(
        cls, folder: Path, previous: JobRecord | None, fresh: JobRecord, *, keep_phases: bool
    ) -> JobClock:
        """Mark the job running; ``keep_phases`` carries finished phases over (same inputs)."""
        record = fresh.model_copy(
            update={
                "status": "running",
                "attempts": (previous.attempts if previous else 0) + 1,
                "phases_done": list(previous.phases_done) if (previous and keep_phases) else [],
                "started_at": utc_now(),
                "finished_at": None,
                "error": None,
                "traceback": None,
                "progress": None,
                "worker": worker_identity(),
            }
        )
        write_record(folder, record)
        return cls(folder, record)

    def phase_done(self, phase: str) -> None:
        if phase not in self.record.phases_done:
            self.record.phases_done.append(phase)
        write_record(self.folder, self.record)

    def progress(self, progress: JobProgress, *, min_interval_s: float = 1.0) -> None:
        """Record progress for `mechanism status` and the Ray view, at most once per interval."""
        self.record.progress = progress
        now = time.perf_counter()
        if now - self._last_progress_write >= min_interval_s:
            self._last_progress_write = now
            write_record(self.folder, self.record)

    def finish(self, *, output_digest: str | None = None) -> JobRecord:
        self.record = self.record.model_copy(
            update={
                "status": "done",
                "finished_at": utc_now(),
                "wall_time_s": round(time.perf_counter() - self._start, 3),
                "output_digest": output_digest,
            }
        )
        write_record(self.folder, self.record)
        return self.record

    def fail(self, error: BaseException) -> JobRecord:
        self.record = self.record.model_copy(
            update={
                "status": "failed",
                "finished_at": utc_now(),
                "wall_time_s": round(time.perf_counter() - self._start, 3),
                "error": describe_error(error),
                "traceback": "".join(traceback.format_exception(error)),
            }
        )
        write_record(self.folder, self.record)
        return self.record


def describe_error(error: BaseException) -> str:
    """One line: the exception type (unless a GradienceError) and its message."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, GradienceError):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def require_weights(folder: Path) -> None:
    """Raise a GradienceError naming the folder when a job's adapter weights are not on disk
    (removed on purpose, or lost): a job that reads them cannot run until it is retrained."""
    if (folder / ADAPTER_WEIGHTS).is_file():
        return
    why = (
        "were removed after it finished" if (folder / WEIGHTS_REMOVED).is_file() else "are missing"
    )
    raise GradienceError(
        f"its adapter weights {why}; delete this job folder to retrain it, "
        "then rerun (a later job reads them)",
        path=folder,
    )
