"""Evaluation under memory pressure and early stopping: an out-of-memory batch is halved and
retried with the same predictions; finished rows leave the batch with the same tokens."""

from __future__ import annotations

import logging

import pytest
import torch

from gradience.config import ExperimentConfig
from gradience.errors import GradienceError
from gradience.evaluate.generate import GenerationStats, generate_completions, text_end
from gradience.evaluate.run import evaluate_model
from gradience.io import read_model
from gradience.models import load_model_and_tokenizer
from gradience.results import EvalResult
from gradience.tasks import build_prompt, load_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(model: str = "embedded:tiny-mistral-random", **task: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": {"name": model},
            "task": {
                "name": "arithmetic",
                "generated_train_size": 32,
                "generated_eval_size": 40,
                "eval_samples": 12,
                "max_new_tokens": 12,
                "eval_batch_size": 5,
                **task,
            },
            "env": {"device": "cpu", "torch_dtype": "float32", "num_threads": 1},
        }
    )


def noisy(cfg: ExperimentConfig, scale: float = 0.05):
    """The embedded model with seeded weight noise, so that greedy outputs vary by prompt."""
    model, tokenizer = load_model_and_tokenizer(cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model.eval(), tokenizer


def run_out_of_memory(model, monkeypatch, rows_that_fit: int) -> list[int]:
    """Make ``model`` raise torch.OutOfMemoryError on every decoding step (not the prefill)
    of a batch wider than ``rows_that_fit``; returns the list of refused widths."""
    forward = model.forward
    refused: list[int] = []

    def short_of_memory(*args, **kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[0] > rows_that_fit and ids.shape[1] == 1:
            refused.append(ids.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", short_of_memory)
    return refused


def test_an_out_of_memory_batch_is_halved_and_retried_with_identical_predictions(
    tmp_path, monkeypatch, caplog
):
    cfg = config()
    model, tokenizer = noisy(cfg)
    task_data = load_task(cfg.task)
    reference = evaluate_model(cfg, model, tokenizer, tmp_path / "ref", task_data=task_data)
    assert reference.oom_retries == 0 and reference.eval_batch_size_final == 5

    refused = run_out_of_memory(model, monkeypatch, rows_that_fit=2)
    events = []
    with caplog.at_level(logging.WARNING, logger="gradience.evaluate.generate"):
        result = evaluate_model(
            cfg, model, tokenizer, tmp_path / "oom", task_data=task_data, progress=events.append
        )
    assert refused == [5]  # the first batch failed once, mid-decoding; then batches of 2
    assert (tmp_path / "oom" / "predictions.jsonl").read_text() == (
        tmp_path / "ref" / "predictions.jsonl"
    ).read_text()
    assert result.generated_tokens == reference.generated_tokens
    written = read_model(tmp_path / "oom" / "eval.json", EvalResult)
    assert (written.eval_batch_size, written.eval_batch_size_final, written.oom_retries) == (
        5,
        2,
        1,
    )
    assert "out of memory on a batch of 5 prompts" in caplog.text
    assert "batch size 2" in caplog.text
    assert [e["done"] for e in events] == [2, 4, 6, 8, 10, 12]


def test_only_a_single_prompt_out_of_memory_fails_and_the_cache_is_emptied_between_retries(
    monkeypatch,
):
    cfg = config()
    model, tokenizer = noisy(cfg)
    prompts = [build_prompt(cfg.task, e) for e in load_task(cfg.task).eval][:4]
    run_out_of_memory(model, monkeypatch, rows_that_fit=0)
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    stats = GenerationStats()
    with pytest.raises(GradienceError, match="out of device memory on a single prompt") as err:
        generate_completions(model, tokenizer, prompts, batch_size=4, max_new_tokens=6, stats=stats)
    assert "task.max_new_tokens" in str(err.value)
    assert stats.oom_retries == 2 and len(emptied) == 2  # 4 -> 2 -> 1, then the error


def test_finished_rows_leave_the_batch_and_every_row_keeps_its_greedy_tokens():
    """Rows of one batch end at different steps (the end of the answer line); dropping them
    changes no row's tokens: the same as decoding each prompt alone, which is a prefix of
    what transformers' own generate() produces for it."""
    cfg = config("embedded:tiny-mistral", eval_samples=24, max_new_tokens=24)
    model, tokenizer = noisy(cfg)
    prompts = [build_prompt(cfg.task, e) for e in load_task(cfg.task).eval]
    settings = dict(max_new_tokens=24, stop_strings=cfg.task.stop_strings, stop_at_answer=True)
    stats = GenerationStats()
    batched = generate_completions(model, tokenizer, prompts, batch_size=8, stats=stats, **settings)
    single = generate_completions(model, tokenizer, prompts, batch_size=1, **settings)
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert [g.text for g in batched] == [g.text for g in single]
    lengths = [len(g.token_ids) for g in batched]
    assert min(lengths) < max(lengths) == 24, "rows should end at different steps"
    assert sum(text_end(g.text + "\n", [], True) is not None for g in batched) > len(prompts) // 2
    # finished rows cost nothing once dropped: fewer row-steps than running every batch out
    assert sum(lengths) <= stats.row_steps < stats.row_steps_unpruned
    assert stats.row_steps_unpruned == sum(
        8 * max(lengths[i] for i in batch) for batch in batches_of(tokenizer, prompts, 8)
    )
    for prompt, got in zip(prompts[:6], batched, strict=False):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            full = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=24,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )[0, ids.shape[1] :].tolist()
        assert full[: len(got.token_ids)] == got.token_ids


def batches_of(tokenizer, prompts, size):
    from gradience.evaluate.generate import length_sorted_batches, prompt_token_ids

    return length_sorted_batches([len(prompt_token_ids(tokenizer, p)) for p in prompts], size)
