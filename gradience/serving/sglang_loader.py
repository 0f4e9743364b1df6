"""What SGLang does with an adapter, read from its source (pure: no I/O).

Read in the PyPI wheel of SGLang 0.5.23 (2026-10-30), ``sglang/srt/lora/``:

- ``LoRAConfig.__init__`` (``lora_config.py``) keeps ``target_modules``, ``r``,
  ``lora_alpha`` and ``use_dora`` of adapter_config.json; ``rank_pattern``,
  ``alpha_pattern`` and ``use_rslora`` are never read.
- ``LoRAAdapter.__init__`` (``lora.py``) sets ONE ``scaling = lora_alpha / r`` for the
  whole adapter — α/r even for an rsLoRA adapter, whose PEFT scaling is α/√r — and
  ``LoRAManager`` passes that scaling and ``lora_ranks = config.r`` to the kernels.
- ``LoRAMemoryPool.load_lora_weight_to_buffer`` (``mem_pool.py``) copies each module's
  factors into a buffer slice of rank ``config.r`` (times 3 for the stacked q/k/v, 2 for
  gate/up) and asserts that the shapes agree: a module whose stored rank is not the
  top-level r fails to load (and ``LoRAAdapter.normalize_qkv_proj`` concatenates q, k and v,
  which needs their ranks equal). The pool's buffers have ``max_lora_rank`` rows per module
  (``get_lora_A_shape``), ``max_lora_rank`` being ``--max-lora-rank`` or the largest r of
  the adapters given at start (``LoRAManager``), any positive integer; ``can_support``
  refuses an adapter whose r exceeds it. ``LoRAManager.load_lora_adapter`` refuses DoRA.
"""

from __future__ import annotations

from gradience.results_serving import ServerCheck
from gradience.serving.layout import AdapterLayout
from gradience.serving.rules import peft_scaling, refused, served, summarize

SGLANG_SOURCE = (
    "sgl-project/sglang 0.5.23 wheel: sglang/srt/lora/lora_config.py LoRAConfig, lora.py "
    "LoRAAdapter.__init__, mem_pool.py LoRAMemoryPool.load_lora_weight_to_buffer/can_support"
)


def check_sglang(layout: AdapterLayout) -> ServerCheck:
    """SGLang 0.5.23 on ``layout``: one α/r, every module at the top-level rank."""
    config = layout.config
    top = config.lora_alpha / config.r
    rule = f"one lora_alpha/r = {top:.6g} for every module (use_rslora and patterns not read)"
    problems = []
    if layout.raw.get("use_dora"):
        problems.append("DoRA: LoRAManager.load_lora_adapter refuses it")
    other = sorted({m.stored_rank for m in layout.modules if m.stored_rank != config.r})
    if other:
        problems.append(
            f"stored ranks {other} differ from r = {config.r}: the buffer copy in "
            "load_lora_weight_to_buffer asserts rank r for every module, so SGLang cannot load "
            "this adapter"
        )
    held = config.r * sum(m.width for m in layout.modules)
    if problems:
        return summarize(
            "sglang",
            SGLANG_SOURCE,
            rule,
            refused(layout.modules, problems[0]),
            max_lora_rank=config.r,
            held_params=held,
            problems=problems,
        )
    modules = [served(m, peft_scaling(layout, m), top, config.r) for m in layout.modules]
    if any(m.status == "mis-scaled" for m in modules):
        problems.append(
            "SGLang reads neither alpha_pattern nor use_rslora: every module gets lora_alpha/r"
        )
    return summarize(
        "sglang",
        SGLANG_SOURCE,
        rule,
        modules,
        max_lora_rank=config.r,
        held_params=held,
        problems=problems,
    )
