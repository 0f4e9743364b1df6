"""The trained adapter as vLLM serves it: ``gradience compress --uniform`` at full rank.

vLLM applies one scaling to a whole adapter, computed from the top-level ``r`` and
``lora_alpha`` of adapter_config.json (``PEFTHelper.__post_init__`` in
``vllm/lora/peft_helper.py``: α/r, α/√r when ``use_rslora``; every module gets it through
``LoRALayerWeights.from_config``; ``use_rslora`` is honoured since PEFTHelper, v0.10.0 at
the latest). The PEFTHelper of v0.10.0 up to v0.31.0 declares no ``rank_pattern`` or
``alpha_pattern``, and ``PEFTHelper.from_dict`` drops fields it does not declare, so a
heterogeneous adapter handed over as trained would be scored with the wrong scale in every
module whose rank or alpha differs from the top-level pair. (From v0.32.0,
``PEFTHelper.get_rank_and_scaling`` applies the patterns as PEFT does, read from the wheels by
:mod:`gradience.serving`; nothing here relies on either behaviour.)

:func:`export_for_vllm` therefore writes the in-memory adapter through
:func:`gradience.compress.truncate_adapter` with every module at its own rank (nothing is
truncated) and ``uniform=True``: each module's scaling s is multiplied into its lora_B, every
module is zero-padded to the largest rank R, and the config says ``r = lora_alpha = R``,
``use_rslora: false``, empty patterns. vLLM's scaling is then exactly 1.0 under every
version's rule (with or without rsLoRA support, with or without pattern support), and each
module's update B′·A′ equals the trained s·B·A up to float32 rounding (the factors are
rebuilt from an SVD in float64; tests/test_eval_vllm.py compares every module's delta).

:func:`check_vllm_adapter_config` refuses, as a GradienceError naming the field, what vLLM's
loader would refuse or misread (``PEFTHelper.validate_legal``, ``LoRAModel.from_local_checkpoint``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradience.errors import GradienceError
from gradience.results import CompressResult

#: ``max_lora_rank`` values every vLLM this backend supports accepts: the ``possible_max_ranks``
#: that ``LoRAConfig.__post_init__`` checked (vllm/config.py, before the config package) and
#: a subset of ``MaxLoRARanks`` (vllm/config/lora.py, v0.14.0: 1, 8, ..., 512). vLLM pads a
#: smaller adapter to it itself.
VLLM_MAX_LORA_RANKS: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 320, 512)

#: The ``init_lora_weights`` strings the newest vLLM accepts (the others — PiSSA, OLoRA, LoftQ,
#: CorDA — change the base weights, so the adapter does not apply to the served base).
_SERVABLE_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")


def choose_max_lora_rank(rank: int, allowed: Sequence[int] = VLLM_MAX_LORA_RANKS) -> int:
    """The smallest allowed ``max_lora_rank`` that holds an adapter of rank ``rank``."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"a LoRA rank is a positive integer, got {rank!r}")
    for candidate in sorted(allowed):
        if candidate >= rank:
            return candidate
    raise GradienceError(
        f"rank {rank} is above vLLM's largest max_lora_rank ({max(allowed)}); evaluate with "
        "task.eval_backend: hf",
        field="lora.probe_r",
    )


def check_vllm_adapter_config(config: Mapping[str, Any], path: Path) -> None:
    """GradienceError (naming ``path`` and the field) for anything vLLM refuses or misreads.

    The served scaling must be exactly 1: ``lora_alpha == r``, no rsLoRA, no patterns (a
    uniform export); vLLM also requires ``target_modules`` and rejects DoRA,
    ``modules_to_save``, trained biases and inits that change the base weights.
    """
    for field in ("r", "lora_alpha", "target_modules"):
        if config.get(field) is None:
            raise GradienceError(
                "vLLM requires this field of adapter_config.json", path=path, field=field
            )
    refusals = {
        "use_dora": "vLLM does not serve DoRA",
        "modules_to_save": "vLLM serves no modules_to_save (fully trained modules)",
        "lora_bias": "vLLM serves no lora_B bias",
        "layer_replication": "vLLM does not replicate layers",
        "alora_invocation_tokens": "vLLM does not serve activated LoRA",
    }
    for field, why in refusals.items():
        if config.get(field):
            raise GradienceError(why, path=path, field=field)
    if config.get("bias", "none") != "none":
        raise GradienceError(
            "vLLM serves no trained biases (lora.bias must be 'none' for task.eval_backend: vllm)",
            path=path,
            field="bias",
        )
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in _SERVABLE_INITS:
        raise GradienceError(
            f"{init!r} changes the base weights; vLLM serves the adapter on the unchanged base",
            path=path,
            field="init_lora_weights",
        )
    uniform = (
        config["lora_alpha"] == config["r"]
        and not config.get("use_rslora")
        and not config.get("rank_pattern")
        and not config.get("alpha_pattern")
    )
    if not uniform:
        raise GradienceError(
            "vLLM applies one alpha/r to the whole adapter (released versions ignore "
            "rank_pattern and alpha_pattern): serve a uniform export (gradience compress "
            "--uniform: lora_alpha == r, use_rslora false, no patterns)",
            path=path,
            field="lora_alpha",
        )


@dataclass(frozen=True)
class ServedAdapter:
    """A uniform export on disk: the folder vLLM's ``LoRARequest`` names, and its one rank."""

    folder: Path
    rank: int
    record: CompressResult


def export_for_vllm(peft_model: Any, folder: Path) -> ServedAdapter:
    """Write ``peft_model``'s adapter (as it is in memory) to ``folder`` as vLLM serves it.

    The adapter is saved with PEFT's ``save_pretrained`` into a scratch folder beside
    ``folder``, exported by :func:`~gradience.compress.truncate_adapter` with every module at
    its own rank and ``uniform=True`` (its record, ``compress.json``, goes with it), checked
    with :func:`check_vllm_adapter_config`, and the scratch copy removed.
    """
    from gradience.audit.adapter import CONFIG_NAME
    from gradience.compress import truncate_adapter
    from gradience.io import read_json
    from gradience.train.lora_build import ADAPTER_NAME, lora_layers

    layers = lora_layers(peft_model) if hasattr(peft_model, "get_base_model") else {}
    if not layers:
        raise ValueError("export_for_vllm needs a PeftModel with LoRA layers")
    if getattr(peft_model, "active_adapter", ADAPTER_NAME) != ADAPTER_NAME:
        raise ValueError(f"the active adapter must be {ADAPTER_NAME!r}")
    ranks = {name: int(layer.r[ADAPTER_NAME]) for name, layer in layers.items()}
    folder.parent.mkdir(parents=True, exist_ok=True)
    trained = Path(tempfile.mkdtemp(prefix=f".{folder.name}.trained.", dir=folder.parent))
    try:
        peft_model.save_pretrained(
            str(trained), safe_serialization=True, selected_adapters=[ADAPTER_NAME]
        )
        result = truncate_adapter(trained, ranks, folder, uniform=True)
    finally:
        shutil.rmtree(trained, ignore_errors=True)
    config_path = folder / CONFIG_NAME
    check_vllm_adapter_config(read_json(config_path), config_path)  # type: ignore[arg-type]
    return ServedAdapter(folder, max(m.stored_rank for m in result.modules), result)
