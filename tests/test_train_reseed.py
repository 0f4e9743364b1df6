"""Variants of one seed draw the same LoRA dropout masks, whatever their ranks.

Building the adapter draws PEFT's LoRA init from the global RNG in rank-dependent shapes, and
whatever runs between building and training may draw too; ``train_and_keep`` reseeds right
before ``trainer.train()`` so that the dropout masks of the first step (and every later one)
do not depend on the variant's ranks. (transformers' Trainer also calls ``set_seed`` in its
constructor, which undoes the building's draws but not those of a ``trainer_hook`` run after
it: the hook below draws a rank-dependent amount, so only the reseed keeps the masks equal.)
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import gradience.train.run as run
from gradience.config import ExperimentConfig
from gradience.models import load_model_and_tokenizer
from gradience.tasks import load_task
from gradience.train.lora_build import (
    ADAPTER_NAME,
    build_peft_model,
    lora_layers,
    target_module_names,
)
from gradience.train.run import train_variant

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROBE_R = 8
SEED = 11


def config() -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": {"name": "embedded:tiny-mistral-random"},
            "task": {
                "name": "arithmetic",
                "generated_train_size": 16,
                "generated_eval_size": 4,
                "eval_samples": 4,
                "max_seq_length": 64,
            },
            "train": {
                "max_steps": 2,
                "learning_rate": 1e-2,
                "per_device_train_batch_size": 4,
                "warmup_steps": 0,
                "save_steps": None,
            },
            "lora": {"probe_r": PROBE_R, "lora_alpha": 16, "lora_dropout": 0.5},
            "compression": {"allowed_ranks": [2, 8]},
            "env": {"device": "cpu", "torch_dtype": "float32", "num_threads": 1},
        }
    )


@pytest.fixture(scope="module")
def setup():
    cfg = config()
    model, _ = load_model_and_tokenizer(cfg)
    names = target_module_names(model, cfg.lora.target_modules)
    patterns = {
        "uniform": dict.fromkeys(names, PROBE_R),
        "mixed": {n: (PROBE_R, 2)[i % 2] for i, n in enumerate(names)},
    }
    return cfg, load_task(cfg.task), patterns


class FirstStepMasks:
    """A trainer_hook: records each LoRA dropout's first training mask, after drawing from the
    global RNGs as much as the variant's total rank (as any code run between building and
    training might: the draws before the first step then differ between the variants)."""

    def __init__(self) -> None:
        self.masks: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}

    def __call__(self, trainer) -> None:
        layers = lora_layers(trainer.model)
        total_rank = sum(layer.r[ADAPTER_NAME] for layer in layers.values())
        torch.rand(total_rank)
        np.random.rand(total_rank)
        [random.random() for _ in range(total_rank)]
        for name, layer in layers.items():
            layer.lora_dropout[ADAPTER_NAME].register_forward_hook(self._recorder(name))

    def _recorder(self, name: str):
        def record(module, args, output) -> None:
            if module.training and name not in self.masks:
                self.inputs[name] = args[0].detach().clone()
                self.masks[name] = output.detach() == 0

        return record


def masks_of(setup, variant: str, tmp_path) -> FirstStepMasks:
    cfg, data, patterns = setup
    recorder = FirstStepMasks()
    train_variant(
        cfg, patterns[variant], SEED, tmp_path / variant, task_data=data, trainer_hook=recorder
    )
    assert set(recorder.masks) == set(patterns[variant])
    return recorder


def test_variants_of_a_seed_draw_identical_first_step_dropout_masks(setup, tmp_path) -> None:
    uniform, mixed = (masks_of(setup, v, tmp_path) for v in ("uniform", "mixed"))
    for name, mask in uniform.masks.items():
        # B = 0 at the first step: every module sees the same input in both variants
        assert torch.equal(uniform.inputs[name], mixed.inputs[name]), name
        assert torch.count_nonzero(uniform.inputs[name]) == uniform.inputs[name].numel()
        assert 0 < int(mask.sum()) < mask.numel(), name  # dropout on: some dropped, some kept
        assert torch.equal(mask, mixed.masks[name]), name


def test_without_the_reseed_the_masks_would_differ(setup, tmp_path, monkeypatch) -> None:
    cfg, _, patterns = setup
    after_build = {}
    for variant, ranks in patterns.items():  # the draws of building depend on the ranks
        model, _ = load_model_and_tokenizer(cfg)
        torch.manual_seed(SEED)
        build_peft_model(model, ranks, cfg.lora)
        after_build[variant] = torch.get_rng_state()
    assert not torch.equal(after_build["uniform"], after_build["mixed"])

    monkeypatch.setattr(run, "reseed_before_training", lambda seed: None)
    uniform, mixed = (masks_of(setup, v, tmp_path) for v in ("uniform", "mixed"))
    assert not any(torch.equal(uniform.masks[n], mixed.masks[n]) for n in uniform.masks)
