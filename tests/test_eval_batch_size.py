"""The generation batch size: pinned by the config, or sized to (injected) free memory."""

from __future__ import annotations

import pytest
from transformers import MistralConfig

from gradience.config import ExperimentConfig
from gradience.evaluate.batch_size import (
    CPU_BATCH_SIZE,
    MAX_BATCH_SIZE,
    GenerationShape,
    batch_size_for_memory,
    choose_eval_batch_size,
    generation_bytes_per_row,
)
from gradience.models import load_model_and_tokenizer
from gradience.results import EvalResult

GIB = 1024**3
#: Mistral-7B in bf16 (transformers' MistralConfig defaults are Mistral-7B-v0.1's shape).
MISTRAL = GenerationShape.from_config(MistralConfig(), dtype_bytes=2)


def test_mistral_7b_keeps_128_kib_of_keys_and_values_per_token() -> None:
    # 2 (K and V) x 32 layers x 8 KV heads x 128 dims x 2 bytes
    assert MISTRAL.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 128 * 1024


def test_a_row_costs_its_kv_cache_prefill_and_logits() -> None:
    per_row = generation_bytes_per_row(MISTRAL, prompt_tokens=200, new_tokens=256)
    kv = 128 * 1024 * 456
    assert kv < per_row < 2 * kv  # the KV cache dominates at GSM8K lengths
    longer = generation_bytes_per_row(MISTRAL, prompt_tokens=200, new_tokens=512)
    assert longer - per_row == 128 * 1024 * 256


def test_the_batch_grows_with_free_memory_and_stops_at_the_items_and_the_cap() -> None:
    per_row = generation_bytes_per_row(MISTRAL, prompt_tokens=200, new_tokens=256)
    sizes = [batch_size_for_memory(free * GIB, per_row, 10_000) for free in (1, 4, 16, 64)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert sizes[1] == int(4 * GIB * 0.8) // per_row
    # an H100 with Mistral-7B loaded (~64 GiB free): the 500 eval items in one batch
    assert batch_size_for_memory(64 * GIB, per_row, 500) == 500
    assert batch_size_for_memory(1024 * GIB, per_row, 10_000) == MAX_BATCH_SIZE
    assert batch_size_for_memory(0, per_row, 500) == 1  # never zero: an OOM then says why


def test_a_pinned_batch_size_wins_and_cpu_gets_the_fixed_default() -> None:
    cfg = ExperimentConfig.model_validate(
        {"model": {"name": "embedded:tiny-mistral-random"}, "env": {"device": "cpu"}}
    )
    model, _ = load_model_and_tokenizer(cfg)
    pinned = choose_eval_batch_size(7, model, [30, 40], max_new_tokens=16)
    assert (pinned.size, pinned.source) == (7, "config")
    auto = choose_eval_batch_size("auto", model, [30, 40], max_new_tokens=16)
    assert (auto.size, auto.source) == (CPU_BATCH_SIZE, "cpu default")
    shape = GenerationShape.from_config(model.config, dtype_bytes=4)
    assert shape.kv_bytes_per_token == 2 * shape.layers * shape.kv_heads * shape.head_dim * 4


def test_configs_and_results_from_before_auto_still_load() -> None:
    assert ExperimentConfig().task.eval_batch_size == "auto"
    assert (
        ExperimentConfig.model_validate({"task": {"eval_batch_size": 16}}).task.eval_batch_size
        == 16
    )
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        ExperimentConfig.model_validate({"task": {"eval_batch_size": 0}})
    old = EvalResult.model_validate(
        {
            "schema_version": 1,
            "exact_match": 0.5,
            "strict_match": 0.5,
            "n_items": 2,
            "item_ids": ["a", "b"],
            "wall_time_s": 1.0,
            "tokens_per_s": 3.0,
        }
    )
    assert old.eval_batch_size is None and old.eval_batch_size_source is None
