"""Building a LoRA variant: the rank pattern is applied exactly, or the build fails loudly."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from peft.utils.other import get_pattern_key
from transformers import MistralConfig, MistralForCausalLM

from gradience.config import LoraSection
from gradience.errors import GradienceError
from gradience.train.lora_build import (
    build_lora_config,
    build_peft_model,
    expected_scalings,
    lora_layers,
    pattern_key,
    target_module_names,
    uniform_ranks,
    update_norms,
    verify_adapter,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_mistral(layers: int = 12) -> MistralForCausalLM:
    """12 layers so that 'layers.1.' and 'layers.11.' both exist (a classic suffix-match trap)."""
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return MistralForCausalLM(config)


def mixed_ranks(names: list[str]) -> dict[str, int]:
    return {name: (1, 2, 4, 8)[(i * 7 + i // 3) % 4] for i, name in enumerate(names)}


def test_target_module_names_are_relative_to_the_base_model_in_model_order():
    model = tiny_mistral(layers=2)
    names = target_module_names(model, TARGETS)
    assert len(names) == 2 * len(TARGETS)
    assert names[0] == "model.layers.0.self_attn.q_proj"
    assert names[-1] == "model.layers.1.mlp.down_proj"
    module_names = [name for name, _ in model.named_modules()]
    assert names == [n for n in module_names if n in set(names)]


def test_pattern_key_matches_exactly_one_module_under_peft_rules():
    model = tiny_mistral()
    names = [name for name, _ in model.named_modules() if name]
    decoys = ["language_model.model.layers.1.self_attn.q_proj", "xmodel.layers.1.self_attn.q_proj"]
    for name in target_module_names(model, TARGETS):
        key = pattern_key(name)
        matches = [n for n in names + decoys if get_pattern_key([key], n) == key]
        assert matches == [name]


def test_mixed_rank_pattern_yields_exactly_those_shapes():
    model = tiny_mistral()
    names = target_module_names(model, TARGETS)
    ranks = mixed_ranks(names)
    lora = LoraSection(probe_r=8, lora_alpha=16, target_modules=TARGETS)
    peft_model, trainable = build_peft_model(model, ranks, lora)
    layers = lora_layers(peft_model)
    assert list(layers) == names
    expected_params = 0
    for name, layer in layers.items():
        r = ranks[name]
        assert tuple(layer.lora_A["default"].weight.shape) == (r, layer.in_features)
        assert tuple(layer.lora_B["default"].weight.shape) == (layer.out_features, r)
        expected_params += r * (layer.in_features + layer.out_features)
    assert trainable == expected_params


@pytest.mark.parametrize(
    "policy, scale",
    [
        ("constant_scale", lambda r: 16 / 8),
        ("fixed_alpha", lambda r: 16 / r),
        ("rslora", lambda r: 16 / math.sqrt(r)),
    ],
)
def test_alpha_policies_give_their_scalings(policy, scale):
    model = tiny_mistral(layers=2)
    ranks = mixed_ranks(target_module_names(model, TARGETS))
    lora = LoraSection(probe_r=8, lora_alpha=16, target_modules=TARGETS, alpha_policy=policy)
    peft_model, _ = build_peft_model(model, ranks, lora)
    for name, layer in lora_layers(peft_model).items():
        assert layer.scaling["default"] == pytest.approx(scale(ranks[name]), rel=1e-12)
    if policy == "constant_scale":
        assert (
            len({round(layer.scaling["default"], 12) for layer in lora_layers(peft_model).values()})
            == 1
        )


def test_unknown_module_key_is_an_error_not_a_warning():
    model = tiny_mistral(layers=2)
    ranks = uniform_ranks(target_module_names(model, TARGETS), 4)
    ranks["base_model.model.model.layers.0.self_attn.q_proj"] = 4
    lora = LoraSection(probe_r=8, lora_alpha=16, target_modules=TARGETS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(GradienceError, match="not adapted modules.*base_model.model"):
            build_peft_model(model, ranks, lora, source="ranks.json")


def test_pattern_missing_a_targeted_module_is_an_error():
    model = tiny_mistral(layers=2)
    ranks = uniform_ranks(target_module_names(model, TARGETS), 4)
    del ranks["model.layers.1.mlp.up_proj"]
    lora = LoraSection(probe_r=8, lora_alpha=16, target_modules=TARGETS)
    with pytest.raises(GradienceError, match="no rank to 1 module.*layers.1.mlp.up_proj"):
        build_peft_model(model, ranks, lora)


@pytest.mark.parametrize("bad", [0, -2, 2.5])
def test_non_positive_or_fractional_rank_is_an_error(bad):
    lora = LoraSection(probe_r=8, lora_alpha=16)
    with pytest.raises(GradienceError, match="positive integers"):
        build_lora_config({"model.layers.0.self_attn.q_proj": bad}, lora)


def test_verify_adapter_catches_a_rank_peft_silently_ignored():
    """A key with the saved 'base_model.model.' prefix matches nothing; PEFT only warns and uses r."""
    from peft import LoraConfig, get_peft_model

    model = tiny_mistral(layers=2)
    ranks = uniform_ranks(target_module_names(model, ["q_proj"]), 2)
    ranks["model.layers.1.self_attn.q_proj"] = 8
    prefixed = {"^" + re.escape("base_model.model." + n) + "$": r for n, r in ranks.items()}
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], rank_pattern=prefixed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, config)
    lora = LoraSection(
        probe_r=8, lora_alpha=16, target_modules=["q_proj"], alpha_policy="fixed_alpha"
    )
    with pytest.raises(
        GradienceError, match=r"2 place\(s\): model.layers.1.self_attn.q_proj: lora_A \(2, 32\)"
    ):
        verify_adapter(peft_model, ranks, {n: 4 / r for n, r in ranks.items()})
    assert expected_scalings(ranks, lora) == {n: 16 / r for n, r in ranks.items()}


def test_verify_adapter_catches_a_wrong_scaling():
    model = tiny_mistral(layers=2)
    ranks = uniform_ranks(target_module_names(model, TARGETS), 4)
    lora = LoraSection(probe_r=8, lora_alpha=16, target_modules=TARGETS)
    peft_model, _ = build_peft_model(model, ranks, lora)
    wrong = expected_scalings(ranks, lora.model_copy(update={"alpha_policy": "fixed_alpha"}))
    with pytest.raises(GradienceError, match="scaling"):
        verify_adapter(peft_model, ranks, wrong)


@pytest.mark.parametrize("policy", ["constant_scale", "fixed_alpha", "rslora"])
def test_update_norms_equal_the_dense_scaled_update(policy):
    model = tiny_mistral(layers=2)
    names = target_module_names(model, TARGETS)
    ranks = mixed_ranks(names)
    lora = LoraSection(probe_r=8, lora_alpha=16, target_modules=TARGETS, alpha_policy=policy)
    peft_model, _ = build_peft_model(model, ranks, lora)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    norms = update_norms(peft_model)
    assert set(norms) == set(names)
    for name, layer in lora_layers(peft_model).items():
        a = layer.lora_A["default"].weight.detach().double()
        b = layer.lora_B["default"].weight.detach().double()
        dense = float(layer.scaling["default"]) * torch.linalg.matrix_norm(b @ a)
        assert norms[name] == pytest.approx(float(dense), rel=1e-9)
