"""Pre-flight numbers: counts from the config match the real model, activations match what
autograd saves, the flagship's figures, and a run that would not fit stops with the numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradience.cli import main
from gradience.config import ExperimentConfig, LoraSection, load_config
from gradience.errors import GradienceError
from gradience.experiment import preflight
from gradience.experiment.preflight import estimate, model_shape
from gradience.experiment.resources import (
    CUDA_RESERVE,
    GIB,
    AdapterDisk,
    check_fits,
    layer_factor,
    shape_of,
    training_memory,
)
from gradience.models.embedded import random_model
from gradience.ranks import lora_params
from gradience.train.lora_build import build_peft_model, target_module_names, uniform_ranks

TINY = Path(__file__).parents[1] / "experiments" / "configs" / "tiny_test.yaml"
EMBEDDED = ExperimentConfig.model_validate(
    {"model": {"name": "embedded:tiny-mistral-random"}, "lora": {"probe_r": 8}}
)


def test_counts_from_the_config_match_the_model_and_the_adapter_file(tmp_path) -> None:
    shape = model_shape(EMBEDDED)  # meta device: no weights
    model, _ = random_model()
    assert shape.base_params == sum(p.numel() for p in model.parameters())
    names = target_module_names(model, EMBEDDED.lora.target_modules)
    assert list(shape.lora_shapes) == names
    pattern = {name: (2, 8)[i % 2] for i, name in enumerate(names)}  # a heterogeneous pattern
    peft_model, trainable = build_peft_model(model, pattern, EMBEDDED.lora)
    assert lora_params(pattern, shape.lora_shapes) == trainable
    peft_model.save_pretrained(tmp_path)
    size = (tmp_path / "adapter_model.safetensors").stat().st_size
    expected = lora_params(pattern, shape.lora_shapes) * 4  # fp32, as the estimate assumes
    assert expected <= size <= expected + 64 * 1024  # + the safetensors header
    _, disk = estimate(EMBEDDED, shape)
    assert disk.per_adapter == shape.lora_params(8) * 4


def saved_activation_bytes(dtype: torch.dtype, dropout: float, batch: int, seq: int) -> int:
    """Bytes autograd keeps for backward in one training forward of the embedded model + LoRA."""
    model, tokenizer = random_model()
    lora = LoraSection(probe_r=8, lora_alpha=16, lora_dropout=dropout)
    names = target_module_names(model, lora.target_modules)
    peft_model, _ = build_peft_model(model.to(dtype), uniform_ranks(names, 8), lora)
    peft_model.train()
    parameters = {p.untyped_storage().data_ptr() for p in peft_model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(3, len(tokenizer), (batch, seq), generator=torch.Generator().manual_seed(0))
    mixed = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), mixed:
        peft_model(input_ids=ids, labels=ids)
    return sum(n for ptr, n in saved.items() if ptr not in parameters)


@pytest.mark.parametrize(
    ("dtype", "dropout", "tolerance"),
    [
        (torch.float32, 0.0, 0.10),
        (torch.float32, 0.1, 0.10),
        # bf16 base + fp32 LoRA under autocast: each LoRA branch's bf16 copy of its input.
        # (Not with dropout: CPU dropout keeps a mask in the input's dtype, CUDA a 1-byte one.)
        (torch.bfloat16, 0.0, 0.15),
    ],
)
def test_activation_estimate_matches_what_autograd_saves(
    dtype, dropout, tolerance, one_torch_thread
) -> None:
    shape = model_shape(EMBEDDED)
    batch, seq = 4, 64
    measured = saved_activation_bytes(dtype, dropout, batch, seq)
    estimated = training_memory(
        shape,
        batch_size=batch,
        seq_len=seq,
        lora_rank=8,
        weight_bytes=dtype.itemsize,
        lora_dropout=dropout,
        gradient_checkpointing=False,
    ).activations
    assert abs(estimated / measured - 1) < tolerance, (estimated, measured)


def test_mistral_7b_flagship_figures() -> None:
    from transformers import AutoModelForCausalLM, MistralConfig

    config = MistralConfig(  # mistralai/Mistral-7B-v0.1's config.json
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    modules = dict(skeleton.named_modules())
    cfg = load_config(Path(__file__).parents[1] / "experiments" / "mechanism_test_config.yaml")
    names = target_module_names(skeleton, cfg.lora.target_modules)
    shape = shape_of(
        skeleton, {n: (modules[n].in_features, modules[n].out_features) for n in names}
    )
    assert shape.base_params == 7_241_732_096
    assert shape.lora_params(64) == 167_772_160  # PEFT's count for r=64 on all 7 projections
    factor = layer_factor(
        shape, seq_len=512, activation_bytes=2, lora_dropout=0.1, mixed_precision=True
    )
    assert factor == pytest.approx(34.75)  # the module docstring's worked example
    common = dict(batch_size=8, seq_len=512, lora_rank=64, weight_bytes=2, lora_dropout=0.1)
    off = training_memory(shape, **common, gradient_checkpointing=False)
    on = training_memory(shape, **common, gradient_checkpointing=True)
    assert 34 * GIB < off.activations < 36 * GIB and on.activations < 3 * GIB
    assert on.total < off.total < 78 * GIB  # the claim: fits an 80 GB H100 without it


def test_a_job_that_does_not_fit_stops_with_the_numbers() -> None:
    shape = model_shape(EMBEDDED)
    memory = training_memory(
        shape,
        batch_size=32,
        seq_len=64,
        lora_rank=8,
        weight_bytes=4,
        lora_dropout=0.0,
        gradient_checkpointing=False,
    )
    disk = AdapterDisk(adapters=4, per_adapter=1000, checkpoints=0)
    with pytest.raises(GradienceError) as caught:
        check_fits(memory, memory.total - 1, disk, 10**9, config_path="run.yaml")
    message = str(caught.value)
    assert message.startswith("run.yaml: train.per_device_train_batch_size: the largest training")
    assert "weights" in message and "activations" in message and "gradient_checkpointing" in message
    with pytest.raises(GradienceError, match="env.output_base_dir: the adapters need"):
        check_fits(memory, None, disk, 3999)
    check_fits(memory, memory.total, disk, 4000)  # exactly enough is enough


def test_mechanism_run_stops_before_training_when_the_disk_is_too_small(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(preflight, "free_disk_bytes", lambda folder: 1024)
    code = main(["mechanism", "run", "--config", str(TINY), "--output", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 2
    assert (
        "[estimate] largest job" in captured.out
    )  # the numbers on stdout, the error alone on stderr
    assert "env.output_base_dir: the adapters need" in captured.err
    assert "0.0 MiB free" in captured.err
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_preflight_prints_the_estimates_and_the_run_folder(capsys) -> None:
    assert preflight.main([str(TINY)]) == 0
    captured = capsys.readouterr()
    assert "[estimate] largest job (probe, r=8, batch 4 x 64 tokens)" in captured.err
    assert "[estimate] adapters on disk" in captured.err
    assert captured.out.strip().splitlines()[-1] == "experiments/tiny_test_results"


def test_a_gpu_config_is_estimated_where_the_gpus_are_not_visible() -> None:
    cfg = EMBEDDED.model_copy(deep=True)
    cfg.env.device, cfg.env.torch_dtype, cfg.env.executor = "cuda", "auto", "ray"
    shape = model_shape(cfg)
    memory, _ = estimate(cfg, shape)  # no CUDA needed to estimate a CUDA run
    assert memory.weights == shape.base_params * 2  # auto on CUDA: bfloat16
    assert memory.reserve == CUDA_RESERVE
    assert preflight.free_gpu_bytes(cfg) is None  # a Ray driver cannot see its workers' GPUs
