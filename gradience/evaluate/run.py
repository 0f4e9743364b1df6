"""Evaluate a base model or a LoRA adapter on the task's fixed eval subset.

Writes ``predictions.jsonl`` (one record per item, in eval order, so statistics can pair items
across variants) and then ``eval.json`` — last, so its presence means the evaluation finished.
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

    from gradience.evaluate.generate import Generation
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


def load_merged_adapter(model: PreTrainedModel, adapter_dir: Path) -> PreTrainedModel:
    """Base model with the adapter merged into its weights (plain forward passes: faster generation)."""
    from peft import PeftModel

    from gradience.models import quiet_peft_deprecations

    with quiet_peft_deprecations():
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    return peft_model.merge_and_unload()


def evaluate_adapter(
    cfg: ExperimentConfig,
    adapter_dir: str | Path | None,
    output_dir: str | Path,
    *,
    task_data: TaskData | None = None,
    progress: Callable[[dict], None] | None = None,
    model_loader: ModelLoader | None = None,
) -> EvalResult:
    """Greedy-generate an answer for every eval item, score it, write eval.json and predictions.jsonl.

    ``adapter_dir`` None evaluates the base model. ``progress`` gets ``{"done", "total"}``
    (items) after every generation batch.
    """
    import torch

    from gradience.evaluate.generate import generate_completions
    from gradience.models import load_model_and_tokenizer
    from gradience.tasks import build_prompt, load_task

    started = time.perf_counter()
    adapter = resolve_adapter_dir(adapter_dir) if adapter_dir is not None else None
    if cfg.env.num_threads:
        torch.set_num_threads(cfg.env.num_threads)
    task_data = task_data if task_data is not None else load_task(cfg.task)
    items = task_data.eval
    if not items:
        raise GradienceError("the task has no eval items", field="task.eval_samples")
    model, tokenizer = (model_loader or load_model_and_tokenizer)(cfg)
    if adapter is not None:
        model = load_merged_adapter(model, adapter)
    model.eval()

    prompts = [build_prompt(cfg.task, example) for example in items]
    done = 0

    def batch_finished(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress({"done": done, "total": len(items)})
        fault_point("eval_batch")

    generation_started = time.perf_counter()
    generations = generate_completions(
        model,
        tokenizer,
        prompts,
        batch_size=cfg.task.eval_batch_size,
        max_new_tokens=cfg.task.max_new_tokens,
        stop_strings=cfg.task.stop_strings,
        progress=batch_finished,
    )
    generation_time = time.perf_counter() - generation_started
    predictions = [
        score(example, prompt, gen)
        for example, prompt, gen in zip(items, prompts, generations, strict=True)
    ]
    generated_tokens = sum(len(gen.token_ids) for gen in generations)

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
        adapter=str(adapter) if adapter is not None else None,
        generation_time_s=generation_time,
        base_model=cfg.model.name,
        task=cfg.task.name,
        max_new_tokens=cfg.task.max_new_tokens,
        eval_batch_size=cfg.task.eval_batch_size,
        config_hash=cfg.config_hash(),
    )
    write_model(output_dir / "eval.json", result)
    return result


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
