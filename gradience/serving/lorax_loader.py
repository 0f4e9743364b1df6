"""What LoRAX does with an adapter, read from its source (pure: no I/O).

Source: predibase/lorax at commit a7394ba (main, 2026-05-28; ``lorax-0.4.0`` + 23 commits),
``server/lorax_server/adapters/lora.py`` and ``server/lorax_server/utils/punica.py``:

- ``LoraConfig.load`` keeps only ``r``, ``lora_alpha``, ``use_rslora``, ``target_modules``
  and ``fan_in_fan_out`` of PEFT's config: ``rank_pattern`` and ``alpha_pattern`` are dropped.
- ``Model.load_adapter`` (``models/model.py``) loads one *layer type* at a time, in the
  model's ``ADAPTER_LAYERS`` order (q, k, v, o, gate, up, down, lm_head for the LLaMA-family
  classes: flash_llama, flash_mistral, flash_gemma(2), flash_cohere, flash_granite,
  flash_solar), all with the SAME ``LoraConfig`` object.
- ``LoraWeights.load`` returns None — the whole layer type is skipped — as soon as one layer
  of the base model has no LoRA weights for that type. Otherwise it scales every layer's
  lora_B by ``get_scaling_factor(lora_alpha, config.r, use_rslora)`` (α/r or α/√r), pads
  the ranks with ``pad_rank`` (with the SGMV kernels of LoRAX's GPU image: to 8 when r ≤ 8,
  else up to a multiple of 16, for one GPU), stacks the layers with ``torch.stack`` (which
  fails unless every layer of the type has the same padded rank) and then sets
  ``config.r = padded_rank``. Because the config object is shared, every layer type after
  the first is scaled with the previous type's padded rank, not with the adapter's r: a
  rank-4 adapter with α = 8 gets 2.0 on q_proj and 1.0 on every later type.

So LoRAX serves an adapter exactly only when every type's padded rank equals the config's r
and every module's PEFT scaling is that one α/r. The order of layer types (and whether a type
is served at all) depends on the model class; it is known here for the LLaMA family only,
and modules of other types are reported as unconfirmed unless the order cannot matter.
"""

from __future__ import annotations

from collections import defaultdict

from gradience.results_serving import ServedModule, ServerCheck
from gradience.serving.layout import AdapterLayout, ModuleLayout, scaling
from gradience.serving.rules import peft_scaling, refused, served, summarize

LORAX_SOURCE = (
    "predibase/lorax a7394ba (lorax-0.4.0+23): server/lorax_server/adapters/lora.py "
    "LoraConfig.load, LoraWeights.load, get_scaling_factor; utils/punica.py pad_rank; "
    "models/flash_llama.py ADAPTER_LAYERS"
)
#: ``ADAPTER_LAYERS`` of LoRAX's LLaMA-family model classes, in load order.
LLAMA_LAYER_TYPES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "lm_head",
)
MIN_SGMV_RANK = 8  # utils/punica.py, times the number of GPUs (one here)
SGMV_BLOCK_SIZE = 16


def lorax_padded_rank(rank: int) -> int:
    """``pad_to_min_rank`` for one GPU: 8 when rank ≤ 8, else the next multiple of 16."""
    if rank <= MIN_SGMV_RANK:
        return MIN_SGMV_RANK
    return -(-rank // SGMV_BLOCK_SIZE) * SGMV_BLOCK_SIZE


def _by_type(layout: AdapterLayout) -> dict[str, list[ModuleLayout]]:
    groups: dict[str, list[ModuleLayout]] = defaultdict(list)
    for module in layout.modules:
        groups[module.type].append(module)
    return dict(groups)


def _missing_layers(modules: list[ModuleLayout], n_layers: int) -> list[int]:
    """Layers (of the 0..n_layers-1 the adapter shows) where this type has no module."""
    present = {m.layer for m in modules}
    if None in present:  # lm_head and other unnumbered modules: one "layer"
        return []
    return [i for i in range(n_layers) if i not in present]


def check_lorax(layout: AdapterLayout) -> ServerCheck:
    """LoRAX's loader applied to the adapter's shapes and config (see the module docstring)."""
    config = layout.config
    groups = _by_type(layout)
    layers = [m.layer for m in layout.modules if m.layer is not None]
    n_layers = max(layers) + 1 if layers else 1
    rule = (
        f"one lora_alpha/{'√' if config.use_rslora else ''}r per layer type, r = the config's r "
        "for the first type loaded, then the previous type's padded rank"
    )
    problems: list[str] = []
    padded: dict[str, int] = {}
    for kind, modules in groups.items():
        ranks = {lorax_padded_rank(m.stored_rank) for m in modules}
        if len(ranks) > 1:
            problems.append(
                f"{kind}: ranks {sorted({m.stored_rank for m in modules})} pad to "
                f"{sorted(ranks)}; LoraWeights.load stacks one rank per layer type "
                "(torch.stack fails): LoRAX cannot load this adapter"
            )
        padded[kind] = max(ranks)
    if layout.raw.get("layers_to_transform") is not None:
        problems.append(
            "layers_to_transform: a layer type missing from any layer of the base model is "
            "skipped whole by LoRAX"
        )
    held = sum(padded[m.type] * m.width for m in layout.modules)
    if any("cannot load" in p for p in problems):
        return summarize(
            "lorax",
            LORAX_SOURCE,
            rule,
            refused(layout.modules, problems[0]),
            max_lora_rank=None,
            held_params=held,
            problems=problems,
        )
    unknown = [kind for kind in groups if kind not in LLAMA_LAYER_TYPES]
    order_matters = any(p != config.r for p in padded.values())
    if unknown and order_matters:
        problems.append(
            f"layer types {unknown} are not LLaMA-family names: LoRAX's load order (and whether "
            "it serves them) depends on the model class, so its scaling is unconfirmed here"
        )
        modules = [
            ServedModule(name=m.name, status="unconfirmed", served_rank=padded[m.type])
            for m in layout.modules
        ]
        return summarize(
            "lorax",
            LORAX_SOURCE,
            rule,
            modules,
            max_lora_rank=None,
            held_params=held,
            problems=problems,
        )
    missing = {kind: _missing_layers(mods, n_layers) for kind, mods in groups.items()}
    loaded = [kind for kind in groups if not missing[kind]]
    type_scaling = _type_scalings(loaded, padded, config.r, config.lora_alpha, config.use_rslora)
    modules = []
    for m in layout.modules:
        if m.type in unknown:
            modules.append(
                ServedModule(
                    name=m.name,
                    status="unconfirmed",
                    served_rank=padded[m.type],
                    note="whether LoRAX's model class serves this layer type is unconfirmed",
                )
            )
        elif missing[m.type]:
            modules.append(
                ServedModule(
                    name=m.name,
                    status="dropped",
                    scale_error=1.0,
                    served_rank=None,
                    note=f"{m.type} has no LoRA weights in layer {missing[m.type][0]}: LoRAX "
                    "skips the type",
                )
            )
        else:
            modules.append(served(m, peft_scaling(layout, m), type_scaling[m.type], padded[m.type]))
    if any(m.status == "mis-scaled" for m in modules):
        problems.append(
            "LoRAX drops rank_pattern/alpha_pattern and, after the first layer type, scales with "
            "the previous type's padded rank (LoraWeights.load sets config.r = padded_rank)"
        )
    if any(m.status == "dropped" for m in modules):
        problems.append("a layer type absent from some layer is skipped whole (LoraWeights.load)")
    return summarize(
        "lorax",
        LORAX_SOURCE,
        rule,
        modules,
        max_lora_rank=None,
        held_params=held,
        problems=problems,
    )


def _type_scalings(
    loaded: list[str],
    padded: dict[str, int],
    r: int,
    alpha: float,
    use_rslora: bool,
) -> dict[str, float]:
    """Each loaded layer type's scaling, walking them in load order with the mutated ``r``.

    Types outside the LLaMA-family order only reach here when every padded rank equals r
    (then the order cannot change any scaling); they are walked last. Skipped types never
    reach ``config.r = padded_rank``, so they do not change ``r``.
    """
    order = [t for t in LLAMA_LAYER_TYPES if t in loaded] + [
        t for t in loaded if t not in LLAMA_LAYER_TYPES
    ]
    current, result = r, {}
    for kind in order:
        result[kind] = scaling(alpha, current, use_rslora)
        current = padded[kind]
    return result
