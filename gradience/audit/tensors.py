"""Read adapter weight files one tensor at a time, as float64 numpy arrays.

``SafetensorsStream`` parses the safetensors header itself and reads each tensor with a plain
positioned file read. It deliberately does not memory-map the file (as ``safe_open`` does):
mapped pages a process has touched count toward its resident memory until unmapped, so a
mapped read of every module would leave the whole file in the audit's RSS. Here only the
tensors being read are ever in memory. Pickle files (``.bin``) are opt-in and loaded with
``torch.load(weights_only=True)``; they are read whole, so they do not stream.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from gradience.errors import GradienceError

#: safetensors dtype → (bytes per element, numpy dtype of the stored bits).
_SAFETENSORS_DTYPES: dict[str, tuple[int, str]] = {
    "F64": (8, "<f8"),
    "F32": (4, "<f4"),
    "F16": (2, "<f2"),
    "BF16": (2, "<u2"),
}
_MAX_HEADER_BYTES = 100_000_000  # the format's own limit


@dataclass(frozen=True)
class TensorInfo:
    key: str
    dtype: str
    shape: tuple[int, ...]


class TensorSource(Protocol):
    """A weights file: the tensors it holds, and each one on demand as float64."""

    path: Path

    def tensors(self) -> dict[str, TensorInfo]: ...

    def read(self, key: str, order: str = "C") -> np.ndarray: ...

    def close(self) -> None: ...


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 (stored as uint16) to float32, exactly: bf16 is the top half of a float32."""
    return np.left_shift(bits, 16, dtype=np.uint32).view(np.float32)


class SafetensorsStream:
    """A safetensors file read tensor by tensor with plain file reads (no memory map)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = self.path.open("rb")
        try:
            self._entries = self._read_header()
        except BaseException:
            self._file.close()
            raise

    def _fail(self, message: str, key: str | None = None) -> GradienceError:
        return GradienceError(message, path=self.path, field=key)

    def _read_header(self) -> dict[str, tuple[TensorInfo, int, int]]:
        size = self.path.stat().st_size
        prefix = self._file.read(8)
        if len(prefix) != 8:
            raise self._fail("not a safetensors file (shorter than its 8-byte header length)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise self._fail(
                f"not a safetensors file (header length {header_len} exceeds the file)"
            )
        try:
            header = json.loads(self._file.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise self._fail("not a safetensors file (header is not JSON)") from None
        if not isinstance(header, dict):
            raise self._fail("not a safetensors file (header is not a JSON object)")
        data_start = 8 + header_len
        entries = {}
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            entries[key] = self._check_entry(key, meta, data_start, size)
        return entries

    def _check_entry(
        self, key: str, meta: object, data_start: int, size: int
    ) -> tuple[TensorInfo, int, int]:
        try:
            dtype, shape, (begin, end) = meta["dtype"], tuple(meta["shape"]), meta["data_offsets"]  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            raise self._fail("malformed safetensors header entry", key) from None
        if dtype not in _SAFETENSORS_DTYPES:
            raise self._fail(
                f"unsupported dtype {dtype} (expected one of {sorted(_SAFETENSORS_DTYPES)})", key
            )
        itemsize = _SAFETENSORS_DTYPES[dtype][0]
        if end - begin != math.prod(shape) * itemsize or begin < 0 or data_start + end > size:
            raise self._fail(
                f"byte range {begin}..{end} does not fit shape {list(shape)} or the file", key
            )
        return TensorInfo(key, dtype, shape), data_start + begin, data_start + end

    def tensors(self) -> dict[str, TensorInfo]:
        return {key: info for key, (info, _, _) in self._entries.items()}

    def read(self, key: str, order: str = "C") -> np.ndarray:
        """One tensor as a float64 array in the given memory order (exact for every dtype)."""
        info, data = self.read_bytes(key)
        return decode(info, data).astype(np.float64, order=order)

    def read_bytes(self, key: str) -> tuple[TensorInfo, bytes]:
        """One tensor's stored bytes, as the file holds them.

        Positioned reads (``os.pread``) keep no shared file offset, so threads may read
        different tensors at once.
        """
        info, begin, end = self._entries[key]
        chunks, offset = [], begin
        while offset < end:
            chunk = os.pread(self._file.fileno(), end - offset, offset)
            if not chunk:
                raise self._fail("file ends inside this tensor (truncated?)", key)
            chunks.append(chunk)
            offset += len(chunk)
        return info, chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        self._file.close()


def decode(info: TensorInfo, data: bytes) -> np.ndarray:
    """A tensor's stored bytes as an array of its dtype (bf16 widened to float32, exactly)."""
    raw = np.frombuffer(data, dtype=_SAFETENSORS_DTYPES[info.dtype][1]).reshape(info.shape)
    return bf16_bits_to_float32(raw) if info.dtype == "BF16" else raw


class TorchPickleFile:
    """A ``.bin`` state dict, loaded whole with ``torch.load(weights_only=True)``."""

    def __init__(self, path: str | Path):
        import torch  # only for opt-in pickles: the safetensors path never imports torch

        self.path = Path(path)
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad or unsafe pickle
            raise GradienceError(
                f"cannot load with weights_only=True: {str(exc).splitlines()[0]}", path=self.path
            ) from None
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise GradienceError("expected a state dict of tensors", path=self.path)
        self._state = state

    def tensors(self) -> dict[str, TensorInfo]:
        return {
            k: TensorInfo(k, str(v.dtype).removeprefix("torch."), tuple(v.shape))
            for k, v in self._state.items()
        }

    def read(self, key: str, order: str = "C") -> np.ndarray:
        import torch

        tensor = self._state[key].detach().to(torch.float64)
        return np.array(tensor.numpy(), order=order, copy=True)

    def close(self) -> None:
        self._state = {}
