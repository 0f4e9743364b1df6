"""The generation batch size: pinned by the config, or sized to (injected) free memory."""

from __future__ import annotations

import pytest
import torch
from transformers import MistralConfig

from gradience.config import ExperimentConfig
from gradience.evaluate.batch_size import (
    CPU_BATCH_SIZE,
    MAX_BATCH_SIZE,
    GenerationShape,
    LoraShape,
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


# ---------------------------------------------------------------- LoRA's prefill temporaries


class LiveBytes:
    """Peak bytes of tensor storage allocated, and still alive, inside a block: every op's
    fresh outputs are counted until Python frees them (a TorchDispatchMode sees every op)."""

    def __init__(self) -> None:
        self.live: dict[int, int] = {}
        self.now = 0
        self.peak = 0

    def mode(self):
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class Track(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                inputs = {
                    t.untyped_storage().data_ptr()
                    for t in tree_flatten((args, kwargs))[0]
                    if isinstance(t, torch.Tensor)
                }
                for t in tree_flatten(out)[0]:
                    if not isinstance(t, torch.Tensor):
                        continue
                    ptr = t.untyped_storage().data_ptr()
                    if ptr in inputs or ptr in tracker.live:  # a view or an in-place result
                        continue
                    tracker.live[ptr] = t.untyped_storage().nbytes()
                    tracker.now += tracker.live[ptr]
                    tracker.peak = max(tracker.peak, tracker.now)
                    weakref.finalize(t, tracker.free, ptr)
                return out

        return Track()

    def free(self, ptr: int) -> None:
        self.now -= self.live.pop(ptr, 0)


def lora_linear(d_in: int, d_out: int, r: int, base: torch.dtype, adapter: torch.dtype):
    """A real PEFT LoRA Linear: ``base``-dtype weights, ``adapter``-dtype lora_A/lora_B."""
    from peft import LoraConfig, get_peft_model

    class One(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(d_in, d_out, bias=False)

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    model = get_peft_model(
        One().to(base),
        LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"]),
        autocast_adapter_dtype=False,
    )
    layer = model.base_model.model.proj
    layer.lora_A["default"].to(adapter)
    layer.lora_B["default"].to(adapter)
    return model, layer


def test_lora_prefill_bytes_by_hand_for_a_small_shape() -> None:
    # fp32 adapter (a=4) on a bf16 base (c=2), d_in 64, d_out 192, r 8: the fp32 copy of the
    # input 4*64 = 256, B·(A·x) 4*192 = 768, then the larger of A·x (4*8 = 32) and the fp32
    # sum (4*192 = 768): 1792 bytes per token
    shape = LoraShape(dtype_bytes=4, modules=((64, 192, 8),))
    assert shape.prefill_bytes_per_token(compute_bytes=2) == 256 + 768 + 768 == 1792
    # same dtype: no copy of the input; a rank above d_out: A·x is the larger temporary
    assert LoraShape(4, ((64, 8, 16),)).prefill_bytes_per_token(4) == 4 * 8 + 4 * 16
    # the largest module counts, not the sum (the temporaries die with each layer's call)
    both = LoraShape(4, ((64, 192, 8), (192, 64, 8)))
    assert both.prefill_bytes_per_token(2) == max(1792, 4 * 192 + 4 * 64 + 4 * 64)
    assert LoraShape(4, ((64, 192, 8),), casts_input=False).prefill_bytes_per_token(2) == 1536


@pytest.mark.parametrize(
    "d_in, d_out, r, base, adapter",
    [
        (64, 192, 8, torch.bfloat16, torch.float32),  # the flagship: fp32 LoRA, bf16 base
        (192, 64, 8, torch.bfloat16, torch.float32),
        (64, 192, 8, torch.float32, torch.float32),
        (64, 8, 16, torch.float32, torch.float32),  # r > d_out
    ],
)
def test_lora_prefill_bytes_match_what_peft_holds_live(d_in, d_out, r, base, adapter) -> None:
    """The formula against the measured peak of a real PEFT layer's forward, minus the base
    layer's own output (which the base model's estimate already counts)."""
    tokens = 50
    model, layer = lora_linear(d_in, d_out, r, base, adapter)
    x = torch.randn(1, tokens, d_in, dtype=base)
    tracker = LiveBytes()
    with torch.inference_mode(), tracker.mode():
        out = layer(x)
    assert out.dtype == base
    base_output = tokens * d_out * base.itemsize
    shape = LoraShape.from_model(model)
    assert shape == LoraShape(dtype_bytes=adapter.itemsize, modules=((d_in, d_out, r),))
    assert tracker.peak - base_output == tokens * shape.prefill_bytes_per_token(base.itemsize)


def test_the_estimate_reads_the_adapter_of_a_peft_model_and_counts_it_per_prompt_token() -> None:
    from gradience.train.lora_build import build_peft_model, target_module_names

    cfg = ExperimentConfig.model_validate(
        {
            "model": {"name": "embedded:tiny-mistral-random"},
            "lora": {"probe_r": 4, "lora_alpha": 8},
            "compression": {"allowed_ranks": [1, 2, 4]},
            "env": {"device": "cpu", "torch_dtype": "bfloat16"},
        }
    )
    base, _ = load_model_and_tokenizer(cfg)
    assert LoraShape.from_model(base) is None
    names = target_module_names(base, cfg.lora.target_modules)
    ranks = {n: (1, 4)[i % 2] for i, n in enumerate(names)}
    modules = dict(base.named_modules())
    expected = {(modules[n].in_features, modules[n].out_features, ranks[n]) for n in names}
    peft_model, _ = build_peft_model(base, ranks, cfg.lora)
    shape = LoraShape.from_model(peft_model)
    assert shape is not None and set(shape.modules) == expected
    assert shape.dtype_bytes == 4 and shape.casts_input  # PEFT keeps LoRA in fp32 on bf16
    gen = GenerationShape.from_config(peft_model.config, dtype_bytes=2)
    per_token = shape.prefill_bytes_per_token(2)
    assert per_token == max(4 * d_in + 4 * d_out + 4 * d_out for d_in, d_out, _ in expected)
    plain = generation_bytes_per_row(gen, prompt_tokens=30, new_tokens=16)
    with_lora = generation_bytes_per_row(gen, prompt_tokens=30, new_tokens=16, adapter=shape)
    assert with_lora - plain == 30 * per_token


def test_mistral_7b_fp32_lora_on_bf16_adds_as_much_per_prompt_token_as_its_kv_cache() -> None:
    config = MistralConfig()
    h, m = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    modules = ((h, h, 64), (h, kv, 64), (h, m, 64), (m, h, 64))  # q/o, k/v, gate/up, down
    shape = LoraShape(dtype_bytes=4, modules=modules)
    assert shape.prefill_bytes_per_token(2) == 4 * 4096 + 2 * 4 * 14336 == 128 * 1024
    plain = generation_bytes_per_row(MISTRAL, prompt_tokens=200, new_tokens=256)
    with_lora = generation_bytes_per_row(MISTRAL, 200, 256, adapter=shape)
    assert with_lora - plain == 200 * 128 * 1024
    assert batch_size_for_memory(40 * GIB, with_lora, 10_000) < batch_size_for_memory(
        40 * GIB, plain, 10_000
    )
