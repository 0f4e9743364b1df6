"""An adapter folder as a server sees it: the config, and every module's stored shapes.

Only the safetensors header is read (:class:`~gradience.audit.tensors.SafetensorsStream`
parses it and checks every tensor's byte range against the file, so a truncated file is
caught here); no tensor data is loaded, because what a server does with an adapter depends
on shapes and config alone. Unlike :func:`gradience.audit.adapter.discover_modules`, which
refuses an adapter whose weights and config disagree, this reader records each disagreement
per module: saying which modules are wrong is the point of ``gradience check``.

Bad input (no such folder, a file instead of the folder, no or broken adapter_config.json, a
missing or broken weights file) raises :class:`~gradience.errors.GradienceError`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradience.audit.adapter import (
    CONFIG_NAME,
    SAVED_PREFIX,
    AdapterConfig,
    open_weights,
    pattern_value,
    read_adapter_config,
    targets_module,
)
from gradience.audit.names import layer_index, module_type, natural_sort_key
from gradience.audit.tensors import TensorInfo, TensorSource
from gradience.errors import GradienceError
from gradience.io import read_json

# "<module>.lora_A[.<adapter>].weight", "<module>.lora_embedding_A[.<adapter>]".
_FACTOR_KEY = re.compile(
    r"^(?P<module>.+)\.(?:lora_(?P<w>[AB])(?:\.[^.]+)?\.weight"
    r"|lora_embedding_(?P<e>[AB])(?:\.[^.]+)?)$"
)

#: Config flags of LoRA variants whose update is not s·B·A alone (the scaling check does not
#: describe what a server does with them).
VARIANT_FLAGS = ("use_dora", "use_qalora", "use_bdlora", "kasa_config", "monteclora_config")


@dataclass(frozen=True)
class ModuleLayout:
    """One LoRA module: its stored shapes and what the config says about it (PEFT's rules)."""

    name: str
    stored_rank: int
    d_in: int
    d_out: int
    config_rank: int
    alpha: float
    targeted: bool
    b_rank: int

    @property
    def type(self) -> str:
        return module_type(self.name)

    @property
    def layer(self) -> int | None:
        return layer_index(self.name)

    @property
    def width(self) -> int:
        """d_in + d_out: the parameters one unit of rank costs."""
        return self.d_in + self.d_out


@dataclass(frozen=True)
class AdapterLayout:
    """The adapter folder: its parsed config, the raw JSON, and its modules in name order."""

    folder: Path
    config: AdapterConfig
    raw: dict[str, Any]
    modules: list[ModuleLayout]
    #: rank_pattern/alpha_pattern keys that match no module of the weights.
    unmatched_keys: dict[str, list[str]] = field(default_factory=dict)
    #: compress.json beside the adapter, when it is a ``gradience compress`` output.
    compress_record: dict[str, Any] | None = None

    @property
    def variants(self) -> list[str]:
        return [flag for flag in VARIANT_FLAGS if self.raw.get(flag)]


def scaling(alpha: float, rank: int, use_rslora: bool) -> float:
    """LoRA's scaling: α/r, or α/√r with rsLoRA (PEFT's ``LoraLayer.update_layer``)."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def check_adapter_folder(folder: Path) -> None:
    """GradienceError unless ``folder`` is an existing folder holding adapter_config.json."""
    if folder.is_file():
        raise GradienceError(
            "is a file; give the adapter folder (the one with adapter_config.json)", path=folder
        )
    if not folder.is_dir():
        raise GradienceError(
            "adapter folder not found; give the adapter folder (the one with adapter_config.json)",
            path=folder,
        )
    if not (folder / CONFIG_NAME).is_file():
        raise GradienceError(
            f"no {CONFIG_NAME} here; give the adapter folder (the one with {CONFIG_NAME})",
            path=folder,
        )


def read_layout(folder: str | Path, allow_pickle: bool = False) -> AdapterLayout:
    """``folder``'s config and tensor shapes (no tensor data) as an :class:`AdapterLayout`."""
    folder = Path(folder)
    check_adapter_folder(folder)
    config_path = folder / CONFIG_NAME
    config = read_adapter_config(config_path)
    raw: dict[str, Any] = read_json(config_path)  # type: ignore[assignment]
    _check_patterns(config, config_path)
    source = open_weights(folder, allow_pickle)
    try:
        modules = _modules(source, config)
    finally:
        source.close()
    if not modules:
        raise GradienceError("no lora_A/lora_B tensors found", path=source.path)
    names = [m.name for m in modules]
    unmatched = {
        field_name: [
            key for key in pattern if not any(re.match(rf"(.*\.)?({key})$", name) for name in names)
        ]
        for field_name, pattern in _patterns(config)
    }
    record = folder / "compress.json"
    compress_record = read_json(record) if record.is_file() else None
    return AdapterLayout(
        folder,
        config,
        raw,
        modules,
        {k: v for k, v in unmatched.items() if v},
        compress_record if isinstance(compress_record, dict) else None,
    )


def _modules(source: TensorSource, config: AdapterConfig) -> list[ModuleLayout]:
    pairs: dict[str, dict[str, TensorInfo]] = {}
    for key, info in source.tensors().items():
        match = _FACTOR_KEY.match(key)
        if match is None:
            continue  # biases, DoRA magnitudes, modules_to_save
        name = match["module"].removeprefix(SAVED_PREFIX)
        pairs.setdefault(name, {})[match["w"] or match["e"]] = info
    modules = []
    for name, pair in sorted(pairs.items(), key=lambda item: natural_sort_key(item[0])):
        for which, other in (("A", "B"), ("B", "A")):
            if which not in pair:
                raise GradienceError(
                    f"module {name} has lora_{other} but no lora_{which}",
                    path=source.path,
                    field=pair[other].key,
                )
        a_shape, b_shape = pair["A"].shape, pair["B"].shape
        if len(a_shape) < 2 or len(b_shape) < 2:
            raise GradienceError(
                f"unsupported factor shapes {list(a_shape)} and {list(b_shape)}",
                path=source.path,
                field=pair["A"].key,
            )
        stored = a_shape[0]
        modules.append(
            ModuleLayout(
                name=name,
                stored_rank=stored,
                d_in=math.prod(a_shape[1:]),
                d_out=b_shape[0],
                config_rank=int(pattern_value(config.rank_pattern, name, config.r)),
                alpha=float(pattern_value(config.alpha_pattern, name, config.lora_alpha)),
                targeted=targets_module(config.target_modules, name),
                b_rank=b_shape[1],
            )
        )
    return modules


def _patterns(config: AdapterConfig) -> list[tuple[str, dict]]:
    return [("rank_pattern", config.rank_pattern), ("alpha_pattern", config.alpha_pattern)]


def _check_patterns(config: AdapterConfig, config_path: Path) -> None:
    """Every pattern key is a regex (PEFT matches them with ``re.match``)."""
    for field_name, pattern in _patterns(config):
        for key in pattern:
            try:
                re.compile(rf"(.*\.)?({key})$")
            except re.error as exc:
                raise GradienceError(
                    f"key {key!r} is not a valid pattern ({exc})",
                    path=config_path,
                    field=field_name,
                ) from None
