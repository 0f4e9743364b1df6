"""Atomic, versioned JSON files: every file the pipeline writes goes through here."""

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
        raise GradienceError(f"not valid JSON ({exc.msg} at line {exc.lineno})", path=path) from None


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
