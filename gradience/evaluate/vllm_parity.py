"""Does vLLM, serving the uniform export, decode like the unmerged PeftModel? (GPU check)

:func:`vllm_parity` runs the same prompts greedily through both paths the evaluation can
take — transformers with the adapter unmerged (``task.eval_backend: hf``) and vLLM with the
adapter as a LoRA (``vllm``), through the same cached engine and sleep/wake cycle an
evaluation uses — and returns a JSON-ready dict. Without vLLM or CUDA it returns
``{"status": "skipped", "reason": ...}`` at once, so a check script can always call it.

What "match" means. The transformers path stops a row at the end of its ``#### N`` line;
vLLM cannot stop at a pattern and decodes on to its next stop, so a row's tokens match when
vLLM's begin with all of the transformers path's. The scored texts (cut the same way) are
compared too. On a bfloat16 base the two engines round differently (see
:mod:`gradience.evaluate.vllm_backend`), so agreement below 1.0 is expected where two tokens
are nearly tied; the first mismatch is returned for a look.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradience.config import ExperimentConfig
    from gradience.evaluate.generate import Generation
    from gradience.evaluate.vllm_export import ServedAdapter

log = logging.getLogger(__name__)


def vllm_parity(
    cfg: ExperimentConfig,
    *,
    n_prompts: int = 32,
    adapter_dir: str | Path | None = None,
    lora_b_std: float = 0.02,
    seed: int = 0,
) -> dict[str, Any]:
    """Greedy tokens of vLLM + LoRA against the unmerged transformers path on ``n_prompts``.

    ``cfg``: the model, task, dtype and decoding settings (``task.eval_backend`` is ignored:
    both backends run). ``adapter_dir``: a trained PEFT adapter; None: a heterogeneous one
    built here (ranks cycling through ``compression.allowed_ranks`` up to ``lora.probe_r``,
    ``lora.alpha_policy`` applied, lora_B drawn with ``lora_b_std`` from ``seed``), the case
    where a served adapter with one alpha/r would go wrong.

    Returns ``status``: "skipped" (no vLLM, no CUDA, or a config vLLM cannot serve) or
    "failed" (an exception on the way), each with ``reason``; or "ok" with
    ``token_match_fraction``, ``text_match_fraction``, ``first_mismatch`` (None, or the
    prompt index, the first differing token position and both texts),
    ``base_token_match_fraction`` (the same with no LoRA on either side),
    ``lora_changes_output_fraction`` (vLLM rows whose text the LoRA changed: 0 would mean
    the adapter was not applied; ``hf_lora_changes_output_fraction`` is the same for the
    transformers path, to compare with), ``wake_consistent`` (a second vLLM run after a
    sleep/wake cycle gave the same tokens), ``export_rank``, ``max_lora_rank``,
    ``n_prompts``, ``wall_s``.
    """
    from gradience.errors import GradienceError
    from gradience.evaluate.vllm_backend import check_vllm_config, vllm_unavailable_reason

    started = time.perf_counter()
    reason = vllm_unavailable_reason()
    if reason is None:
        try:
            check_vllm_config(cfg)
        except GradienceError as error:
            reason = str(error)
    if reason is not None:
        return {"status": "skipped", "reason": reason}
    try:
        result = _run(cfg, n_prompts, adapter_dir, lora_b_std, seed)
    except Exception as error:  # a check reports its failure; it does not stop the script
        log.exception("the vLLM parity check failed")
        return {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
    return {"status": "ok", **result, "wall_s": round(time.perf_counter() - started, 2)}


def _run(
    cfg: ExperimentConfig,
    n_prompts: int,
    adapter_dir: str | Path | None,
    lora_b_std: float,
    seed: int,
) -> dict[str, Any]:
    from gradience.evaluate.generate import generate_completions, prompt_token_ids
    from gradience.evaluate.run import eval_batch_size, load_adapter, resolve_adapter_dir
    from gradience.evaluate.vllm_backend import (
        engine_settings,
        release_vllm_engine,
        vllm_generate,
    )
    from gradience.evaluate.vllm_export import export_for_vllm
    from gradience.models import load_model_and_tokenizer, release_memory
    from gradience.tasks import build_prompt, load_task

    model, tokenizer = load_model_and_tokenizer(cfg)
    if adapter_dir is not None:
        model = load_adapter(model, resolve_adapter_dir(adapter_dir))
    else:
        model = random_heterogeneous_adapter(model, cfg, lora_b_std, seed)
    model.eval()
    prompts = [build_prompt(cfg.task, item) for item in load_task(cfg.task).eval[:n_prompts]]
    batch = eval_batch_size(cfg, model, tokenizer, prompts).size

    def hf(peft_model: Any) -> list[Generation]:
        return generate_completions(
            peft_model,
            tokenizer,
            prompts,
            batch_size=batch,
            max_new_tokens=cfg.task.max_new_tokens,
            stop_strings=cfg.task.stop_strings,
            stop_at_answer=True,
        )

    hf_lora = hf(model)
    with model.disable_adapter():
        hf_base = hf(model)

    ids = [prompt_token_ids(tokenizer, p) for p in prompts]
    scratch = Path(tempfile.mkdtemp(prefix="gradience-vllm-parity."))

    def vllm(adapter: ServedAdapter | None) -> list[Generation]:
        return vllm_generate(
            cfg,
            ids,
            adapter=adapter,
            tokenizer=tokenizer,
        )

    try:
        served = export_for_vllm(model, scratch / "adapter")
        vllm_lora = vllm(served)
        vllm_base = vllm(None)
        vllm_again = vllm(served)  # after a sleep/wake cycle of the same engine
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        release_vllm_engine()  # a check leaves the GPU as it found it
        del model
        release_memory()

    lora = compare(hf_lora, vllm_lora)
    return {
        "n_prompts": len(prompts),
        "token_match_fraction": lora["token_match_fraction"],
        "text_match_fraction": lora["text_match_fraction"],
        "first_mismatch": lora["first_mismatch"],
        "base_token_match_fraction": compare(hf_base, vllm_base)["token_match_fraction"],
        "lora_changes_output_fraction": _fraction(
            a.text != b.text for a, b in zip(vllm_lora, vllm_base, strict=True)
        ),
        "hf_lora_changes_output_fraction": _fraction(
            a.text != b.text for a, b in zip(hf_lora, hf_base, strict=True)
        ),
        "wake_consistent": [g.token_ids for g in vllm_again] == [g.token_ids for g in vllm_lora],
        "export_rank": served.rank,
        "max_lora_rank": engine_settings(cfg, served.rank).max_lora_rank,
    }


def compare(reference: Sequence[Generation], served: Sequence[Generation]) -> dict[str, Any]:
    """Agreement of ``served`` (vLLM) with ``reference`` (transformers), row by row.

    A row's tokens match when ``served``'s begin with all of ``reference``'s (vLLM decodes
    past the answer line the transformers path stops at); its text matches when the scored
    completions are equal.
    """
    token_match = [
        list(s.token_ids[: len(r.token_ids)]) == list(r.token_ids)
        for r, s in zip(reference, served, strict=True)
    ]
    first = next((i for i, ok in enumerate(token_match) if not ok), None)
    mismatch = None
    if first is not None:
        ref, got = list(reference[first].token_ids), list(served[first].token_ids)
        position = next(
            (j for j, (a, b) in enumerate(zip(ref, got, strict=False)) if a != b),
            min(len(ref), len(got)),
        )
        mismatch = {
            "index": first,
            "token_position": position,
            "hf_text": reference[first].text,
            "vllm_text": served[first].text,
        }
    return {
        "token_match_fraction": _fraction(token_match),
        "text_match_fraction": _fraction(
            r.text == s.text for r, s in zip(reference, served, strict=True)
        ),
        "first_mismatch": mismatch,
    }


def _fraction(flags: Any) -> float:
    values = list(flags)
    return sum(values) / len(values) if values else 1.0


def random_heterogeneous_adapter(
    model: Any, cfg: ExperimentConfig, lora_b_std: float, seed: int
) -> Any:
    """``model`` wrapped with a LoRA adapter of mixed ranks and a sizeable update everywhere.

    Ranks cycle through ``compression.allowed_ranks`` (those up to ``lora.probe_r``) over the
    adapted modules, so the modules' alpha/r differ; lora_B is drawn from N(0, ``lora_b_std``)
    with ``seed`` (PEFT starts it at zero: no update at all).
    """
    import torch

    from gradience.train.lora_build import build_peft_model, target_module_names

    names = target_module_names(model, cfg.lora.target_modules)
    choices = [r for r in cfg.compression.allowed_ranks if r <= cfg.lora.probe_r] or [
        cfg.lora.probe_r
    ]
    ranks = {name: choices[i % len(choices)] for i, name in enumerate(names)}
    torch.manual_seed(seed)
    peft_model, _ = build_peft_model(model, ranks, cfg.lora, None)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                drawn = torch.randn(parameter.shape, generator=generator) * lora_b_std
                parameter.copy_(drawn.to(parameter.dtype))
    return peft_model
