"""EVA's allocation on the embedded model: the ranks are PEFT's own, in gradience's module names."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.config import EvaConfig
from peft.tuners.lora.eva import get_eva_state_dict, initialize_lora_eva_weights
from torch.utils.data import DataLoader

from gradience.allocate import (
    EvaNotConverged,
    EvaSettings,
    eva_ranks,
    eva_ranks_for_config,
    training_batches,
)
from gradience.allocate.eva import _ranks_in_model_order
from gradience.config import ExperimentConfig
from gradience.errors import GradienceError
from gradience.models import load_model_and_tokenizer, quiet_peft_deprecations
from gradience.tasks import load_task
from gradience.train.data import CompletionCollator, FeatureDataset, encode_examples
from gradience.train.lora_build import target_module_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROBE_R = 4
RHO = 2.0
BATCH = 8
SEED = 42


def tiny_config() -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": {"name": "embedded:tiny-mistral-random"},
            "task": {
                "name": "arithmetic",
                "generated_train_size": 64,
                "generated_eval_size": 16,
                "eval_samples": 16,
                "max_seq_length": 64,
            },
            "train": {"max_steps": 4, "per_device_train_batch_size": BATCH},
            "lora": {"probe_r": PROBE_R, "lora_alpha": 8},
            "env": {"device": "cpu", "torch_dtype": "float32", "num_threads": 1},
        }
    )


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config()
    model, tokenizer = load_model_and_tokenizer(cfg)
    features = encode_examples(tokenizer, cfg.task, load_task(cfg.task).train).features
    return cfg, model, tokenizer, features


def peft_batches(features, pad_token_id: int) -> DataLoader:
    """The same batches as training_batches(..., SEED), built here without gradience's helper."""
    return DataLoader(
        FeatureDataset(features),
        batch_size=BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(SEED),
        collate_fn=CompletionCollator(pad_token_id=pad_token_id),
    )


def peft_eva_config(cfg: ExperimentConfig) -> LoraConfig:
    return LoraConfig(
        r=PROBE_R,
        target_modules=list(cfg.lora.target_modules),
        init_lora_weights="eva",
        eva_config=EvaConfig(rho=RHO),
    )


def test_eva_ranks_are_the_row_counts_of_peft_get_eva_state_dict(setup):
    cfg, model, tokenizer, features = setup
    ours = eva_ranks(
        model,
        training_batches(features, tokenizer.pad_token_id, BATCH, SEED),
        cfg.lora.target_modules,
        PROBE_R,
        EvaSettings(rho=RHO),
    )
    state = get_eva_state_dict(
        model,
        peft_batches(features, tokenizer.pad_token_id),
        peft_config=peft_eva_config(cfg),
        show_progress_bar=False,
    )
    assert ours == {name: matrix.shape[0] for name, matrix in state.items()}
    # gradience's names, in model order; EVA redistributes (not uniform) but keeps the rank sum
    assert list(ours) == target_module_names(model, cfg.lora.target_modules)
    assert len(set(ours.values())) > 1
    assert sum(ours.values()) == PROBE_R * len(ours)
    assert max(ours.values()) <= round(PROBE_R * RHO)


def test_eva_ranks_equal_the_ranks_of_a_peft_model_initialised_with_eva(setup):
    cfg, model, tokenizer, features = setup
    ours = eva_ranks(
        model,
        training_batches(features, tokenizer.pad_token_id, BATCH, SEED),
        cfg.lora.target_modules,
        PROBE_R,
        EvaSettings(rho=RHO),
    )
    fresh, _ = load_model_and_tokenizer(cfg)
    with quiet_peft_deprecations():
        peft_model = get_peft_model(fresh, peft_eva_config(cfg), low_cpu_mem_usage=True)
    initialize_lora_eva_weights(
        peft_model, peft_batches(features, tokenizer.pad_token_id), show_progress_bar=False
    )
    layers = {
        name: module.lora_A["default"].weight.shape[0]
        for name, module in peft_model.get_base_model().named_modules()
        if isinstance(module, LoraLayer)
    }
    assert {name: r for name, r in ours.items() if r > 0} == layers


def test_eva_leaves_the_model_as_it_was(setup):
    cfg, model, tokenizer, features = setup
    model.train()
    try:
        eva_ranks(
            model,
            training_batches(features, tokenizer.pad_token_id, BATCH, SEED),
            cfg.lora.target_modules,
            PROBE_R,
        )
        assert model.training
        assert not any(module._forward_hooks for module in model.modules())
    finally:
        model.eval()


def test_eva_for_config_is_a_function_of_the_seed(setup):
    cfg, _, _, _ = setup
    first = eva_ranks_for_config(cfg, SEED)
    assert first == eva_ranks_for_config(cfg, SEED)
    assert set(first) == set(target_module_names(setup[1], cfg.lora.target_modules))


def test_eva_that_cannot_converge_stops_with_an_error_and_removes_its_hooks(setup):
    cfg, model, tokenizer, features = setup
    batches = training_batches(features, tokenizer.pad_token_id, BATCH, SEED)
    with pytest.raises(EvaNotConverged, match="max_batches"):
        eva_ranks(model, batches, cfg.lora.target_modules, PROBE_R, EvaSettings(max_batches=3))
    assert not any(module._forward_hooks for module in model.modules())


def test_a_module_eva_leaves_out_is_reported_with_rank_zero():
    state = {"model.layers.0.mlp.up_proj": torch.zeros(0, 16), "lm_head": torch.zeros(3, 16)}
    ranks = _ranks_in_model_order(state, ["lm_head", "model.layers.0.mlp.up_proj"])
    assert ranks == {"lm_head": 3, "model.layers.0.mlp.up_proj": 0}


def test_eva_rejects_a_model_with_an_adapter_and_bad_settings(setup):
    cfg, _, tokenizer, features = setup
    fresh, _ = load_model_and_tokenizer(cfg)
    with quiet_peft_deprecations():
        peft_model = get_peft_model(fresh, LoraConfig(r=2, target_modules=["q_proj"]))
    batches = training_batches(features, tokenizer.pad_token_id, BATCH, SEED)
    with pytest.raises(GradienceError, match="without an adapter"):
        eva_ranks(peft_model, batches, ["q_proj"], PROBE_R)
    with pytest.raises(GradienceError, match="eva.rho"):
        EvaSettings(rho=0.5)
    with pytest.raises(GradienceError, match="match no module"):
        eva_ranks(setup[1], batches, ["no_such_proj"], PROBE_R)
