"""A PEFT LoRA adapter directory: its config, its weights file and its LoRA modules.

Reads ``adapter_config.json`` and the tensor names of ``adapter_model.safetensors`` (or, only
when allowed, ``adapter_model.bin``), pairs every ``lora_A`` with its ``lora_B`` and checks
them against the config the way PEFT would build the model: each module's rank and alpha come
from ``rank_pattern`` / ``alpha_pattern`` with PEFT's matching rule (:func:`pattern_value`).
No weights are read here; :mod:`gradience.audit.core` streams them one module at a time.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gradience.audit.names import natural_sort_key
from gradience.audit.tensors import SafetensorsStream, TensorInfo, TensorSource, TorchPickleFile
from gradience.errors import GradienceError

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
SAVED_PREFIX = "base_model.model."

# "<module>.lora_A[.<adapter>].weight" and "<module>.lora_embedding_A[.<adapter>]".
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?:(?P<factor>lora_[AB])(?:\.(?P<adapter>[^.]+))?\.weight"
    r"|(?P<embedding>lora_embedding_[AB])(?:\.(?P<adapter_e>[^.]+))?)$"
)


@dataclass(frozen=True)
class AdapterConfig:
    """The parts of ``adapter_config.json`` the audit uses."""

    r: int
    lora_alpha: float
    use_rslora: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    target_modules: list[str] | str | None
    base_model: str | None


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: where its factors are and what the config says about it."""

    name: str
    a_key: str
    b_key: str
    r: int
    d_in: int
    d_out: int
    alpha: float
    scaling: float


def pattern_value(pattern: Mapping[str, float], name: str, default: float) -> float:
    """PEFT 0.21's ``get_pattern_key`` rule: the first key (in dict order) with
    ``re.match(rf"(.*\\.)?({key})$", name)`` wins; no match → ``default``."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def pattern_warnings(config: AdapterConfig, names: list[str]) -> list[str]:
    """Modules that several ``rank_pattern``/``alpha_pattern`` keys with different values match.

    PEFT takes the first match in dict order, and ``save_pretrained`` writes the config with
    sorted keys, so the order (and the value) may differ between training and reloading. The
    audit follows the saved file, like ``PeftModel.from_pretrained``; these cases deserve a look.
    """
    warnings = []
    for field, pattern in (
        ("rank_pattern", config.rank_pattern),
        ("alpha_pattern", config.alpha_pattern),
    ):
        for name in names:
            hits = {key: v for key, v in pattern.items() if re.match(rf"(.*\.)?({key})$", name)}
            if len(set(hits.values())) > 1:
                chosen = next(iter(hits))
                warnings.append(
                    f"{field}: {name} matches keys {list(hits)} with different values; the first in the "
                    f"saved file ({chosen!r} -> {hits[chosen]:g}) applies, as on PEFT reload, but the "
                    "order used in training may have differed"
                )
    return warnings


def targets_module(target_modules: list[str] | str | None, name: str) -> bool:
    """Whether PEFT's ``target_modules`` selects ``name`` (a string is a full-match regex,
    a list matches a whole name or a dotted suffix; ``all-linear`` or none: anything)."""
    if target_modules is None or target_modules == "all-linear":
        return True
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def read_adapter_config(path: Path) -> AdapterConfig:
    """Parse and check ``adapter_config.json`` (GradienceError naming the field on a problem)."""
    if not path.is_file():
        raise GradienceError(
            f"no {CONFIG_NAME} (is this a PEFT adapter directory?)", path=path.parent
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GradienceError(f"not valid JSON ({exc})", path=path) from None
    if not isinstance(raw, dict):
        raise GradienceError("expected a JSON object", path=path)
    peft_type = raw.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise GradienceError(
            f"not a LoRA adapter (peft_type={peft_type!r}); only LORA is supported",
            path=path,
            field="peft_type",
        )
    r, alpha = raw.get("r"), raw.get("lora_alpha", raw.get("r"))
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise GradienceError(f"expected a positive integer, got {r!r}", path=path, field="r")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise GradienceError(f"expected a number, got {alpha!r}", path=path, field="lora_alpha")
    patterns = {}
    for field in ("rank_pattern", "alpha_pattern"):
        value = raw.get(field) or {}
        if not isinstance(value, dict) or not all(
            isinstance(v, (int, float)) for v in value.values()
        ):
            raise GradienceError(
                "expected a mapping of module patterns to numbers", path=path, field=field
            )
        patterns[field] = value
    return AdapterConfig(
        r=r,
        lora_alpha=float(alpha),
        use_rslora=bool(raw.get("use_rslora", False)),
        rank_pattern={k: int(v) for k, v in patterns["rank_pattern"].items()},
        alpha_pattern={k: float(v) for k, v in patterns["alpha_pattern"].items()},
        target_modules=raw.get("target_modules"),
        base_model=raw.get("base_model_name_or_path"),
    )


def open_weights(adapter_dir: Path, allow_pickle: bool) -> TensorSource:
    """The adapter's weights file: safetensors, or a pickle only with ``allow_pickle``."""
    safetensors_path, pickle_path = adapter_dir / SAFETENSORS_NAME, adapter_dir / PICKLE_NAME
    if safetensors_path.is_file():
        return SafetensorsStream(safetensors_path)
    if pickle_path.is_file():
        if not allow_pickle:
            raise GradienceError(
                "weights are a pickle file, which can run code when loaded; pass --allow-pickle "
                "to load it with torch.load(weights_only=True), or convert it to safetensors",
                path=pickle_path,
            )
        return TorchPickleFile(pickle_path)
    raise GradienceError(
        f"no {SAFETENSORS_NAME} (or {PICKLE_NAME}) in the adapter directory", path=adapter_dir
    )


def _pair_factors(source: TensorSource) -> dict[str, dict[str, TensorInfo]]:
    """Group LoRA tensors by module name (saved prefix and adapter name removed)."""
    factors: dict[str, dict[str, TensorInfo]] = {}
    adapters: set[str | None] = set()
    for key, info in source.tensors().items():
        match = _LORA_KEY.match(key)
        if match is None:
            continue  # biases, DoRA magnitudes, modules_to_save: not LoRA factors
        module = match["module"].removeprefix(SAVED_PREFIX)
        which = (match["factor"] or match["embedding"])[-1]
        adapters.add(match["adapter"] or match["adapter_e"])
        if which in factors.setdefault(module, {}):
            raise GradienceError(
                f"two lora_{which} tensors for module {module}", path=source.path, field=key
            )
        factors[module][which] = info
    if len(adapters) > 1:
        raise GradienceError(
            f"tensors of several adapters {sorted(map(str, adapters))}; audit one at a time",
            path=source.path,
        )
    return factors


def _matrix_shape(info: TensorInfo, which: str, path: Path) -> tuple[int, int]:
    """(rows, cols) of a factor; conv factors flatten to (r, in·k…) and (out, r) with 1×1 tails."""
    shape = info.shape
    if len(shape) < 2 or (which == "B" and any(d != 1 for d in shape[2:])):
        raise GradienceError(
            f"unsupported lora_{which} shape {list(shape)}", path=path, field=info.key
        )
    return (shape[0], math.prod(shape[1:])) if which == "A" else (shape[0], shape[1])


def discover_modules(
    source: TensorSource, config: AdapterConfig, config_path: Path
) -> list[LoraModule]:
    """Every LoRA module of the weights file, checked against the config, in natural name order."""
    modules = []
    pairs = sorted(_pair_factors(source).items(), key=lambda item: natural_sort_key(item[0]))
    if pairs:
        check_pattern_keys(config, [name for name, _ in pairs], config_path)
    for name, pair in pairs:
        present = next(iter(pair.values()))
        for which, other in (("A", "B"), ("B", "A")):
            if which not in pair:
                raise GradienceError(
                    f"module {name} has lora_{other} but no lora_{which}",
                    path=source.path,
                    field=present.key,
                )
        (r, d_in), (d_out, r_b) = (
            _matrix_shape(pair["A"], "A", source.path),
            _matrix_shape(pair["B"], "B", source.path),
        )
        if r != r_b:
            raise GradienceError(
                f"lora_A has rank {r} but lora_B has {r_b} columns",
                path=source.path,
                field=pair["B"].key,
            )
        expected_r = int(pattern_value(config.rank_pattern, name, config.r))
        if r != expected_r:
            raise GradienceError(
                f"module {name} has rank {r} in the weights but {expected_r} by r/rank_pattern; "
                "weights and config do not belong together",
                path=config_path,
                field="rank_pattern" if config.rank_pattern else "r",
            )
        if not targets_module(config.target_modules, name):
            raise GradienceError(
                f"module {name} is in the weights but not selected by target_modules",
                path=config_path,
                field="target_modules",
            )
        alpha = float(pattern_value(config.alpha_pattern, name, config.lora_alpha))
        scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
        modules.append(
            LoraModule(name, pair["A"].key, pair["B"].key, r, d_in, d_out, alpha, scaling)
        )
    if not modules:
        raise GradienceError("no lora_A/lora_B tensors found", path=source.path)
    return modules


def check_pattern_keys(config: AdapterConfig, names: list[str], config_path: Path) -> None:
    """Every rank_pattern/alpha_pattern key matches some module of the weights.

    PEFT ignores a key that matches nothing, but in a saved adapter it means the config was
    written for other weights (or the key is misspelt and its rank never applied).
    """
    for field, pattern in (
        ("rank_pattern", config.rank_pattern),
        ("alpha_pattern", config.alpha_pattern),
    ):
        for key in pattern:
            try:
                matched = any(re.match(rf"(.*\.)?({key})$", name) for name in names)
            except re.error as exc:
                raise GradienceError(
                    f"key {key!r} is not a valid pattern ({exc})", path=config_path, field=field
                ) from None
            if not matched:
                raise GradienceError(
                    f"key {key!r} matches no LoRA module of the weights (they have e.g. "
                    f"{names[0]!r}); weights and config do not belong together",
                    path=config_path,
                    field=field,
                )
