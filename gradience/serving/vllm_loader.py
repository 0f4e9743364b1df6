"""What vLLM does with an adapter, read from its released wheels (pure: no I/O).

Read in the PyPI wheels of vLLM 0.22.0, 0.28.0, 0.30.0, 0.31.0, 0.32.0 and 0.33.0
(``vllm/lora/peft_helper.py``, ``vllm/lora/lora_weights.py``, ``vllm/lora/lora_model.py``,
``vllm/config/lora.py``); the facts up to 0.31 are those :mod:`gradience.evaluate.vllm_export`
documents too.

- **Up to 0.31.0**: ``PEFTHelper.__post_init__`` computes ONE ``vllm_lora_scaling_factor``,
  ``lora_alpha/r`` (``lora_alpha/√r`` when ``use_rslora``), from the top-level fields;
  ``PEFTHelper.from_dict`` drops every key the dataclass does not declare (``rank_pattern``
  and ``alpha_pattern`` among them) and ``LoRALayerWeights.from_config`` gives every module
  that one scaling. ``validate_legal`` compares only the top-level r with ``max_lora_rank``.
- **From 0.32.0**: ``PEFTHelper`` declares both patterns and ``LoRALayerWeights.from_config``
  asks ``PEFTHelper.get_rank_and_scaling(module)``, which matches them with PEFT's own rule
  (first key with ``re.match(rf"(.*\\.)?({key})$", name)``): each module gets PEFT's scaling.
  ``validate_legal`` checks the largest of r and the ``rank_pattern`` values.
- Every version keeps each module's tensors at their stored shapes
  (``LoRAModel.from_lora_tensors``) and holds ``max_lora_rank`` rows per module and adapter
  slot (``create_lora_weights``: ``lora_a_stacked`` of ``max_lora_rank × input_size``): a
  smaller module is zero-padded (exact), a larger one does not fit. ``max_lora_rank`` is one
  of ``MaxLoRARanks`` (``vllm/config/lora.py``: 1, 8, 16, 32, 64, 128, 256, 320, 512 in
  0.33.0); :data:`~gradience.evaluate.vllm_export.VLLM_MAX_LORA_RANKS` is the subset every
  version accepts. ``PEFTHelper`` refuses DoRA and ``modules_to_save``, and adapter biases
  (older releases unless ``bias_enabled``). 0.34.0, published since, was not read.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradience.evaluate.vllm_export import VLLM_MAX_LORA_RANKS
from gradience.results_serving import ServerCheck
from gradience.serving.layout import AdapterLayout, scaling
from gradience.serving.rules import peft_scaling, refused, served, summarize

#: The first release whose PEFTHelper follows rank_pattern/alpha_pattern.
PATTERNS_FROM = (0, 32, 0)
VLLM_SOURCE = (
    "vllm-project/vllm wheels 0.22.0-0.33.0: vllm/lora/peft_helper.py PEFTHelper "
    "(__post_init__, from_dict; get_rank_and_scaling from 0.32.0), vllm/lora/lora_weights.py "
    "LoRALayerWeights.from_config, vllm/config/lora.py MaxLoRARanks"
)


def parse_version(text: str) -> tuple[int, ...]:
    """``"0.31.0"`` → (0, 31, 0); ValueError for anything else."""
    parts = text.strip().lstrip("v").split(".")
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected a vLLM version such as 0.31.0, got {text!r}")
    return tuple(int(p) for p in parts) + (0,) * (3 - len(parts))


def smallest_allowed_rank(rank: int, allowed: Sequence[int]) -> int | None:
    """The smallest allowed ``max_lora_rank`` that holds ``rank`` (None: above them all)."""
    return next((candidate for candidate in sorted(allowed) if candidate >= rank), None)


def _refusals(layout: AdapterLayout) -> list[str]:
    raw = layout.raw
    reasons = []
    if raw.get("use_dora"):
        reasons.append("DoRA: PEFTHelper refuses it ('vLLM does not yet support DoRA')")
    if raw.get("modules_to_save"):
        reasons.append("modules_to_save: PEFTHelper refuses it")
    if raw.get("bias", "none") != "none" or raw.get("lora_bias"):
        reasons.append("trained biases: PEFTHelper.validate_legal refuses them")
    return reasons


def check_vllm(layout: AdapterLayout, version: tuple[int, ...] | None = None) -> ServerCheck:
    """vLLM ``version`` (None: every release up to 0.31.0, the one α/r rule) on ``layout``."""
    config = layout.config
    follows_patterns = version is not None and version >= PATTERNS_FROM
    top = scaling(config.lora_alpha, config.r, config.use_rslora)
    largest = max(
        [config.r, *config.rank_pattern.values(), *(m.stored_rank for m in layout.modules)]
    )
    max_rank = smallest_allowed_rank(largest, VLLM_MAX_LORA_RANKS)
    problems = _refusals(layout)
    if max_rank is None:
        problems.append(
            f"rank {largest} is above the largest max_lora_rank ({max(VLLM_MAX_LORA_RANKS)})"
        )
    named = "vLLM " + (".".join(map(str, version)) if version else "<= 0.31.0")
    rule = (
        "PEFT's rule: each module's α/r from rank_pattern/alpha_pattern"
        if follows_patterns
        else f"one lora_alpha/{'√' if config.use_rslora else ''}r = {top:.6g} for every module"
    ) + f" ({named})"
    if problems:
        modules = refused(layout.modules, problems[0])
    else:
        modules = [
            served(
                m,
                peft_scaling(layout, m),
                peft_scaling(layout, m) if follows_patterns else top,
                max_rank,
                None if m.targeted else "not in target_modules: PEFT ignores it, vLLM loads it",
            )
            for m in layout.modules
        ]
        if any(m.status == "mis-scaled" for m in modules):
            problems.append(
                f"{named} ignores rank_pattern/alpha_pattern (PEFTHelper.from_dict drops them) "
                "and scales every module by the top-level lora_alpha/r; vLLM >= 0.32.0 follows "
                "PEFT (say --vllm-version)"
            )
    held = max_rank * sum(m.width for m in layout.modules) if max_rank else None
    return summarize(
        "vllm",
        VLLM_SOURCE,
        rule,
        modules,
        max_lora_rank=max_rank,
        held_params=held,
        problems=problems,
    )
