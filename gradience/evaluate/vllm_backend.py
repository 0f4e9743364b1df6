"""``task.eval_backend: vllm``: greedy evaluation through vLLM's own LoRA support.

What is served. vLLM loads the base model once, from ``model.name`` (a hub id or a folder; no
merged or copied base is ever written), and each evaluated adapter is handed to it as a LoRA:
the in-memory adapter written as a uniform export (:mod:`gradience.evaluate.vllm_export`:
each module's scaling folded into lora_B, one zero-padded rank R, ``lora_alpha = r``), so
the update vLLM applies in every module is the one trained. The base model's evaluation is
the same engine with no LoRA request.

vLLM's API as this module uses it (vLLM >= 0.10), read in vLLM's source
(github.com/vllm-project/vllm; the files are named below, from v0.9-era ``entrypoints/llm.py``
to the v0.14.0 ``config/lora.py``):

* ``vllm.LLM(model, dtype=..., enable_lora=True, max_lora_rank=M, max_loras=1,
  enable_sleep_mode=True, gpu_memory_utilization=..., ...)``: vllm/entrypoints/llm.py
  (keywords beyond its own go to ``EngineArgs``). M must be one of vLLM's allowed ranks
  (:data:`~gradience.evaluate.vllm_export.VLLM_MAX_LORA_RANKS`); it is the smallest one at
  or above ``lora.probe_r`` (every variant's ranks are capped at it), so one engine holds
  every adapter of a run.
* ``llm.generate([{"prompt_token_ids": ids}, ...], SamplingParams(...),
  lora_request=LoRARequest(lora_name, lora_int_id, lora_path), use_tqdm=False)``: the
  ``LoRARequest`` fields are those of vllm/lora/request.py, whose docstring says
  "lora_int_id must be globally unique for a given adapter" (vLLM caches adapters by id):
  each evaluation gets a new id from a process-wide counter.
* ``llm.sleep(level=1)`` / ``llm.wake_up()`` (vllm/entrypoints/llm.py; docs "Sleep Mode"):
  level 1 copies the weights to CPU memory and drops the KV cache, giving the GPU memory
  back; ``wake_up`` restores them. Each evaluation's adapter has a new id, so it is loaded
  afresh after a wake-up, never taken from before the sleep.
* LoRA weights are cast to ``lora_dtype``, by default the model's dtype
  (``LoRAConfig.verify_with_model_config``, vllm/config/lora.py), and the punica kernels
  take float16 or bfloat16 only (``assert inputs.dtype in [torch.float16, torch.bfloat16]``
  in vllm/lora/ops/triton_ops, lora_shrink / lora_expand), so a float32 run cannot be
  served with a LoRA (:func:`check_vllm_config` refuses it). On a bfloat16 base vLLM
  computes B′·(A′·x) in bfloat16, where PEFT computes B·(A·x) in float32 and scales it; the
  update is the same, its rounding is not. :func:`gradience.evaluate.vllm_parity.vllm_parity`
  measures greedy-token agreement with the unmerged transformers path on a GPU.

One engine per process. Creating an engine costs a minute (weights, CUDA graphs), so the
first evaluation creates it and every later one in the same process (a local run, or a Ray
worker) reuses it: the cache is keyed by :class:`EngineSettings`. Between evaluations the
engine sleeps, so the next job's training has the GPU memory back; the engine is sized to
0.9 of the memory free when it is created, with the trained model resident.

Decoding matches the transformers path (:func:`gradience.evaluate.generate.generate_completions`):
the same prompt token ids (BOS as training saw it), greedy (``temperature=0``), the same
``max_new_tokens``, the stop strings, and the same cut of the text
(:func:`~gradience.evaluate.generate.finish_completion`: EOS, then the first stop string or the
end of the ``#### N`` line). vLLM cannot stop at a regular expression, so a row decodes past
its answer line to its next stop (or the budget); the text scored is cut at the same place.

vLLM is an optional extra (``pip install 'gradience[vllm]'``, CUDA only); without it an
evaluation that asks for it stops with a GradienceError naming ``task.eval_backend``. vLLM's
engine runs in a child process started with ``spawn`` once CUDA is in use, so a script that
evaluates through it needs the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gradience.errors import GradienceError

if TYPE_CHECKING:
    from gradience.config import ExperimentConfig, ModelConfig
    from gradience.evaluate.generate import Generation
    from gradience.evaluate.vllm_export import ServedAdapter

#: The oldest vLLM whose API this module relies on (sleep mode, PEFTHelper, TokensPrompt).
MIN_VLLM_VERSION = "0.10"
#: Share of the GPU memory free at creation that the engine may take (weights + KV cache).
FREE_MEMORY_FRACTION = 0.9

log = logging.getLogger(__name__)

_LORA_IDS = itertools.count(1)  # vLLM requires ids > 0, unique per adapter


def vllm_unavailable_reason() -> str | None:
    """Why vLLM cannot run here (not installed, no CUDA), or None when it can."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install 'gradience[vllm]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (vLLM's LoRA serving needs CUDA)"
    return None


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
    from packaging.version import Version

    if Version(vllm.__version__).release < Version(MIN_VLLM_VERSION).release:
        raise GradienceError(
            f"vLLM {vllm.__version__} is older than {MIN_VLLM_VERSION}, the first whose LoRA "
            "and sleep-mode API this backend uses: pip install -U 'gradience[vllm]'",
            field="task.eval_backend",
        )
    return vllm


def check_vllm_config(cfg: ExperimentConfig) -> None:
    """GradienceError naming the field for a config vLLM cannot evaluate as trained."""
    from gradience.evaluate.vllm_export import choose_max_lora_rank
    from gradience.models.embedded import PRETRAINED_NAME

    if cfg.lora.bias != "none":
        raise GradienceError(
            "vLLM serves no trained biases; use 'none' or task.eval_backend: hf", field="lora.bias"
        )
    if cfg.model.gguf_file is not None:
        raise GradienceError(
            "vLLM would load the GGUF file's quantized weights, not the dense weights trained on; "
            "use task.eval_backend: hf",
            field="model.gguf_file",
        )
    if cfg.model.name.startswith("embedded:") and cfg.model.name != PRETRAINED_NAME:
        raise GradienceError(
            "vLLM loads the base model from a folder and this model has none; use "
            f"{PRETRAINED_NAME!r}, a path or a hub id",
            field="model.name",
        )
    if cfg.env.device not in ("auto", "cuda"):
        raise GradienceError(
            f"vLLM runs on CUDA only, not on {cfg.env.device!r}", field="env.device"
        )
    if cfg.env.torch_dtype == "float32":
        raise GradienceError(
            "vLLM's LoRA kernels take float16 or bfloat16 only; use 'auto', 'bfloat16' or "
            "'float16', or task.eval_backend: hf",
            field="env.torch_dtype",
        )
    choose_max_lora_rank(cfg.lora.probe_r)


def served_model(cfg: ExperimentConfig) -> str:
    """What vLLM loads for ``model.name``: the hub id or folder, or the embedded model's folder."""
    from gradience.models.hub import resolve_model_name

    if cfg.model.name.startswith("embedded:"):
        from gradience.models.embedded import (
            PRETRAINED_NAME,
            RECIPE_FILE,
            cached_model_dir,
            shipped_model_dir,
        )

        if cfg.model.name != PRETRAINED_NAME:
            raise GradienceError(
                "vLLM loads the base model from a folder and this model has none; use "
                f"{PRETRAINED_NAME!r}, a path or a hub id",
                field="model.name",
            )
        for folder in (shipped_model_dir(), cached_model_dir()):
            if (folder / RECIPE_FILE).is_file():
                return str(folder)
        raise GradienceError(
            "the embedded model is not on disk yet (load it once with the hf backend)",
            field="model.name",
        )
    return resolve_model_name(cfg.model.name)


@dataclass(frozen=True)
class EngineSettings:
    """Everything an engine is built from; an engine serves any request whose settings it holds."""

    model: str
    revision: str | None
    dtype: str
    max_lora_rank: int
    trust_remote_code: bool

    def holds(self, wanted: EngineSettings) -> bool:
        """Same base model and dtype, and room for ``wanted``'s adapter rank."""
        same = (self.model, self.revision, self.dtype, self.trust_remote_code) == (
            wanted.model,
            wanted.revision,
            wanted.dtype,
            wanted.trust_remote_code,
        )
        return same and self.max_lora_rank >= wanted.max_lora_rank


def engine_settings(cfg: ExperimentConfig, adapter_rank: int | None = None) -> EngineSettings:
    """The engine for ``cfg``: room for ``lora.probe_r`` (and ``adapter_rank`` if larger)."""
    from gradience.evaluate.vllm_export import choose_max_lora_rank
    from gradience.models import resolve_dtype

    model_cfg = cfg.model
    return EngineSettings(
        model=served_model(cfg),
        revision=cfg.model.revision,
        dtype=str(resolve_dtype(cfg.env)).removeprefix("torch."),
        max_lora_rank=choose_max_lora_rank(max(cfg.lora.probe_r, adapter_rank or 0)),
        trust_remote_code=model_cfg.trust_remote_code,
    )


@dataclass
class _Engine:
    settings: EngineSettings
    llm: Any
    asleep: bool = False


#: This process's engine (at most one: the GPU holds one), by the settings it was built from.
_ENGINES: dict[EngineSettings, _Engine] = {}


def _create_engine(settings: EngineSettings, model_cfg: ModelConfig) -> Any:
    import torch

    from gradience.models import release_memory

    vllm = require_vllm()
    release_memory()  # PyTorch's cached blocks (the training step's) go back to the device
    free, total = torch.cuda.mem_get_info()
    return vllm.LLM(
        model=settings.model,
        tokenizer=settings.model,
        revision=settings.revision,
        tokenizer_revision=settings.revision,
        dtype=settings.dtype,
        trust_remote_code=model_cfg.trust_remote_code,  # only ever the config's own switch
        enable_lora=True,
        max_lora_rank=settings.max_lora_rank,
        max_loras=1,
        enable_sleep_mode=True,
        enable_prefix_caching=False,  # no state carried from one evaluation to the next
        gpu_memory_utilization=FREE_MEMORY_FRACTION * free / total,
        seed=0,
    )


def awake_engine(settings: EngineSettings, model_cfg: ModelConfig) -> _Engine:
    """This process's engine for ``settings`` (built from ``model_cfg``), created on first use
    and woken if asleep."""
    engine = next((e for e in _ENGINES.values() if e.settings.holds(settings)), None)
    if engine is None:
        release_vllm_engine()  # a different base or a larger rank: the old engine must go
        engine = _ENGINES[settings] = _Engine(settings, _create_engine(settings, model_cfg))
    elif engine.asleep:
        from gradience.models import release_memory

        release_memory()  # the memory the engine had before it slept must be free again
        engine.llm.wake_up()
        engine.asleep = False
    return engine


def _put_to_sleep(engine: _Engine) -> None:
    """Give the GPU memory back until the next evaluation. An engine that cannot sleep (its
    core died, say) is shut down rather than left holding the memory training needs; a
    later evaluation makes a new one."""
    try:
        engine.llm.sleep(level=1)
        engine.asleep = True
    except Exception:
        log.warning("vLLM's engine could not sleep; shutting it down", exc_info=True)
        release_vllm_engine()


def release_vllm_engine() -> None:
    """Shut this process's engine down and free its memory (a later evaluation makes a new one)."""
    from gradience.models import release_memory

    while _ENGINES:
        _, engine = _ENGINES.popitem()
        core = getattr(getattr(engine.llm, "llm_engine", None), "engine_core", None)
        if hasattr(core, "shutdown"):
            with contextlib.suppress(Exception):  # already down: nothing left to free
                core.shutdown()
        del engine
    release_memory()


def vllm_generate(
    cfg: ExperimentConfig,
    prompt_ids: Sequence[list[int]],
    *,
    adapter: ServedAdapter | None,
    tokenizer: Any,
) -> list[Generation]:
    """Greedy completions of the base model with ``adapter`` (None: the base alone), one
    :class:`~gradience.evaluate.generate.Generation` per prompt, in the prompts' order, under
    the HF path's rule: ``task.max_new_tokens``, ``task.stop_strings``, cut after the answer
    line."""
    from gradience.evaluate.generate import finish_completion

    stop_strings = cfg.task.stop_strings

    vllm = require_vllm()
    from vllm.lora.request import LoRARequest

    engine = awake_engine(engine_settings(cfg, adapter.rank if adapter else None), cfg.model)
    params = vllm.SamplingParams(
        temperature=0.0,
        max_tokens=cfg.task.max_new_tokens,
        stop=[s for s in stop_strings if s] or None,
        skip_special_tokens=True,
    )
    request = None
    if adapter is not None:
        lora_id = next(_LORA_IDS)
        request = LoRARequest(f"gradience-{lora_id}", lora_id, str(adapter.folder))
    try:
        outputs = engine.llm.generate(
            [{"prompt_token_ids": list(ids)} for ids in prompt_ids],
            params,
            lora_request=request,
            use_tqdm=False,
        )
    finally:
        _put_to_sleep(engine)
    return [
        finish_completion(
            tokenizer, list(output.outputs[0].token_ids), stop_strings, stop_at_answer=True
        )
        for output in outputs
    ]
