"""Atomic, versioned JSON files: every file the pipeline writes goes through here.

Also the checks on the paths a user gives a command (:func:`require_file`, :func:`require_dir`,
:func:`require_file_in`, :func:`output_file`, :func:`output_dir`): a missing path, a file where
a folder is expected or the reverse, or an output that cannot be created becomes one
GradienceError that names the path (and the flag) and says what to give. Outputs follow one
rule: missing parent folders are created; a path component that is a file is refused.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from gradience.errors import GradienceError
from gradience.faults import fault_point

M = TypeVar("M", bound=BaseModel)

#: The temp copy write_text_atomic renames into place: ".<name>.<8 random chars>.tmp".
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def cache_root() -> Path:
    """``$GRADIENCE_CACHE`` or ``~/.cache/gradience``: where every cache of gradience lives
    (the embedded model, unpacked GGUF models, the intruder audit's base SVDs)."""
    return Path(os.environ.get("GRADIENCE_CACHE") or Path.home() / ".cache" / "gradience")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` via a temp file in the same folder and an atomic rename."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; results are meant to be shared like any file the user writes.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        fault_point("rename", path.name)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def stale_temp_files(folder: str | Path) -> list[Path]:
    """Temp copies under ``folder`` that a killed process never renamed into place."""
    return sorted(
        p for p in Path(folder).rglob(".*.tmp") if _TEMP_NAME.match(p.name) and p.is_file()
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, data: object) -> Path:
    """Write plain JSON data atomically (sorted keys are NOT applied: order is meaningful)."""
    return write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_model(path: str | Path, model: BaseModel) -> Path:
    """Write a result model as JSON atomically."""
    return write_text_atomic(path, model.model_dump_json(indent=2) + "\n")


def read_json(path: str | Path) -> object:
    """Read JSON, turning a missing or malformed file into a GradienceError naming it."""
    path = Path(path)
    if not path.is_file():
        raise GradienceError("file not found", path=path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GradienceError(
            f"not valid JSON ({exc.msg} at line {exc.lineno})", path=path
        ) from None


def read_model(path: str | Path, model_type: type[M]) -> M:
    """Read and validate a result file; the first problem is reported with its key path."""
    data = read_json(path)
    try:
        return model_type.model_validate(data)
    except ValidationError as exc:
        raise GradienceError(describe_validation_error(exc), path=path) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line: the key path of the first error and what was expected."""
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    extra = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
    message = first["msg"].removeprefix("Value error, ")
    if not loc:  # a check across fields names them itself; the whole input would not help
        return f"{message}{extra}"
    got = first.get("input")
    got_text = "" if first["type"] == "missing" else f"; got {got!r}"
    if len(got_text) > 80:
        got_text = got_text[:77] + "..."
    return f"{loc}: {message}{got_text}{extra}"


def require_file(
    path: str | Path, what: str, *, noun: str = "file", field: str | None = None
) -> Path:
    """``path`` when it is an existing file; else a GradienceError saying to give ``what``.

    ``noun`` opens the not-found message ("config file not found; give ..."), ``field`` names
    the flag (``--config``); ``what`` is the thing to give ("an experiment YAML file").
    """
    path = Path(path)
    if path.is_dir():
        raise GradienceError(f"is a folder; give {what}", path=path, field=field)
    if not path.exists():
        raise GradienceError(f"{noun} not found; give {what}", path=path, field=field)
    if not path.is_file():
        raise GradienceError(f"is not a regular file; give {what}", path=path, field=field)
    return path


def require_dir(
    path: str | Path,
    what: str,
    *,
    noun: str = "folder",
    contains: str | None = None,
    field: str | None = None,
) -> Path:
    """``path`` when it is an existing folder (holding the file ``contains``, when given)."""
    path = Path(path)
    if not path.exists():
        raise GradienceError(f"{noun} not found; give {what}", path=path, field=field)
    if not path.is_dir():
        raise GradienceError(f"is a file; give {what}", path=path, field=field)
    if contains is not None and not (path / contains).is_file():
        raise GradienceError(f"no {contains} here; give {what}", path=path, field=field)
    return path


def require_file_in(
    path: str | Path, name: str, what: str, *, noun: str = "file", field: str | None = None
) -> Path:
    """The file ``path``, or ``path/name`` when ``path`` is a folder (that must hold it: the
    message then names ``path/name``, the file looked for)."""
    path = Path(path)
    if path.is_dir():
        return require_file(path / name, what, noun=noun, field=field)
    return require_file(path, what, noun=noun, field=field)


def output_file(
    path: str | Path, what: str, *, field: str | None = None, example: str | None = None
) -> Path:
    """``path`` when a file can be written there: not an existing folder, and every existing
    parent a writable folder (missing parents are created when the file is written).

    ``example``: a file name suggested inside the folder when ``path`` is one.
    """
    path = Path(path)
    if path.is_dir():
        hint = f", e.g. {path / example}" if example else ""
        raise GradienceError(
            f"is a folder; give a file name for {what}{hint}", path=path, field=field
        )
    _check_creatable(path.parent, path, what, field)
    return path


def output_dir(path: str | Path, what: str, *, field: str | None = None) -> Path:
    """``path`` when a folder can be written there: an existing writable folder, or a path
    whose nearest existing parent is a writable folder (the missing folders are created)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise GradienceError(
            f"is a file; give a folder for {what} (created if missing)", path=path, field=field
        )
    _check_creatable(path, path, what, field)
    return path


def _check_creatable(folder: Path, path: Path, what: str, field: str | None) -> None:
    """The nearest existing one of ``folder`` and its parents must be a writable folder."""
    nearest = folder
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if nearest.exists() and not nearest.is_dir():
        raise GradienceError(
            f"{nearest} is a file, not a folder; give a path in a folder for {what} "
            "(missing folders are created)",
            path=path,
            field=field,
        )
    if nearest.exists() and not os.access(nearest, os.W_OK | os.X_OK):
        raise GradienceError(
            f"{nearest} is not writable; give a path in a folder you can write for {what}",
            path=path,
            field=field,
        )
