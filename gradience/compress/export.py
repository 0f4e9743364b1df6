"""Write a compressed adapter folder: PEFT's config and safetensors, and ``compress.json``.

The folder is assembled next to its destination and renamed into place, so a reader never
sees half an adapter, and an existing folder is replaced only when it is an earlier
``gradience compress`` output (never the source, never some other non-empty folder).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from gradience.audit.adapter import CONFIG_NAME, SAFETENSORS_NAME
from gradience.audit.tensors import TensorInfo
from gradience.errors import GradienceError
from gradience.io import write_json_atomic, write_model
from gradience.results import CompressResult

COMPRESS_NAME = "compress.json"

#: Storage dtype of a tensor, by the name safetensors (F32, ...) or torch (float32, ...) gives.
_TORCH_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def storage_dtype(info: TensorInfo) -> torch.dtype:
    """The torch dtype a tensor was stored in (written factors keep their source's dtype)."""
    try:
        return _TORCH_DTYPES[info.dtype]
    except KeyError:
        raise GradienceError(f"unsupported dtype {info.dtype}", field=info.key) from None


def check_output_dir(output: Path, source: Path) -> None:
    """Refuse to write over the source adapter or over a folder that is not ours to replace."""
    if output.resolve() == source.resolve():
        raise GradienceError(
            "is the adapter being compressed; write the result to a new folder", path=output
        )
    if output.exists() and not output.is_dir():
        raise GradienceError("exists and is not a folder", path=output)
    if output.is_dir() and any(output.iterdir()) and not (output / COMPRESS_NAME).is_file():
        raise GradienceError(
            f"exists and is not empty (and holds no {COMPRESS_NAME} of an earlier compress); "
            "choose a new folder",
            path=output,
        )


def write_adapter_dir(
    output: Path,
    config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    result: CompressResult,
) -> Path:
    """adapter_config.json + adapter_model.safetensors + compress.json, swapped into place."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent)
    )
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; results are shared
        save_file(
            {key: t.contiguous() for key, t in tensors.items()},
            str(staging / SAFETENSORS_NAME),
            metadata={"format": "pt"},  # what PEFT's save_pretrained writes
        )
        write_json_atomic(staging / CONFIG_NAME, dict(config))
        write_model(staging / COMPRESS_NAME, result)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
