"""Paired initialisation: every variant of a seed starts from the probe's LoRA A rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gradience.config import ExperimentConfig
from gradience.models import load_model_and_tokenizer
from gradience.tasks import load_task
from gradience.train.lora_build import build_peft_model, lora_layers, target_module_names
from gradience.train.paired_init import apply_paired_init, module_init_seed
from gradience.train.run import train_variant

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROBE_R = 8


def config(paired_init: bool = True) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": {"name": "embedded:tiny-mistral-random"},
            "task": {
                "name": "arithmetic",
                "generated_train_size": 32,
                "generated_eval_size": 8,
                "eval_samples": 8,
                "max_seq_length": 64,
            },
            # one step at a vanishing learning rate: the saved A is the initial A
            "train": {
                "max_steps": 1,
                "learning_rate": 1e-30,
                "per_device_train_batch_size": 4,
                "warmup_steps": 0,
                "save_steps": None,
            },
            "lora": {"probe_r": PROBE_R, "lora_alpha": 16, "paired_init": paired_init},
            "compression": {"allowed_ranks": [1, 2, 4, 8]},
            "env": {"device": "cpu", "torch_dtype": "float32", "num_threads": 1},
        }
    )


def saved_a(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    return {
        key.removeprefix("base_model.model.").removesuffix(".lora_A.weight"): value
        for key, value in tensors.items()
        if key.endswith(".lora_A.weight")
    }


def variant_ranks(cfg: ExperimentConfig) -> dict[str, dict[str, int]]:
    model, _ = load_model_and_tokenizer(cfg)
    names = target_module_names(model, cfg.lora.target_modules)
    return {
        "probe": dict.fromkeys(names, PROBE_R),
        "mixed": {n: (1, 2, 4, 8)[i % 4] for i, n in enumerate(names)},
        "reversed_mixed": {n: (8, 4, 2, 1)[i % 4] for i, n in enumerate(names)},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    out = {}
    for paired in (True, False):
        cfg = config(paired)
        data = load_task(cfg.task)
        for variant, ranks in variant_ranks(cfg).items():
            folder = root / f"{paired}-{variant}"
            result = train_variant(cfg, ranks, 42, folder, variant=variant, task_data=data)
            out[(paired, variant)] = (saved_a(folder), ranks, result)
    return out


def test_every_variant_starts_from_the_probes_first_rows_in_every_module(trained) -> None:
    probe, _, _ = trained[(True, "probe")]
    for variant in ("mixed", "reversed_mixed"):
        weights, ranks, result = trained[(True, variant)]
        assert result.paired_init is True
        assert set(weights) == set(ranks)
        for name, rank in ranks.items():
            assert weights[name].shape[0] == rank
            torch.testing.assert_close(weights[name], probe[name][:rank], rtol=0, atol=0)


def test_without_paired_init_variant_inits_diverge_after_the_first_rank_change(trained) -> None:
    probe, _, _ = trained[(False, "probe")]
    weights, ranks, result = trained[(False, "mixed")]
    assert result.paired_init is False
    different = [n for n, r in ranks.items() if not torch.equal(weights[n], probe[n][:r])]
    assert len(different) > len(ranks) // 2  # PEFT's global stream: pairing is lost


def test_paired_init_draws_peft_default_distribution_scaled_by_d_in_only() -> None:
    cfg = config()
    model, _ = load_model_and_tokenizer(cfg)
    names = target_module_names(model, cfg.lora.target_modules)
    peft_model, _ = build_peft_model(model, dict.fromkeys(names, PROBE_R), cfg.lora)
    apply_paired_init(peft_model, 42, PROBE_R)
    for _name, layer in lora_layers(peft_model).items():
        weight = layer.lora_A["default"].weight.detach()
        bound = 1.0 / math.sqrt(weight.shape[1])  # kaiming_uniform_(a=√5): U(-1/√d_in, 1/√d_in)
        assert float(weight.abs().max()) <= bound
        assert float(weight.abs().max()) > 0.8 * bound  # it spans the range, not a tiny corner
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0  # starts at the base model


def test_module_seeds_differ_by_run_seed_and_by_module() -> None:
    seeds = {module_init_seed(s, n) for s in (42, 43) for n in ("a.q_proj", "a.k_proj")}
    assert len(seeds) == 4 and all(0 <= s < 2**63 for s in seeds)
