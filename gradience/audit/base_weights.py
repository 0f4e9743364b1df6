"""The base model's weights for ``gradience audit --base``: find them, stream them, cache SVDs.

``resolve_base`` turns what ``model.name`` accepts (a local folder, a hub id, ``package:<module>``,
``embedded:tiny-mistral``) into a folder of ``*.safetensors`` files, sharded or not.
:class:`BaseWeights` reads one tensor at a time from those files (plain positioned reads, as
:class:`gradience.audit.tensors.SafetensorsStream`, never the whole base in memory) and hashes
its stored bytes on the way. :class:`SvdCache` keeps each base tensor's singular vectors and
values under the gradience cache folder, content-addressed by that digest, so a second audit
against the same base skips the expensive full SVD.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from gradience.audit.tensors import (
    _SAFETENSORS_DTYPES,
    SafetensorsStream,
    TensorInfo,
    decode,
)
from gradience.errors import GradienceError
from gradience.io import cache_root

INDEX_NAME = "model.safetensors.index.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_FIELD = "--base"


def resolve_base(name: str) -> Path:
    """The local folder holding the base model's safetensors for ``name``.

    A path that exists must be a folder. ``embedded:tiny-mistral`` is the embedded model's
    shipped (or cached) folder; ``package:<module>`` that installed package's folder; any
    other name that looks like a hub id (``org/model``) is fetched with huggingface_hub's
    ``snapshot_download`` (safetensors and their index only; a cached snapshot needs no
    network). Anything else raises GradienceError saying what to give.
    """
    if name.startswith("embedded:"):
        return _embedded_folder(name)
    if name.startswith("package:"):
        from gradience.models.hub import resolve_model_name

        try:
            return _checked_folder(Path(resolve_model_name(name)), name)
        except GradienceError as exc:
            raise GradienceError(str(exc).removeprefix("model.name: "), field=_FIELD) from None
    path = Path(name).expanduser()
    if path.exists() or not _HUB_ID.match(name):
        return _checked_folder(path, name)
    return _checked_folder(_hub_snapshot(name), name)


def _embedded_folder(name: str) -> Path:
    from gradience.models.embedded import (
        PRETRAINED_NAME,
        RECIPE_FILE,
        cached_model_dir,
        shipped_model_dir,
    )

    if name == PRETRAINED_NAME:
        for folder in (shipped_model_dir(), cached_model_dir()):
            if (folder / RECIPE_FILE).is_file():
                return folder
    raise GradienceError(
        f"{name!r} has no weights folder; give {PRETRAINED_NAME!r}, a model folder or a hub id",
        field=_FIELD,
    )


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise GradienceError(
            f"{repo_id!r} is not a local folder, and fetching a hub id needs huggingface_hub "
            "(pip install 'gradience[hf]')",
            field=_FIELD,
        ) from None
    try:
        folder = snapshot_download(
            repo_id, allow_patterns=["*.safetensors", INDEX_NAME, "config.json"]
        )
    except Exception as exc:  # huggingface_hub raises many types: offline, 404, gated, invalid id
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GradienceError(
            f"{repo_id!r} is not a local folder and could not be fetched from the Hugging Face "
            f"hub ({reason})",
            field=_FIELD,
        ) from None
    return Path(folder)


def _checked_folder(path: Path, name: str) -> Path:
    if not path.exists():
        raise GradienceError(
            "base model folder not found; give the base model's folder (with *.safetensors), "
            "a hub id or embedded:tiny-mistral",
            path=name,
            field=_FIELD,
        )
    if not path.is_dir():
        raise GradienceError(
            "give the base model's folder (the one with *.safetensors), not a file",
            path=name,
            field=_FIELD,
        )
    return path


def base_tensor_files(folder: Path) -> dict[str, Path]:
    """Every base tensor's file: from ``model.safetensors.index.json`` when the base is
    sharded, else from the header of each ``*.safetensors`` file in the folder."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return {str(key): folder / str(file) for key, file in weight_map.items()}
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise GradienceError(
                "not a safetensors index (expected a JSON object with a weight_map)",
                path=index,
                field="weight_map",
            ) from None
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        raise GradienceError(
            "no *.safetensors in the base model folder (give the folder a model was "
            "save_pretrained to; .bin and .gguf weights are not read here)",
            path=folder,
            field=_FIELD,
        )
    if [p.name for p in files] == ["adapter_model.safetensors"]:
        raise GradienceError(
            "this is an adapter folder; --base takes the base model it was trained on",
            path=folder,
            field=_FIELD,
        )
    owners: dict[str, Path] = {}
    for file in files:
        stream = _DigestStream(file)
        try:
            for key in stream.tensors():
                if key in owners:
                    raise GradienceError(
                        f"tensor {key} is in both {owners[key].name} and {file.name}",
                        path=folder,
                    )
                owners[key] = file
        finally:
            stream.close()
    return owners


class _DigestStream(SafetensorsStream):
    """A :class:`SafetensorsStream` that also returns the digest of a tensor's stored bytes,
    and lists tensors of other dtypes (integer buffers, quantized weights) instead of refusing
    the whole file: a base's header may hold them; only reading one is an error."""

    def _check_entry(
        self, key: str, meta: object, data_start: int, size: int
    ) -> tuple[TensorInfo, int, int]:
        if isinstance(meta, dict) and meta.get("dtype") not in _SAFETENSORS_DTYPES:
            try:
                shape, (begin, end) = tuple(meta["shape"]), meta["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise self._fail("malformed safetensors header entry", key) from None
            return (
                TensorInfo(key, str(meta.get("dtype")), shape),
                data_start + begin,
                data_start + end,
            )
        return super()._check_entry(key, meta, data_start, size)

    def read_with_digest(self, key: str) -> tuple[np.ndarray, str]:
        info = self._entries[key][0]
        if info.dtype not in _SAFETENSORS_DTYPES:
            raise self._fail(
                f"dtype {info.dtype} is not a float weight (a quantized base?); give the "
                f"unquantized base model (one of {sorted(_SAFETENSORS_DTYPES)})",
                key,
            )
        info, data = self.read_bytes(key)
        digest = hashlib.sha256(f"{info.dtype}{list(info.shape)}".encode())
        digest.update(data)
        return decode(info, data).astype(np.float64), digest.hexdigest()


class BaseWeights:
    """The base model's tensors, one at a time: ``info(key)`` from the headers, ``read(key)``
    as a float64 array with the SHA-256 of its dtype, shape and stored bytes. Shard files are
    opened on first use (their headers only) and stay open until ``close``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files = base_tensor_files(folder)
        self._streams: dict[Path, _DigestStream] = {}

    def _stream(self, key: str) -> _DigestStream:
        file = self.files[key]
        if file not in self._streams:
            if not file.is_file():
                raise GradienceError(
                    f"the index names {file.name} for {key}, but it is missing",
                    path=self.folder / INDEX_NAME,
                )
            self._streams[file] = _DigestStream(file)
        return self._streams[file]

    def info(self, key: str) -> TensorInfo:
        stream = self._stream(key)
        if key not in stream.tensors():
            raise GradienceError(f"no tensor {key} (the index says it is here)", path=stream.path)
        return stream.tensors()[key]

    def read(self, key: str) -> tuple[np.ndarray, str]:
        return self._stream(key).read_with_digest(key)

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()


def base_key(module_name: str, keys: dict[str, Path] | set[str]) -> str | None:
    """The base tensor of an adapter module (names relative to the base model, as PEFT's).

    ``model.layers.0.self_attn.q_proj`` → ``model.layers.0.self_attn.q_proj.weight``; a base
    saved from the inner model (no ``model.`` prefix) or from a wrapper (one more prefix) is
    matched by dropping or adding leading name components, when exactly one tensor fits.
    """
    exact = f"{module_name}.weight"
    if exact in keys:
        return exact
    parts = exact.split(".")
    for start in range(1, len(parts) - 1):
        if ".".join(parts[start:]) in keys:
            return ".".join(parts[start:])
    wrapped = [key for key in keys if key.endswith("." + exact)]
    return wrapped[0] if len(wrapped) == 1 else None


class SvdCache:
    """Thin SVDs of base tensors on disk, one ``.npz`` per tensor digest.

    Holds the left singular vectors (float32, the precision the intruder scan uses on first
    and cached runs alike) and the singular values (float64). Entries are content-addressed,
    so a renamed or moved base still hits and a changed tensor never does; they are written
    atomically (temp file + rename), and an unreadable entry is recomputed.
    """

    def __init__(self, root: Path | None = None):
        self.root = root if root is not None else cache_root() / "intruder-svd"

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.npz"

    def load(self, digest: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
        m, n = shape
        try:
            with np.load(self.path(digest), allow_pickle=False) as entry:
                left, values = entry["left"], entry["values"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
            return None
        if left.shape != (m, min(m, n)) or values.shape != (min(m, n),):
            return None
        return left, values

    def save(self, digest: str, left: np.ndarray, values: np.ndarray) -> None:
        """Write one entry (OSError propagates: the caller decides whether that matters)."""
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{digest[:16]}.", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, left=left, values=values)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
