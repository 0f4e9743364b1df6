"""What a finished training job's identity covers, so that a rerun never reuses a stale adapter.

A job is reused only when its settings (:meth:`ExperimentConfig.training_hash`, which covers
``env.device`` and ``task.revision``), the *bytes* of any local data file, and the versions of
the libraries that shape training (gradience, torch, transformers, peft) are all unchanged. A
new gradience release, an edited JSONL file or a switch from CPU to CUDA therefore retrains
instead of silently mixing results from two different set-ups.

Torch-free (versions come from the installed distributions' metadata), so reading a run's
status stays light.
"""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path

from gradience.config import ExperimentConfig, TaskConfig, hash_data
from gradience.errors import GradienceError

#: Library versions that enter the identity (the python version is recorded, not hashed).
IDENTITY_LIBRARIES = ("gradience", "torch", "transformers", "peft")


def library_versions() -> dict[str, str]:
    """gradience's own version, python's, and the installed torch / transformers / peft."""
    import gradience

    versions = {"gradience": gradience.__version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "peft"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_file_digests(task: TaskConfig) -> dict[str, str | None]:
    """sha256 of each local data file the task reads (None where the hub or a generator is used)."""
    digests: dict[str, str | None] = {}
    for field in ("train_file", "eval_file"):
        name = getattr(task, field)
        if name is None:
            digests[field] = None
            continue
        path = Path(name)
        if not path.is_file():
            raise GradienceError("data file not found", path=path, field=f"task.{field}")
        digests[field] = file_sha256(path)
    return digests


def training_identity(cfg: ExperimentConfig) -> dict[str, object]:
    """Everything a trained adapter depends on besides its seed and ranks (JSON-ready)."""
    versions = library_versions()
    return {
        "settings": cfg.training_hash(),
        "data_files": data_file_digests(cfg.task),
        "versions": {name: versions[name] for name in IDENTITY_LIBRARIES},
    }


def training_identity_hash(cfg: ExperimentConfig) -> str:
    return hash_data(training_identity(cfg))
