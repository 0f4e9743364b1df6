"""Evaluation: batched left-padded greedy generation, stop strings, scoring and the files written."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from gradience.config import ExperimentConfig
from gradience.errors import GradienceError
from gradience.evaluate.generate import (
    Generation,
    finish_completion,
    generate_completions,
    length_sorted_batches,
    text_end,
)
from gradience.evaluate.run import evaluate_adapter, load_adapter, resolve_adapter_dir, score
from gradience.io import read_model
from gradience.models import load_model_and_tokenizer
from gradience.results import EvalResult, Prediction
from gradience.tasks import Example, build_prompt, load_task
from gradience.tasks.gsm8k import answers_match

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def eval_config(**task: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": {"name": "embedded:tiny-mistral-random"},
            "task": {
                "name": "arithmetic",
                "generated_train_size": 32,
                "generated_eval_size": 12,
                "eval_samples": 12,
                "max_new_tokens": 12,
                "eval_batch_size": 5,
                **task,
            },
            "lora": {"probe_r": 4, "lora_alpha": 8},
            "compression": {"allowed_ranks": [1, 2, 4]},
            "env": {"device": "cpu", "torch_dtype": "float32", "num_threads": 1},
        }
    )


def noisy_model_loader(cfg: ExperimentConfig):
    """The embedded random model with seeded weight noise: its greedy outputs vary by prompt
    (the plain random init repeats one token), so equal outputs mean something."""
    model, tokenizer = load_model_and_tokenizer(cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model, tokenizer


@pytest.fixture(scope="module")
def setup():
    cfg = eval_config()
    model, tokenizer = noisy_model_loader(cfg)
    task_data = load_task(cfg.task)
    prompts = [build_prompt(cfg.task, example) for example in task_data.eval]
    return cfg, model, tokenizer, task_data, prompts


def test_length_sorted_batches_cover_every_index_once_longest_first():
    lengths = [5, 9, 1, 9, 3, 7, 2]
    batches = length_sorted_batches(lengths, 3)
    assert sorted(i for batch in batches for i in batch) == list(range(7))
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(lengths, reverse=True)
    assert [len(b) for b in batches] == [3, 3, 1]


def test_left_padded_batched_generation_equals_one_by_one(setup):
    cfg, model, tokenizer, _, prompts = setup
    lengths = {len(tokenizer(p)["input_ids"]) for p in prompts}
    assert len(lengths) > 2, "prompts of different lengths are needed to exercise padding"
    batched = generate_completions(model, tokenizer, prompts, batch_size=5, max_new_tokens=12)
    single = generate_completions(model, tokenizer, prompts, batch_size=1, max_new_tokens=12)
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert [g.text for g in batched] == [g.text for g in single]
    assert len({g.text for g in single}) > len(prompts) // 2, (
        "outputs should differ between prompts"
    )
    assert tokenizer.padding_side == "left"


def test_stop_string_ends_generation_and_cuts_the_completion(setup):
    _, model, tokenizer, _, prompts = setup
    free = generate_completions(model, tokenizer, prompts, batch_size=1, max_new_tokens=12)
    # a stop string that first appears in the middle of some prompt's completion
    candidates = [
        (i, tokenizer.decode(g.token_ids[k : k + 2]))
        for i, g in enumerate(free)
        for k in range(2, len(g.token_ids) - 2)
    ]
    row, stop = next((i, c) for i, c in candidates if c.strip() and free[i].text.find(c) > 0)
    batched = generate_completions(
        model, tokenizer, prompts, batch_size=5, max_new_tokens=12, stop_strings=[stop]
    )
    single = generate_completions(
        model, tokenizer, prompts, batch_size=1, max_new_tokens=12, stop_strings=[stop]
    )
    assert [g.text for g in batched] == [g.text for g in single]
    for got, full in zip(batched, free, strict=True):
        cut = full.text.find(stop)
        assert got.text == (full.text[:cut] if cut >= 0 else full.text)
    assert len(batched[row].token_ids) < len(free[row].token_ids)  # stopped early, not only cut


def test_finish_completion_cuts_at_eos_and_at_the_first_stop_string(setup):
    _, _, tokenizer, _, _ = setup
    ids = tokenizer(" 3+4=7 #### 7\nQuestion: more", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    cut_eos = finish_completion(tokenizer, ids[:5] + [eos] + ids[5:], [])
    assert cut_eos.token_ids == ids[:5] + [eos] and cut_eos.text == tokenizer.decode(ids[:5])
    cut_stop = finish_completion(
        tokenizer, ids + [tokenizer.pad_token_id] * 3, ["\nQuestion:", "more"]
    )
    assert cut_stop.text == " 3+4=7 #### 7"
    assert cut_stop.token_ids == ids


@pytest.mark.parametrize(
    "completion, gold, correct, strict",
    [
        (" 3+4=7 #### 7", "3+4=7 #### 7", True, True),
        (" The answer is -7.", "#### -7", True, False),
        (" The answer is 7.", "#### -7", False, False),
        (" <<3*4=12>> so 1,234.00 #### $1,234", "#### 1234", True, True),
        (" no idea", "#### 5", False, False),
    ],
)
def test_score_uses_flexible_and_strict_extraction(completion, gold, correct, strict):
    example = Example(id="x/1", question="q", answer=gold)
    prediction = score(example, "Question: q\nAnswer:", Generation(text=completion, token_ids=[]))
    assert (prediction.correct, prediction.strict_correct) == (correct, strict)
    assert prediction.gold == example.gold


def test_evaluate_writes_eval_json_and_predictions_in_eval_order(tmp_path, setup):
    cfg, _, _, task_data, prompts = setup
    events = []
    result = evaluate_adapter(
        cfg,
        None,
        tmp_path,
        task_data=task_data,
        progress=events.append,
        model_loader=noisy_model_loader,
    )
    assert read_model(tmp_path / "eval.json", EvalResult).model_dump() == result.model_dump()
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    predictions = [Prediction.model_validate(json.loads(line)) for line in lines]
    assert result.item_ids == [e.id for e in task_data.eval] == [p.id for p in predictions]
    assert [p.prompt for p in predictions] == prompts
    recomputed = [
        answers_match(p.completion, e.answer)
        for p, e in zip(predictions, task_data.eval, strict=True)
    ]
    assert [p.correct for p in predictions] == recomputed
    assert result.exact_match == sum(recomputed) / len(recomputed)
    assert result.n_items == 12 and result.adapter is None
    assert result.generated_tokens > 0 and result.tokens_per_s > 0
    assert events[-1] == {"done": 12, "total": 12} and len(events) == 3  # batches of 5, 5, 2


def test_adapter_folder_problems_are_clear_errors(tmp_path):
    with pytest.raises(GradienceError, match="not a PEFT adapter folder"):
        resolve_adapter_dir(tmp_path)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter" / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(GradienceError, match="no adapter_model.safetensors"):
        resolve_adapter_dir(tmp_path)
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"")  # half-written
    with pytest.raises(GradienceError, match="adapter_model.safetensors: not a safetensors file"):
        resolve_adapter_dir(tmp_path)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert resolve_adapter_dir(tmp_path) == tmp_path / "adapter"


def test_a_completion_ends_with_its_answer_line():
    assert text_end(" 3+4=7 #### 7\nQuestion: 1+1", [], True) == len(" 3+4=7 #### 7")
    assert text_end("#### 7 apples\nmore", [], True) == len("#### 7 apples")
    assert text_end(" #### 7", [], True) is None  # the line may still go on (7 -> 71)
    assert text_end(" ####\n", [], True) is None  # no number yet
    assert text_end(" #### 7\n", [], False) is None
    assert text_end(" 1\nQuestion: #### 7\n", ["\nQuestion:"], True) == 2


def test_finish_completion_stops_at_the_end_of_the_answer_line(setup):
    _, _, tokenizer, _, _ = setup
    ids = tokenizer(" 3+4=7 #### 7\nmore #### 9", add_special_tokens=False)["input_ids"]
    assert finish_completion(tokenizer, ids, [], stop_at_answer=True).text == " 3+4=7 #### 7"
    assert "#### 9" in finish_completion(tokenizer, ids, []).text


def test_merged_and_unmerged_adapters_give_identical_completions_on_cpu(tmp_path, setup):
    """The model scored is the model trained: evaluation keeps LoRA unmerged; on an fp32 CPU
    model merging would change nothing, which is what this pins down."""
    from gradience.train.lora_build import build_peft_model, target_module_names

    cfg, _, tokenizer, _, prompts = setup
    base, _ = noisy_model_loader(cfg)
    names = target_module_names(base, cfg.lora.target_modules)
    ranks = {n: (1, 2, 4)[i % 3] for i, n in enumerate(names)}
    peft_model, _ = build_peft_model(base, ranks, cfg.lora)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # a trained-looking adapter: B is no longer zero
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    peft_model.save_pretrained(str(tmp_path / "adapter"))

    unmerged = load_adapter(noisy_model_loader(cfg)[0], tmp_path / "adapter")
    merged = load_adapter(noisy_model_loader(cfg)[0], tmp_path / "adapter").merge_and_unload()
    plain = noisy_model_loader(cfg)[0]
    outputs = {
        label: [
            g.text
            for g in generate_completions(
                model, tokenizer, prompts, batch_size=5, max_new_tokens=12
            )
        ]
        for label, model in (("unmerged", unmerged), ("merged", merged), ("base", plain))
    }
    assert outputs["unmerged"] == outputs["merged"]
    assert outputs["unmerged"] != outputs["base"]  # the adapter does change the completions
