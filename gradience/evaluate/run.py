"""Evaluate a base model or a LoRA adapter on the task's fixed eval subset.

Writes ``predictions.jsonl`` (one record per item, in eval order, so statistics can pair items
across variants) and then ``eval.json`` — last, so its presence means the evaluation finished.
Both carry gradience's numeric scores (primary) and, when lm-eval is installed, lm-eval's
gsm8k strict-match and flexible-extract scores of the same completions (:mod:`.lmeval_scoring`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gradience.config import ExperimentConfig
from gradience.errors import GradienceError
from gradience.faults import fault_point
from gradience.io import write_model, write_text_atomic
from gradience.results import EvalResult, Prediction

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from gradience.evaluate.batch_size import BatchSize
    from gradience.evaluate.generate import Generation
    from gradience.evaluate.lmeval_scoring import LmevalSummary
    from gradience.tasks import Example, TaskData

ModelLoader = Callable[[ExperimentConfig], "tuple[PreTrainedModel, PreTrainedTokenizerBase]"]


def resolve_adapter_dir(path: str | Path) -> Path:
    """The PEFT adapter folder: ``path`` itself, or ``path/adapter`` (a ``gradience train`` output)."""
    path = Path(path)
    for candidate in (path, path / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            if not (candidate / "adapter_model.safetensors").is_file():
                raise GradienceError(
                    "no adapter_model.safetensors (pickled .bin adapters are not loaded)",
                    path=candidate,
                )
            check_weights_file(candidate / "adapter_model.safetensors")
            return candidate
    raise GradienceError(
        "not a PEFT adapter folder (no adapter_config.json here or in adapter/)", path=path
    )


def check_weights_file(path: Path) -> None:
    """A truncated or foreign file is a GradienceError naming it, not a loader traceback."""
    from gradience.audit.tensors import SafetensorsStream

    SafetensorsStream(path).close()  # checks the header and that every tensor fits the file


def load_adapter(model: PreTrainedModel, adapter_dir: Path) -> PreTrainedModel:
    """The base model with the adapter applied *unmerged*: the model scored is the model trained.

    Merging (``merge_and_unload``) would round W + s·B·A into the base dtype: on a bf16 base the
    scored weights are not the trained ones, and the rounding differs between variants of
    different ranks. Unmerged, every forward pass computes W·x + s·B·(A·x) exactly as training
    did. (On an fp32 base the two agree; a test checks their completions are identical.)
    """
    from peft import PeftModel

    from gradience.models import quiet_peft_deprecations

    with quiet_peft_deprecations():
        try:
            return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        except RuntimeError as exc:  # torch's load_state_dict: the adapter's shapes are not ours
            if "size mismatch" not in str(exc):
                raise
            first = next(line for line in str(exc).splitlines() if "size mismatch" in line)
            raise GradienceError(
                f"was trained on another base model ({first.strip().rstrip('.')}); give an "
                "adapter trained on the config's model.name",
                path=adapter_dir,
            ) from None


def evaluate_adapter(
    cfg: ExperimentConfig,
    adapter_dir: str | Path | None,
    output_dir: str | Path,
    *,
    task_data: TaskData | None = None,
    progress: Callable[[dict], None] | None = None,
    model_loader: ModelLoader | None = None,
) -> EvalResult:
    """Load the base model (and ``adapter_dir``, unmerged; None: the base model alone), then
    :func:`evaluate_model`; the model is freed afterwards."""
    from gradience.models import load_model_and_tokenizer, release_memory

    adapter = resolve_adapter_dir(adapter_dir) if adapter_dir is not None else None
    task_data = _task_data(cfg, task_data)
    model, tokenizer = (model_loader or load_model_and_tokenizer)(cfg)
    if adapter is not None:
        model = load_adapter(model, adapter)
    try:
        return evaluate_model(
            cfg,
            model,
            tokenizer,
            output_dir,
            task_data=task_data,
            progress=progress,
            adapter_label=str(adapter) if adapter is not None else None,
        )
    finally:
        del model
        release_memory()


def _task_data(cfg: ExperimentConfig, task_data: TaskData | None) -> TaskData:
    from gradience.tasks import load_task

    task_data = task_data if task_data is not None else load_task(cfg.task)
    if not task_data.eval:
        raise GradienceError("the task has no eval items", field="task.eval_samples")
    return task_data


def evaluate_model(
    cfg: ExperimentConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | Path,
    *,
    task_data: TaskData | None = None,
    progress: Callable[[dict], None] | None = None,
    adapter_label: str | None = None,
    batch_size: BatchSize | None = None,
) -> EvalResult:
    """Greedy-generate an answer for every eval item with ``model`` as it is in memory (a
    trained PeftModel, unmerged, or a base model), score it, write eval.json and
    predictions.jsonl.

    ``progress`` gets ``{"done", "total"}`` (items) after every generation batch
    (``task.eval_backend: lm_eval``: once, when lm-eval has generated and scored them all,
    :mod:`.lmeval_backend`).
    ``adapter_label`` is recorded as the result's ``adapter``. ``batch_size``: decided by the
    caller (e.g. once per seed); None: :func:`eval_batch_size` for this model and these items.
    """
    import torch

    from gradience.evaluate.generate import GenerationStats, generate_completions
    from gradience.tasks import build_prompt

    started = time.perf_counter()
    if cfg.env.num_threads:
        torch.set_num_threads(cfg.env.num_threads)
    task_data = _task_data(cfg, task_data)
    items = task_data.eval
    model.eval()

    prompts = [build_prompt(cfg.task, example) for example in items]
    batch_size = batch_size or eval_batch_size(cfg, model, tokenizer, prompts)
    done = 0

    def batch_finished(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress({"done": done, "total": len(items)})
        fault_point("eval_batch")

    decoding = GenerationStats()  # filled by the HF path
    generation_started = time.perf_counter()
    generations: list[Generation] | None = None
    if cfg.task.eval_backend == "lm_eval":  # lm-eval generates and scores: records come back
        from gradience.evaluate.lmeval_backend import evaluate_with_lmeval

        lmeval_run = evaluate_with_lmeval(
            cfg,
            model,
            tokenizer,
            items,
            prompts,
            task_data.train,
            Path(output_dir),
            batch_size=batch_size.size,
        )
        batch_finished(len(prompts))
    elif cfg.task.eval_backend == "vllm":
        generations = generate_with_vllm(
            cfg, model, tokenizer, prompts, Path(output_dir), adapted=adapter_label is not None
        )
        batch_finished(len(prompts))
    else:
        generations = generate_completions(
            model,
            tokenizer,
            prompts,
            batch_size=batch_size.size,
            max_new_tokens=cfg.task.max_new_tokens,
            stop_strings=cfg.task.stop_strings,
            stop_at_answer=True,
            progress=batch_finished,
            stats=decoding,
        )
    generation_time = time.perf_counter() - generation_started
    if generations is None:
        predictions, generated_tokens = lmeval_run.predictions, lmeval_run.generated_tokens
    else:
        predictions = [
            score(example, prompt, gen)
            for example, prompt, gen in zip(items, prompts, generations, strict=True)
        ]
        generated_tokens = sum(len(gen.token_ids) for gen in generations)
    predictions, lmeval = lmeval_scores(cfg, items, predictions)

    output_dir = Path(output_dir)
    write_text_atomic(
        output_dir / "predictions.jsonl", "".join(p.model_dump_json() + "\n" for p in predictions)
    )
    result = EvalResult(
        exact_match=sum(p.correct for p in predictions) / len(predictions),
        strict_match=sum(p.strict_correct for p in predictions) / len(predictions),
        n_items=len(predictions),
        item_ids=[example.id for example in items],
        wall_time_s=time.perf_counter() - started,
        tokens_per_s=generated_tokens / generation_time if generation_time > 0 else 0.0,
        generated_tokens=generated_tokens,
        adapter=adapter_label,
        generation_time_s=generation_time,
        base_model=cfg.model.name,
        task=cfg.task.name,
        max_new_tokens=cfg.task.max_new_tokens,
        eval_batch_size=batch_size.size,
        eval_batch_size_source=batch_size.source,
        eval_batch_size_final=decoding.batch_size_final or None,
        oom_retries=decoding.oom_retries,
        decode_row_steps=decoding.row_steps or None,
        decode_row_steps_unpruned=decoding.row_steps_unpruned or None,
        config_hash=cfg.config_hash(),
        adapter_applied=adapter_applied(cfg, adapter_label),
        primary_metric=cfg.hypothesis.primary_metric,
        eval_backend=cfg.task.eval_backend,
        num_fewshot=cfg.task.num_fewshot if cfg.task.eval_backend == "lm_eval" else None,
        **lmeval.fields(),
    )
    write_model(output_dir / "eval.json", result)
    return result


def lmeval_scores(
    cfg: ExperimentConfig, items: list[Example], predictions: list[Prediction]
) -> tuple[list[Prediction], LmevalSummary]:
    """Every item also scored by lm-eval's gsm8k rules (:mod:`.lmeval_scoring`; null fields
    and a note when lm-eval is not installed). The lm_eval backend's records already carry
    lm-eval's own scores of its run, which are summarised as they are."""
    from gradience.evaluate.lmeval_scoring import add_lmeval_scores, rules_note, summarize

    if cfg.task.eval_backend == "lm_eval":
        return predictions, summarize(predictions, rules_note(generated_by_lmeval=True))
    return add_lmeval_scores(items, predictions)


def adapter_applied(cfg: ExperimentConfig, adapter_label: str | None) -> str | None:
    """How the adapter reached the scored model (None: the base model alone)."""
    if adapter_label is None:
        return None
    if cfg.task.eval_backend == "vllm":
        return (
            "vllm lora, base unmerged (uniform export: each module's scaling folded into "
            "lora_B, zero-padded to one rank, lora_alpha = r)"
        )
    if cfg.task.eval_backend == "lm_eval":
        return "unmerged (lm-eval's HFLM wrapping the PeftModel in memory)"
    return "unmerged"


def generate_with_vllm(
    cfg: ExperimentConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    output_dir: Path,
    *,
    adapted: bool,
) -> list[Generation]:
    """Greedy completions from this process's vLLM engine (:mod:`.vllm_backend`).

    ``adapted``: ``model``'s LoRA adapter, as it is in memory, is written as a uniform export
    to a scratch folder under ``output_dir`` (removed afterwards) and served as a LoRA on the
    base model vLLM loaded; otherwise the base model alone. The base is never merged.
    """
    import shutil
    import tempfile

    from gradience.evaluate.generate import prompt_token_ids
    from gradience.evaluate.vllm_backend import check_vllm_config, require_vllm, vllm_generate
    from gradience.evaluate.vllm_export import ServedAdapter, export_for_vllm

    require_vllm()
    check_vllm_config(cfg)
    prompt_ids = [prompt_token_ids(tokenizer, p) for p in prompts]

    def generate(adapter: ServedAdapter | None) -> list[Generation]:
        return vllm_generate(
            cfg,
            prompt_ids,
            adapter=adapter,
            tokenizer=tokenizer,
        )

    if not adapted:
        return generate(None)
    output_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".vllm_lora.", dir=output_dir))
    try:
        return generate(export_for_vllm(model, scratch / "adapter"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def eval_batch_size(
    cfg: ExperimentConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
) -> BatchSize:
    """``task.eval_batch_size`` if pinned, else sized to the device's free memory for the
    longest of ``prompts`` plus ``max_new_tokens`` (:mod:`gradience.evaluate.batch_size`)."""
    from gradience.evaluate.batch_size import choose_eval_batch_size
    from gradience.evaluate.generate import prompt_token_ids

    pinned = cfg.task.eval_batch_size
    lengths = [] if pinned != "auto" else [len(prompt_token_ids(tokenizer, p)) for p in prompts]
    return choose_eval_batch_size(pinned, model, lengths, cfg.task.max_new_tokens)


def score(example: Example, prompt: str, generation: Generation) -> Prediction:
    """One item's record: flexible (``####`` else last number) and strict (``####`` only) correctness."""
    from gradience.tasks.gsm8k import answers_match, extract_answer, strict_answers_match

    return Prediction(
        id=example.id,
        prompt=prompt,
        completion=generation.text,
        extracted=extract_answer(generation.text),
        gold=example.gold,
        correct=answers_match(generation.text, example.answer),
        strict_correct=strict_answers_match(generation.text, example.answer),
    )
