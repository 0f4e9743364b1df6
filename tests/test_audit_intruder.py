"""``gradience audit --base``: intruder dimensions against dense float64 SVDs and PEFT's own tool."""

from __future__ import annotations

import json
import re

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
from safetensors.numpy import load_file
from transformers import LlamaConfig, LlamaForCausalLM

import gradience.audit.intruder_scan as intruder_scan
from gradience.audit.base_weights import SvdCache, base_key, cache_root
from gradience.audit.intruder import TOP_K, base_factors, top_vectors
from gradience.audit.intruder_scan import add_intruder_dimensions
from gradience.cli import main
from gradience.errors import GradienceError
from gradience.results import AuditResult

torch.set_num_threads(2)
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def dense_intruders(w0, delta, top_k=TOP_K):
    """The published definition by brute force: float64 SVDs of W0 and W0 + ΔW (stored
    orientation), max |cos| of the merged matrix's top-k left vectors with all of W0's."""
    u0 = np.linalg.svd(w0, full_matrices=False)[0]
    u1, s1, _ = np.linalg.svd(w0 + delta, full_matrices=False)
    k = min(top_k, s1.size)
    return s1[:k], np.abs(u1[:, :k].T @ u0).max(axis=1)


def structured_base(m, n, rng):
    """W0 with a decaying spectrum (like pre-trained weights): U·diag(σ)·Vᵀ."""
    p = min(m, n)
    u = np.linalg.qr(rng.standard_normal((m, p)))[0]
    v = np.linalg.qr(rng.standard_normal((n, p)))[0]
    return u * np.geomspace(3.0, 0.01, p) @ v.T


@pytest.mark.parametrize("dense_max", [10_000, 0], ids=["dense-eigh", "lanczos"])
@pytest.mark.parametrize(("m", "n", "r"), [(64, 96, 4), (96, 64, 4), (80, 80, 8), (12, 70, 4)])
def test_top_vectors_match_a_dense_float64_svd(m, n, r, dense_max):
    rng = np.random.default_rng(m * n + r)
    w0 = structured_base(m, n, rng)
    b, a = rng.standard_normal((m, r)), rng.standard_normal((r, n)) / np.sqrt(n)
    scaling = 0.7
    top = top_vectors(w0, base_factors(w0), b, a, scaling, dense_max=dense_max)
    values, similarity = dense_intruders(w0, scaling * b @ a)
    np.testing.assert_allclose(top.singular_values, values, rtol=1e-6)
    np.testing.assert_allclose(top.similarity, similarity, atol=1e-5)
    assert np.abs(similarity - 0.5).min() > 1e-3  # so the counts below are not a coin toss
    np.testing.assert_array_equal(top.intruders(0.5), np.flatnonzero(similarity < 0.5))
    if min(m, n) > 20:  # the planted update makes some, not all, top vectors intruders
        assert 0 < top.intruders(0.5).size < TOP_K


def test_a_zero_update_has_no_intruders_and_keeps_w0s_spectrum():
    rng = np.random.default_rng(0)
    w0 = structured_base(40, 30, rng)
    factors = base_factors(w0)
    top = top_vectors(w0, factors, np.zeros((40, 4)), rng.standard_normal((4, 30)), 2.0)
    np.testing.assert_allclose(top.singular_values, np.linalg.svd(w0, compute_uv=False)[:10])
    assert top.intruders(0.5).size == 0 and np.all(top.similarity == 1)


def _save_base(model, folder, **kwargs):
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


def _peft_counts(peft_model):
    """PEFT's reduce_intruder_dimension's own verdict per module, from its log lines."""
    intruders = pytest.importorskip("peft.tuners.lora.intruders")  # PEFT #2999 (0.21.2 here)
    lines = []
    intruders.reduce_intruder_dimension(peft_model, logging_sink=lines.append)
    counts = {}
    for line in lines:
        hit = re.match(r"base_model\.model\.(.+): (?:Intruders: (\d+)|No intruders)$", line)
        if hit:
            counts[hit[1]] = int(hit[2] or 0)
    return counts


@pytest.mark.parametrize(
    ("build", "targets"), [(tiny_mistral, MISTRAL_TARGETS), (tiny_gpt2, GPT2_TARGETS)]
)
def test_counts_equal_peft_reduce_intruder_dimension(tmp_path, build, targets):
    """PEFT #2999's tool on the same model and adapter (GPT-2: Conv1D stores W transposed)."""
    base = build()
    folder = _save_base(base, tmp_path / "base")
    adapter = tmp_path / "adapter"
    peft_model = make_adapter(base, adapter, r=8, lora_alpha=32, target_modules=targets)
    audit = _scan(adapter, folder, tmp_path)
    for name, layer in lora_modules(peft_model).items():  # PEFT's W and ΔW, as its tool takes them
        w0 = layer.get_base_layer().weight.detach().double().numpy()
        delta = layer.get_delta_weight("default").detach().double().numpy()
        scan = next(m.intruder_dimensions for m in audit.modules if m.name == name)
        np.testing.assert_allclose(scan.top_similarity, dense_intruders(w0, delta)[1], atol=1e-5)
    ours = {m.name: m.intruder_dimensions.count for m in audit.modules}
    peft = _peft_counts(peft_model)
    assert ours == peft
    assert 0 < sum(ours.values()) < TOP_K * len(ours)


def _scan(adapter, folder, tmp_path, **kwargs):
    from gradience.audit import audit_adapter

    return add_intruder_dimensions(
        audit_adapter(adapter), adapter, str(folder), cache=SvdCache(tmp_path / "cache"), **kwargs
    )


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A random Llama-shaped base saved in shards (with its index) and an r=4 adapter on it."""
    root = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
    )
    base = LlamaForCausalLM(config)
    folder = _save_base(base, root / "base", max_shard_size="150KB")
    adapter = root / "adapter"
    make_adapter(base, adapter, r=4, lora_alpha=16, target_modules=LLAMA_TARGETS)
    return folder, adapter


def _dense_counts(folder, adapter):
    """Every module's intruder count by the dense float64 definition, from the saved files."""
    base = {}
    for shard in folder.glob("*.safetensors"):
        base.update(load_file(shard))
    lora = load_file(adapter / "adapter_model.safetensors")
    config = json.loads((adapter / "adapter_config.json").read_text())
    counts = {}
    for key in lora:
        if ".lora_A." not in key:
            continue
        name = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        a = lora[key].astype(np.float64)
        b = lora[key.replace("lora_A", "lora_B")].astype(np.float64)
        w0 = base[f"{name}.weight"].astype(np.float64)
        _, similarity = dense_intruders(w0, config["lora_alpha"] / config["r"] * b @ a)
        counts[name] = int((similarity < 0.5).sum())
    return counts


def test_cli_json_gives_every_modules_intruders_and_the_second_run_hits_the_cache(
    llama, tmp_path, monkeypatch, capsys
):
    folder, adapter = llama
    assert (folder / "model.safetensors.index.json").is_file()  # really sharded
    monkeypatch.setenv("GRADIENCE_CACHE", str(tmp_path / "cache"))
    assert main(["audit", str(adapter), "--base", str(folder), "--json"]) == 0
    first = AuditResult.model_validate_json(capsys.readouterr().out)
    counts = {m.name: m.intruder_dimensions.count for m in first.modules}
    assert counts == _dense_counts(folder, adapter)
    assert len(counts) == 2 * len(LLAMA_TARGETS) and first.intruders.cached_modules == 0
    assert first.intruders.total == sum(counts.values()) > 0
    for m in first.modules:
        scan = m.intruder_dimensions
        assert scan.base_tensor == f"{m.name}.weight" and len(scan.top_similarity) == TOP_K
        assert scan.singular_values == [scan.top_singular_values[i] for i in scan.index]
        assert all(s < 0.5 for s in scan.max_similarity)

    computed = []
    real = intruder_scan.base_factors
    monkeypatch.setattr(intruder_scan, "base_factors", lambda w0: computed.append(1) or real(w0))
    assert main(["audit", str(adapter), "--base", str(folder), "--json"]) == 0
    second = AuditResult.model_validate_json(capsys.readouterr().out)
    assert computed == [] and second.intruders.cached_modules == len(counts)
    assert [m.intruder_dimensions for m in second.modules] == [
        m.intruder_dimensions for m in first.modules
    ]


def test_cli_table_and_plot_show_the_intruders(llama, tmp_path, monkeypatch, capsys):
    folder, adapter = llama
    monkeypatch.setenv("GRADIENCE_CACHE", str(tmp_path / "cache"))
    plot = tmp_path / "audit.png"
    assert main(["audit", str(adapter), "--base", str(folder), "--plot", str(plot)]) == 0
    captured = capsys.readouterr()
    assert f"Intruder dimensions against {folder}" in captured.out
    assert "Top " in captured.out.split("Intruder dimensions against")[1]
    assert (tmp_path / "audit.intruders.png").stat().st_size > 10_000
    assert "wrote intruder plot to" in captured.err


def test_a_changed_base_tensor_misses_the_cache(llama, tmp_path):
    folder, adapter = llama
    cache = SvdCache(tmp_path / "cache")
    _scan(adapter, folder, tmp_path)
    entries = sorted(cache.root.rglob("*.npz"))
    assert len(entries) == 2 * len(LLAMA_TARGETS)
    again = _scan(adapter, folder, tmp_path)
    assert again.intruders.cached_modules == len(entries)
    entries[0].write_bytes(b"not a zip")  # a damaged entry is recomputed, not trusted
    assert _scan(adapter, folder, tmp_path).intruders.cached_modules == len(entries) - 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing", "base model folder not found"),
        (lambda tmp: tmp, "no *.safetensors in the base model folder"),
        (
            lambda tmp: (tmp / "w.safetensors").write_bytes(b"x") and tmp / "w.safetensors",
            "not a file",
        ),
    ],
    ids=["missing", "no-safetensors", "a-file"],
)
def test_a_bad_base_exits_2_with_one_line(llama, tmp_path, capsys, make, message):
    _, adapter = llama
    code = main(["audit", str(adapter), "--base", str(make(tmp_path)), "--json"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and message in captured.err


def test_the_wrong_base_model_exits_2_naming_the_tensor(llama, tmp_path, capsys):
    _, adapter = llama
    other = _save_base(tiny_mistral(), tmp_path / "other")  # hidden 32, not 64
    capsys.readouterr()  # transformers' saving progress
    code = main(["audit", str(adapter), "--base", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and "is this the adapter's base model?" in err
    assert len(err.strip().splitlines()) == 1


def test_an_unknown_hub_id_offline_exits_2(llama, monkeypatch, capsys):
    _, adapter = llama
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import: patch it
    code = main(["audit", str(adapter), "--base", "nobody-here/no-such-model"])
    err = capsys.readouterr().err
    assert code == 2 and "could not be fetched from the Hugging Face hub" in err
    assert len(err.strip().splitlines()) == 1


def test_the_embedded_model_is_a_base_by_name(tmp_path):
    from transformers import MistralForCausalLM

    from gradience.models.embedded import shipped_model_dir

    folder = shipped_model_dir()
    adapter = tmp_path / "adapter"
    make_adapter(
        MistralForCausalLM.from_pretrained(folder), adapter, r=4, target_modules=["q_proj"]
    )
    audit = _scan(adapter, "embedded:tiny-mistral", tmp_path)
    assert audit.intruders.base_path == str(folder)
    counts = {m.name: m.intruder_dimensions.count for m in audit.modules}
    assert counts == _dense_counts(folder, adapter)


def test_integer_tensors_in_the_base_are_skipped_unless_they_are_the_weight(llama, tmp_path):
    from safetensors.numpy import save_file

    folder, adapter = llama
    tensors = {}
    for shard in folder.glob("*.safetensors"):
        tensors.update(load_file(shard))
    tensors["model.position_ids"] = np.arange(8, dtype=np.int64)  # a saved integer buffer
    (tmp_path / "single").mkdir()
    save_file(tensors, tmp_path / "single" / "model.safetensors")
    audit = _scan(adapter, tmp_path / "single", tmp_path)
    assert audit.intruders.total == sum(_dense_counts(folder, adapter).values())
    key = "model.layers.0.self_attn.q_proj.weight"
    tensors[key] = tensors[key].astype(np.int8)  # as if quantized
    save_file(tensors, tmp_path / "single" / "model.safetensors")
    with pytest.raises(GradienceError, match=f"{key}: dtype I8 is not a float weight"):
        _scan(adapter, tmp_path / "single", tmp_path)


def test_intruder_options_without_base_exit_2(llama, capsys):
    _, adapter = llama
    assert main(["audit", str(adapter), "--intruder-epsilon", "0.3"]) == 2
    assert "--intruder-epsilon: only applies with --base" in capsys.readouterr().err


def test_bad_parameters_are_refused(llama, tmp_path):
    folder, adapter = llama
    with pytest.raises(GradienceError, match="--intruder-epsilon"):
        _scan(adapter, folder, tmp_path, epsilon=0.0)
    with pytest.raises(GradienceError, match="--intruder-top-k"):
        _scan(adapter, folder, tmp_path, top_k=0)


def test_module_names_map_to_base_tensors():
    keys = {"model.layers.0.self_attn.q_proj.weight", "lm_head.weight"}
    assert (
        base_key("model.layers.0.self_attn.q_proj", keys)
        == "model.layers.0.self_attn.q_proj.weight"
    )
    inner = {"layers.0.mlp.up_proj.weight"}  # a base saved from the inner model
    assert base_key("model.layers.0.mlp.up_proj", inner) == "layers.0.mlp.up_proj.weight"
    wrapped = {"language_model.model.layers.1.o_proj.weight"}
    assert (
        base_key("model.layers.1.o_proj", wrapped) == "language_model.model.layers.1.o_proj.weight"
    )
    assert base_key("model.layers.9.o_proj", keys) is None


def test_the_cache_lives_where_gradience_keeps_its_cache(monkeypatch, tmp_path):
    from gradience.models.embedded import cache_root as embedded_cache_root

    monkeypatch.setenv("GRADIENCE_CACHE", str(tmp_path))
    assert cache_root() == embedded_cache_root() == tmp_path
    assert SvdCache().root == tmp_path / "intruder-svd"
    monkeypatch.delenv("GRADIENCE_CACHE")
    assert cache_root() == embedded_cache_root()
