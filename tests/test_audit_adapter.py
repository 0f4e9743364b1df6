"""audit_adapter on adapters written by real PEFT save_pretrained (tiny Mistral and GPT-2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_audit import (
    GPT2_TARGETS,
    MISTRAL_TARGETS,
    lora_modules,
    make_adapter,
    peft_delta_spectra,
    reference_spectra,
    reload_adapter,
    rewrite_weights,
    tiny_gpt2,
    tiny_mistral,
)

from gradience.audit import audit_adapter
from gradience.results import AuditResult

torch.set_num_threads(2)


def assert_spectra_match(audit: AuditResult, reference: dict[str, np.ndarray], rtol: float) -> None:
    """Audit spectra × scaling equal the reference (scaled) spectra, module by module."""
    assert [m.name for m in audit.modules] == sorted(
        reference, key=lambda n: [int(p) if p.isdigit() else p for p in n.split(".")]
    )
    for module in audit.modules:
        want = reference[module.name][: module.r]
        got = np.array(module.singular_values) * module.scaling
        np.testing.assert_allclose(got, want, rtol=0, atol=rtol * want[0])


@pytest.fixture(scope="module")
def mistral_pattern(tmp_path_factory):
    """r=8 adapter with a rank_pattern, an alpha_pattern and one planted rank-2 module."""
    out = tmp_path_factory.mktemp("mistral_pattern")
    model = make_adapter(
        tiny_mistral(),
        out,
        r=8,
        lora_alpha=16,
        target_modules=MISTRAL_TARGETS,
        rank_pattern={r"model\.layers\.1\.mlp\.down_proj": 4, "k_proj": 2},
        alpha_pattern={"q_proj": 4, r"model\.layers\.0\.self_attn\.q_proj": 99},
        planted={"model.layers.0.mlp.up_proj": 2},
    )
    return out, model


def test_mistral_rank_pattern_adapter_matches_peft(mistral_pattern):
    out, _trained = mistral_pattern
    model = reload_adapter(tiny_mistral(), out)
    audit = audit_adapter(out)
    assert audit.allowed_ranks == [1, 2, 4, 8]  # default: powers of two up to the adapter's r
    assert_spectra_match(audit, peft_delta_spectra(model), rtol=1e-5)  # PEFT's own ΔW, float32
    assert_spectra_match(audit, reference_spectra(model), rtol=1e-10)  # dense float64 of B·A
    by_name = {m.name: m for m in audit.modules}
    assert by_name["model.layers.1.mlp.down_proj"].r == 4
    assert by_name["model.layers.0.mlp.down_proj"].r == 8
    assert by_name["model.layers.0.self_attn.k_proj"].r == 2
    assert by_name["model.layers.1.self_attn.q_proj"].alpha == 4
    assert by_name["model.layers.1.mlp.down_proj"].scaling == pytest.approx(16 / 4)
    for name, layer in lora_modules(model).items():
        assert by_name[name].scaling == pytest.approx(layer.scaling["default"])


def test_pattern_order_follows_the_saved_config(mistral_pattern):
    # PEFT saves adapter_config.json with sorted keys, so on reload the specific key precedes
    # "q_proj" and wins (first match), although "q_proj" won while training: the audit follows
    # the saved file, as PEFT's from_pretrained does, and warns about the ambiguity.
    out, trained = mistral_pattern
    audit = audit_adapter(out)
    q0 = next(m for m in audit.modules if m.name == "model.layers.0.self_attn.q_proj")
    assert q0.alpha == 99
    assert lora_modules(trained)["model.layers.0.self_attn.q_proj"].lora_alpha["default"] == 4
    assert any(
        "alpha_pattern" in w and "model.layers.0.self_attn.q_proj" in w for w in audit.warnings
    )


def test_planted_rank_is_found_and_suggested(mistral_pattern):
    audit = audit_adapter(
        mistral_pattern[0], policies=["energy@0.99", "erank", "oht"], allowed_ranks=[1, 2, 4, 8]
    )
    planted = next(m for m in audit.modules if m.name == "model.layers.0.mlp.up_proj")
    assert planted.energy_rank["0.99"] <= 2
    assert planted.singular_values[2] < 1e-6 * planted.singular_values[0]  # float32 round-off of B
    assert planted.suggested_rank["energy@0.99"] <= 2
    others = [m for m in audit.modules if m.name != planted.name and m.r == 8]
    assert all(m.suggested_rank["energy@0.99"] == 8 for m in others)  # random factors use all 8


def test_module_fields_and_summary(mistral_pattern):
    audit = audit_adapter(
        mistral_pattern[0], policies=["energy@0.90", "knee"], allowed_ranks=[1, 2, 4, 8]
    )
    assert audit.schema_version == 3
    assert (
        audit.adapter.r == 8
        and audit.adapter.lora_alpha == 16
        and audit.adapter.use_rslora is False
    )
    assert audit.summary.n_modules == len(audit.modules) == 14
    assert audit.summary.total_params == sum(m.r * (m.d_in + m.d_out) for m in audit.modules)
    for m in audit.modules:
        assert m.type == m.name.rsplit(".", 1)[1] and m.layer == int(m.name.split(".")[2])
        assert len(m.singular_values) == m.r
        assert m.spectral_norm == pytest.approx(m.singular_values[0])
        assert m.frobenius_norm == pytest.approx(float(np.linalg.norm(m.singular_values)))
        assert m.utilization == pytest.approx(m.stable_rank / m.r)
        assert set(m.energy_rank) == {"0.9", "0.95", "0.99"}
        assert set(m.suggested_rank) == {"energy@0.90", "knee"}
    q = next(m for m in audit.modules if m.name == "model.layers.0.self_attn.q_proj")
    assert (q.d_in, q.d_out) == (32, 32)
    down = next(m for m in audit.modules if m.name == "model.layers.0.mlp.down_proj")
    assert (down.d_in, down.d_out) == (96, 32)
    ranks = sorted(m.suggested_rank["knee"] for m in audit.modules)
    assert audit.summary.policies["knee"].max == ranks[-1]
    assert audit.summary.policies["knee"].median == ranks[(len(ranks) + 1) // 2 - 1]


def test_gpt2_conv1d_adapter(tmp_path):
    model = make_adapter(
        tiny_gpt2(), tmp_path, r=4, lora_alpha=8, target_modules=GPT2_TARGETS, fan_in_fan_out=True
    )
    audit = audit_adapter(tmp_path)
    assert_spectra_match(audit, peft_delta_spectra(model), rtol=1e-5)
    c_attn = next(m for m in audit.modules if m.name == "transformer.h.1.attn.c_attn")
    assert (c_attn.type, c_attn.layer, c_attn.d_in, c_attn.d_out) == ("c_attn", 1, 32, 96)
    assert {m.type for m in audit.modules} == {"c_attn", "c_proj", "c_fc"}


def test_rslora_bf16_adapter(tmp_path):
    model = make_adapter(
        tiny_mistral(layers=1),
        tmp_path,
        r=16,
        lora_alpha=8,
        target_modules=MISTRAL_TARGETS,
        use_rslora=True,
        dtype=torch.bfloat16,
    )
    audit = audit_adapter(tmp_path)
    assert audit.adapter.use_rslora
    assert all(m.scaling == pytest.approx(8 / 4) for m in audit.modules)  # alpha / sqrt(r)
    assert_spectra_match(
        audit, reference_spectra(model), rtol=1e-10
    )  # exact bf16 values, float64 math


@pytest.mark.parametrize(
    "rename",
    [
        lambda key: key.replace(".weight", ".default.weight"),  # state_dict form with adapter name
        lambda key: key.removeprefix("base_model.model."),  # saved without the PEFT prefix
    ],
)
def test_key_spellings_give_the_same_audit(tmp_path, rename):
    make_adapter(
        tiny_gpt2(layers=1), tmp_path, r=4, target_modules=GPT2_TARGETS, fan_in_fan_out=True
    )
    before = audit_adapter(tmp_path)
    rewrite_weights(tmp_path, rename=rename)
    after = audit_adapter(tmp_path)
    assert [m.model_dump() for m in after.modules] == [m.model_dump() for m in before.modules]


def test_pickle_adapter_with_allow_pickle(tmp_path):
    model = make_adapter(
        tiny_gpt2(layers=1),
        tmp_path,
        r=4,
        target_modules=GPT2_TARGETS,
        fan_in_fan_out=True,
        safe=False,
    )
    assert (tmp_path / "adapter_model.bin").is_file()
    assert_spectra_match(
        audit_adapter(tmp_path, allow_pickle=True), reference_spectra(model), rtol=1e-10
    )


def test_untrained_adapter_has_zero_spectra(tmp_path):
    make_adapter(
        tiny_gpt2(layers=1), tmp_path, r=4, target_modules=["c_attn"], init_lora_weights=True
    )
    audit = audit_adapter(tmp_path, allowed_ranks=[2, 4])
    (module,) = audit.modules
    assert (
        module.singular_values == [0.0] * 4
        and module.stable_rank == 0
        and module.effective_rank == 0
    )
    assert module.suggested_rank["energy@0.90"] == 2  # the smallest allowed rank
