"""``compress_adapter`` on real PEFT adapters, checked through PEFT against dense float64 SVDs."""

from __future__ import annotations

import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch
from helpers_audit import (
    GPT2_TARGETS,
    MISTRAL_TARGETS,
    lora_modules,
    make_adapter,
    tiny_gpt2,
    tiny_mistral,
)
from peft import PeftModel

from gradience.compress import compress_adapter, truncate_adapter
from gradience.io import read_model
from gradience.models import quiet_peft_deprecations
from gradience.results import CompressResult

torch.set_num_threads(1)

#: name → (base model builder, LoRA options, planted low ranks)
ADAPTERS = {
    "mistral": (
        tiny_mistral,
        {"r": 8, "lora_alpha": 16, "target_modules": MISTRAL_TARGETS},
        {"model.layers.0.self_attn.v_proj": 2},
    ),
    "gpt2_conv1d": (
        tiny_gpt2,
        {"r": 8, "lora_alpha": 8, "target_modules": GPT2_TARGETS, "fan_in_fan_out": True},
        {"transformer.h.1.mlp.c_fc": 3},
    ),
    "rslora": (
        tiny_mistral,
        {"r": 8, "lora_alpha": 4, "target_modules": MISTRAL_TARGETS, "use_rslora": True},
        {},
    ),
    "embedding": (
        tiny_mistral,
        {"r": 8, "lora_alpha": 16, "target_modules": ["embed_tokens", "q_proj", "down_proj"]},
        {},
    ),
    "patterns": (
        tiny_mistral,
        {
            "r": 8,
            "lora_alpha": 16,
            "target_modules": MISTRAL_TARGETS,
            "rank_pattern": {r"model\.layers\.1\.mlp\.down_proj": 4, "q_proj": 6},
            "alpha_pattern": {r"model\.layers\.0\.self_attn\.o_proj": 3, "up_proj": 40},
        },
        {},
    ),
}


def load(builder, adapter_dir) -> PeftModel:
    """The adapter as PEFT loads it, in float64, with every warning recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_peft_deprecations():  # a transformers deprecation, whatever the adapter
            model = PeftModel.from_pretrained(builder(), str(adapter_dir))
    model.caught = [str(w.message) for w in caught]
    return model.double()


def deltas(model: PeftModel) -> dict[str, np.ndarray]:
    """PEFT's own scaled update of every module (fan_in_fan_out transposed by PEFT)."""
    with torch.no_grad():
        return {
            name: module.get_delta_weight("default").numpy()
            for name, module in lora_modules(model).items()
        }


@pytest.fixture(scope="module", params=list(ADAPTERS))
def source(request, tmp_path_factory):
    builder, options, planted = ADAPTERS[request.param]
    path = tmp_path_factory.mktemp(request.param) / "adapter"
    make_adapter(builder(), path, planted=planted, **options)
    return builder, path


def test_compressed_update_is_the_best_rank_k_approximation(source, tmp_path):
    builder, path = source
    result = compress_adapter(
        path, tmp_path / "out", policy="energy@0.8", allowed_ranks=list(range(1, 9))
    )
    original = deltas(load(builder, path))
    compressed_model = load(builder, tmp_path / "out")
    assert compressed_model.caught == []  # PEFT loads it with no warning at all
    compressed = deltas(compressed_model)
    records = {m.name: m for m in result.modules}
    assert set(compressed) == set(original) == set(records)
    assert any(m.rank < m.r for m in result.modules)  # something really was truncated
    layers = lora_modules(compressed_model)
    for name, delta in original.items():
        k, scale = records[name].rank, np.linalg.norm(delta)
        assert layers[name].r["default"] == k
        u, s, vt = np.linalg.svd(delta, full_matrices=False)  # independent dense float64 SVD
        best = (u[:, :k] * s[:k]) @ vt[:k]
        tolerance = 1e-6 * scale  # the written factors are float32
        assert np.linalg.norm(compressed[name] - best) <= tolerance, name
        error = np.linalg.norm(delta - compressed[name])
        assert error == pytest.approx(math.sqrt(np.sum(s[k:] ** 2)), abs=tolerance), name
        assert records[name].relative_error == pytest.approx(error / scale, abs=1e-6)
        assert records[name].kept_energy == pytest.approx(np.sum(s[:k] ** 2) / (s @ s), rel=1e-9)
    assert read_model(tmp_path / "out" / "compress.json", CompressResult) == result


def test_uniform_export_has_one_rank_no_patterns_and_the_same_update(source, tmp_path):
    builder, path = source
    heterogeneous = compress_adapter(path, tmp_path / "het", policy="energy@0.8")
    uniform = compress_adapter(path, tmp_path / "uni", policy="energy@0.8", uniform=True)
    config = json.loads((tmp_path / "uni" / "adapter_config.json").read_text())
    top = max(m.rank for m in uniform.modules)
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (top, top, False)
    assert config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    assert [m.rank for m in uniform.modules] == [m.rank for m in heterogeneous.modules]
    model = load(builder, tmp_path / "uni")
    assert model.caught == []
    for layer in lora_modules(model).values():
        assert layer.r["default"] == top and layer.scaling["default"] == 1
    expected = deltas(load(builder, tmp_path / "het"))
    for name, delta in deltas(model).items():
        np.testing.assert_allclose(delta, expected[name], atol=1e-6 * np.abs(expected[name]).max())


def test_truncate_adapter_to_given_ranks(tmp_path):
    path = tmp_path / "adapter"
    make_adapter(tiny_mistral(), path, r=8, lora_alpha=16, target_modules=MISTRAL_TARGETS)
    names = list(lora_modules(load(tiny_mistral, path)))
    ranks = {name: 1 + i % 8 for i, name in enumerate(names)}
    result = truncate_adapter(path, ranks, tmp_path / "out")
    assert {m.name: m.rank for m in result.modules} == ranks and result.policy is None
    layers = lora_modules(load(tiny_mistral, tmp_path / "out"))
    assert {name: layer.r["default"] for name, layer in layers.items()} == ranks


def test_lora_bias_is_scaled_with_its_module_in_a_uniform_export(tmp_path):
    path = tmp_path / "adapter"
    make_adapter(
        tiny_mistral(),
        path,
        r=4,
        lora_alpha=12,
        target_modules=["q_proj", "v_proj"],
        lora_bias=True,
    )
    original = load(tiny_mistral, path)
    with torch.no_grad():
        for layer in lora_modules(original).values():  # PEFT saves B's bias; make it non-zero
            layer.lora_B["default"].bias.normal_()
    original.save_pretrained(str(path))
    names = list(lora_modules(original))
    truncate_adapter(path, dict.fromkeys(names, 4), tmp_path / "out", uniform=True)
    tokens = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        want = load(tiny_mistral, path)(tokens).logits
        got = load(tiny_mistral, tmp_path / "out")(tokens).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_embedded_model_logits_agree_between_exports_and_with_the_original(tmp_path):
    from gradience.models.embedded import pretrained_model

    base, _ = pretrained_model()
    path = tmp_path / "adapter"
    make_adapter(
        copy.deepcopy(base),
        path,
        r=8,
        lora_alpha=16,
        target_modules=MISTRAL_TARGETS,
        planted={"model.layers.1.mlp.up_proj": 2},
    )
    tokens = torch.arange(3, 27).reshape(2, 12)

    def logits(adapter_dir):
        with quiet_peft_deprecations():
            model = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter_dir))
        with torch.no_grad():
            return model(tokens).logits

    original = logits(path)
    het = compress_adapter(path, tmp_path / "het", policy="energy@0.7")
    compress_adapter(path, tmp_path / "uni", policy="energy@0.7", uniform=True)
    assert len({m.rank for m in het.modules}) > 1  # heterogeneous: padding really happens
    torch.testing.assert_close(logits(tmp_path / "uni"), logits(tmp_path / "het"))
    # it did truncate: the exports differ from the original far beyond float tolerance
    assert (logits(tmp_path / "het") - original).abs().max() > 1e-2

    full = {m.name: m.r for m in het.modules}
    truncate_adapter(path, full, tmp_path / "het_full")
    truncate_adapter(path, full, tmp_path / "uni_full", uniform=True)
    # Full rank rebuilds B·A through an SVD in float32: equal up to rounding (logits ~10,
    # so 1e-4 is ~1e-5 relative), and four orders below the truncation's 1e-2 above.
    torch.testing.assert_close(logits(tmp_path / "het_full"), original, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits(tmp_path / "uni_full"), original, rtol=1e-4, atol=1e-4)
