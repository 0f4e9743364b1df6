"""``task.eval_backend: vllm``: greedy evaluation of the MERGED model with vLLM.

vLLM applies one alpha/r to a whole LoRA adapter and ignores PEFT's ``rank_pattern`` and
``alpha_pattern``: handed a heterogeneous adapter unmerged, it would score a different model
from the one trained. So vLLM never sees an adapter: :func:`save_merged_model` writes the base
model with every module's update folded in, W + s·B·A computed in float32 and saved in
float32 (no rounding into bf16 weights), and vLLM serves that folder in float32.

The decoding matches the HF path (:func:`gradience.evaluate.generate.generate_completions`):
the same prompt token ids (BOS as training saw it), greedy (``temperature=0``), the same
``max_new_tokens``, the stop strings, and the same cut of the text (:func:`text_end`: the
first stop string or the end of the ``#### N`` line), so the scored completions are the same
function of the model. vLLM cannot stop at a regular expression, so a row decodes past its
answer line to its next stop (or the budget); the text scored is cut at the same place.

vLLM is an optional extra (``pip install 'gradience[vllm]'``, CUDA only); without it an
evaluation that asks for it stops with a GradienceError naming ``task.eval_backend``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradience.errors import GradienceError

MERGED_DIR = "merged_model"


def require_vllm() -> Any:
    """The ``vllm`` module, or a GradienceError saying how to get it or turn it off."""
    try:
        import vllm
    except ImportError:
        raise GradienceError(
            "the vllm evaluation backend needs vLLM (CUDA only): pip install 'gradience[vllm]', "
            "or set task.eval_backend: hf",
            field="task.eval_backend",
        ) from None
    return vllm


def merged_state_dict(model: Any) -> dict[str, Any]:
    """The base model's weights with every LoRA update folded in, float32, names as the base
    model's own (no ``base_layer``, no ``lora_*``). The model itself is left untouched."""
    import torch
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    merged: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, tensor in base.state_dict().items():
            if ".lora_" in name:
                continue
            merged[name.replace(".base_layer.", ".")] = tensor.detach().to(torch.float32)
        for name, module in base.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            weight = f"{name}.weight"
            for adapter in module.active_adapters:
                delta = module.get_delta_weight(adapter).to(torch.float32)
                merged[weight] = merged[weight] + delta.to(merged[weight].device)
    return {name: tensor.contiguous().cpu() for name, tensor in merged.items()}


def save_merged_model(model: Any, tokenizer: Any, folder: Path) -> Path:
    """Write the merged model (float32 safetensors, config, tokenizer) to ``folder``."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    folder.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(str(folder), state_dict=merged_state_dict(model), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    for key in ("torch_dtype", "dtype"):
        config[key] = str(torch.float32).removeprefix("torch.")
    config_file.write_text(json.dumps(config, indent=2))
    return folder


def vllm_generate(
    folder: Path,
    prompt_ids: Sequence[list[int]],
    *,
    max_new_tokens: int,
    stop_strings: Sequence[str],
    stop_at_answer: bool,
    tokenizer: Any,
) -> list[Any]:
    """Greedy completions of the merged model in ``folder``, one :class:`Generation` per prompt."""
    import torch

    from gradience.evaluate.generate import Generation, text_end

    vllm = require_vllm()
    free, total = torch.cuda.mem_get_info()
    llm = vllm.LLM(
        model=str(folder),
        tokenizer=str(folder),
        dtype="float32",
        gpu_memory_utilization=0.9 * free / total,  # the trained model may still be resident
        enforce_eager=False,
    )
    params = vllm.SamplingParams(
        temperature=0.0,
        max_tokens=max_new_tokens,
        stop=[s for s in stop_strings if s] or None,
        skip_special_tokens=True,
    )
    outputs = llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids], params)
    generations = []
    for output in outputs:
        completion = output.outputs[0]
        ids = list(completion.token_ids)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        end = text_end(text, stop_strings, stop_at_answer)
        generations.append(Generation(text=text if end is None else text[:end], token_ids=ids))
    del llm
    return generations
