"""Guard a run folder: one run at a time, never another experiment's results overwritten.

Before a run writes anything, :func:`open_run_folder`

1. makes sure the folder can be written (not a file, not under a file, writable);
2. claims it with an advisory lock held for the whole run, so two runs never interleave;
3. compares the config with the ``config.yaml`` of an earlier run there. A difference in
   anything that shaped an earlier result (model, task, training, LoRA, ranks, device, dtype)
   is refused, naming what differs: a typo in ``--output`` must not retrain and overwrite a
   night of work. Fields that never change a finished result may differ (:data:`FREE_FIELDS`):
   more or fewer seeds and variants, where and how the run executes, the analysis settings.
   With ``fresh`` the earlier run is instead renamed aside (never deleted);
4. sweeps what a killed process left half-written: temp copies of result files and adapter
   staging folders (a checkpoint is checked by training itself before it is resumed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradience.config import ExperimentConfig, load_config
from gradience.errors import GradienceError
from gradience.io import stale_temp_files

CONFIG_FILE = "config.yaml"
#: Left by ``gradience.train.run.save_adapter`` when killed before its rename.
ADAPTER_STAGING = "adapter.partial"
#: Config keys (and sections) whose value never changes a result already on disk.
FREE_FIELDS = (
    "train.seeds",
    "train.logging_steps",
    "train.report_to",
    "train.dataloader_num_workers",
    "compression.variants",
    "compression.probe_gate",
    "compression.budget",
    "env.output_base_dir",
    "env.executor",
    "env.ray_address",
    "env.ray_dashboard",
    "env.ray_run_dir",
    "env.ray_scratch_dir",
    "env.ray_env_vars",
    "env.ray_cpus_per_task",
    "env.resume_from_checkpoint",
    "env.num_threads",
    "env.workers",
    "env.deterministic",
    "env.reuse_base_model",
    "hypothesis",
    "metadata",
)
_HOW = (
    "rerun with that config to resume it, choose another --output, or pass --fresh to move "
    "the earlier run aside (nothing is deleted)"
)


@dataclass(frozen=True)
class RunFolder:
    """A claimed run folder, and where an earlier run was moved (``fresh``), if one was."""

    path: Path
    moved_aside: Path | None = None


@contextlib.contextmanager
def open_run_folder(
    run_dir: Path, cfg: ExperimentConfig, *, fresh: bool = False
) -> Iterator[RunFolder]:
    """Claim ``run_dir`` for a run of ``cfg`` (see the module docstring); released on exit."""
    ensure_writable(run_dir)
    with folder_lock(run_dir):
        if not (fresh and holds_a_run(run_dir)):
            check_earlier_run(run_dir, cfg)
            sweep_partial_files(run_dir)
            yield RunFolder(run_dir)
            return
        moved = move_aside(run_dir)
    ensure_writable(run_dir)
    with folder_lock(run_dir):
        yield RunFolder(run_dir, moved)


def ensure_writable(run_dir: Path) -> None:
    """Create the folder if needed; a file in the way or no write permission is a user error."""
    if run_dir.exists() and not run_dir.is_dir():
        raise GradienceError(
            "is a file, not a run folder; choose another --output (env.output_base_dir)",
            path=run_dir,
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GradienceError(
            f"cannot create the run folder ({error.strerror}); choose another --output "
            "(env.output_base_dir)",
            path=run_dir,
        ) from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise GradienceError(
            "the run folder is not writable; choose another --output (env.output_base_dir)",
            path=run_dir,
        )


@contextlib.contextmanager
def folder_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the folder itself (no lock file to leave behind); a no-op
    where ``fcntl`` does not exist. The kernel releases it when the process dies."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks on folders
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GradienceError(
                "another gradience run is using this run folder; wait for it to finish or "
                "choose another --output",
                path=run_dir,
            ) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def holds_a_run(run_dir: Path) -> bool:
    """True for an earlier run's folder, False for an empty one; refuses any other folder.

    Only what gradience wrote is ever moved aside or written over: a folder of the user's
    own files (``--output .``, a typo) is refused even with ``--fresh``.
    """
    if (run_dir / CONFIG_FILE).is_file():
        return True
    if any(run_dir.iterdir()):
        raise GradienceError(
            "the folder is not empty and holds no gradience run (no config.yaml); "
            "choose a new or empty --output",
            path=run_dir,
        )
    return False


def check_earlier_run(run_dir: Path, cfg: ExperimentConfig) -> None:
    """Refuse a config that differs from the earlier run's in anything that shaped a result."""
    if not holds_a_run(run_dir):
        return
    config_file = run_dir / CONFIG_FILE
    try:
        earlier = load_config(config_file)
    except GradienceError as error:
        raise GradienceError(
            f"the earlier run's config cannot be read ({error}); pass --fresh to move it aside",
            path=config_file,
        ) from None
    differences = config_differences(earlier, cfg)
    if differences:
        key = differences[0][0]
        shown = "; ".join(f"{k}: {b!r} there, {n!r} given" for k, b, n in differences[:3])
        more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
        raise GradienceError(
            f"this run folder holds results of another config ({shown}{more}); {_HOW}",
            path=config_file,
            field=key,
        )


def config_differences(
    earlier: ExperimentConfig, given: ExperimentConfig
) -> list[tuple[str, Any, Any]]:
    """(dotted key, earlier value, given value) for every key that differs and is not free."""
    before, now = flatten(earlier.model_dump(mode="json")), flatten(given.model_dump(mode="json"))
    return [
        (key, before.get(key), now.get(key))
        for key in sorted(before.keys() | now.keys())
        if before.get(key) != now.get(key) and not is_free(key)
    ]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def is_free(key: str) -> bool:
    return any(key == free or key.startswith(free + ".") for free in FREE_FIELDS)


def move_aside(run_dir: Path) -> Path:
    """Rename the folder to ``<name>.replaced-<timestamp>[-n]`` beside it; return the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}-{n}")
    run_dir.rename(target)
    return target


def sweep_partial_files(run_dir: Path) -> list[Path]:
    """Remove temp copies of result files and adapter staging folders left by a killed run."""
    swept = stale_temp_files(run_dir)
    for path in swept:
        path.unlink(missing_ok=True)
    for staging in run_dir.rglob(ADAPTER_STAGING):
        if staging.is_dir():
            shutil.rmtree(staging)
            swept.append(staging)
    return swept
