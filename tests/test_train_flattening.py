"""Padding-free training: a flattened batch gives the padded batch's loss, and no example sees
another across its boundary; a run trained flattened matches one trained padded."""

from __future__ import annotations

import pytest
import torch
from transformers import DataCollatorWithFlattening

from gradience.config import ExperimentConfig
from gradience.models import load_model_and_tokenizer
from gradience.tasks import load_task
from gradience.train.data import (
    IGNORE_INDEX,
    CompletionCollator,
    encode_examples,
    supports_padding_free,
    training_collator,
)
from gradience.train.run import train_variant

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(**train: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": {"name": "embedded:tiny-mistral-random"},
            "task": {
                "name": "arithmetic",
                "generated_train_size": 48,
                "generated_eval_size": 8,
                "eval_samples": 8,
                "max_seq_length": 64,
            },
            "train": {
                "max_steps": 4,
                "learning_rate": 1e-2,
                "per_device_train_batch_size": 6,
                "warmup_steps": 0,
                "logging_steps": 1,
                "save_steps": None,
                **train,
            },
            "lora": {"probe_r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
            "compression": {"allowed_ranks": [1, 2, 4]},
            "env": {"device": "cpu", "torch_dtype": "float32", "num_threads": 1},
        }
    )


@pytest.fixture(scope="module")
def setup():
    cfg = config()
    model, tokenizer = load_model_and_tokenizer(cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a random model's outputs barely depend on context: sharpen them
        for param in model.parameters():
            if param.dim() == 2:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    data = load_task(cfg.task)
    model.config.use_cache = False  # as in training (gradience.train.run): no KV cache
    features = encode_examples(tokenizer, cfg.task, data.train[:6]).features
    assert len({len(f["input_ids"]) for f in features}) > 1  # different lengths: padding exists
    return model, tokenizer, features


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_flattened_batch_has_the_padded_batch_loss(setup, attention):
    model, tokenizer, features = setup
    model.set_attn_implementation(attention)
    padded = CompletionCollator(pad_token_id=tokenizer.pad_token_id)(features)
    flat = DataCollatorWithFlattening(separator_id=IGNORE_INDEX)(features)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    assert int((flat["labels"] != IGNORE_INDEX).sum()) == int(
        (padded["labels"] != IGNORE_INDEX).sum()
    )
    with torch.no_grad():
        loss_padded = model(**padded).loss
        loss_flat = model(**flat).loss
    assert abs(float(loss_padded) - float(loss_flat)) < 1e-5


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_no_example_attends_across_its_boundary(setup, attention):
    model, _, features = setup
    model.set_attn_implementation(attention)
    flat = DataCollatorWithFlattening(separator_id=IGNORE_INDEX)(features)
    with torch.no_grad():
        logits = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"]).logits[0]
        # negative control: the same row without position ids is one long sequence
        leaky = model(input_ids=flat["input_ids"]).logits[0]
        start = 0
        for feature in features:
            ids = torch.tensor([feature["input_ids"]])
            alone = model(input_ids=ids).logits[0]
            end = start + ids.shape[1]
            torch.testing.assert_close(logits[start:end], alone, rtol=0, atol=1e-5)
            start = end
    second = slice(len(features[0]["input_ids"]), len(features[0]["input_ids"]) + 4)
    assert not torch.allclose(leaky[second], logits[second], atol=1e-3)


def test_auto_flattens_only_where_the_attention_keeps_examples_apart(setup):
    model, tokenizer, _ = setup
    model.set_attn_implementation("sdpa")
    assert supports_padding_free(model)
    assert training_collator(None, model, tokenizer.pad_token_id)[1] is True
    assert training_collator(False, model, tokenizer.pad_token_id)[1] is False


def test_a_run_trained_flattened_matches_one_trained_padded(tmp_path):
    results = {}
    for flag in (False, True):
        results[flag] = train_variant(config(padding_free=flag), 2, 42, tmp_path / str(flag))
    padded, flat = results[False], results[True]
    assert (padded.padding_free, flat.padding_free) == (False, True)
    assert padded.steps == flat.steps == 4
    assert padded.tokens == flat.tokens  # the same real tokens, counted with and without a mask
    for (step_a, loss_a), (step_b, loss_b) in zip(padded.loss_curve, flat.loss_curve, strict=True):
        assert step_a == step_b and loss_a == pytest.approx(loss_b, abs=1e-4)
