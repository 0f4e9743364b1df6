"""AdaLoRA's allocation through the HF Trainer equals PEFT's own loop on the same batches."""

from __future__ import annotations

import pytest
import torch
from peft import AdaLoraConfig, get_peft_model
from transformers import get_scheduler, set_seed

from gradience.allocate import AdaLoraSettings, ranks_from_rank_pattern, run_adalora
from gradience.config import ExperimentConfig
from gradience.errors import GradienceError
from gradience.models import load_model_and_tokenizer, quiet_peft_deprecations
from gradience.tasks import load_task
from gradience.train.lora_build import target_module_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEED = 42
SETTINGS = AdaLoraSettings(init_r=4, target_r=2, total_step=20, tinit=2, tfinal=4)


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
            "train": {
                "max_steps": 20,
                "learning_rate": 1e-2,
                "per_device_train_batch_size": 4,
                "warmup_steps": 2,
                "save_steps": 5,  # ignored by the allocation run: it writes no checkpoint
            },
            "lora": {"probe_r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
            "env": {"device": "cpu", "torch_dtype": "float32", "num_threads": 1},
        }
    )


class ForwardRecorder:
    """A model loader that keeps the inputs of every training forward pass (what the Trainer fed).

    AdaLoRA calls ``model.forward`` itself (no module hooks run), so the recorder wraps it."""

    def __init__(self) -> None:
        self.inputs: list[dict] = []
        self.model = None  # get_peft_model adapts it in place: it holds the trained adapter

    def __call__(self, cfg: ExperimentConfig):
        model, tokenizer = load_model_and_tokenizer(cfg)
        self.model = model
        forward = model.forward

        def recording_forward(*args, **kwargs):
            assert not args
            if model.training:
                self.inputs.append(
                    {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}
                )
            return forward(**kwargs)

        model.forward = recording_forward
        return model, tokenizer


@pytest.fixture(scope="module")
def cfg():
    return tiny_config()


@pytest.fixture(scope="module")
def task_data(cfg):
    return load_task(cfg.task)


@pytest.fixture(scope="module")
def recorded_run(cfg, task_data):
    recorder = ForwardRecorder()
    allocation = run_adalora(cfg, SEED, SETTINGS, task_data=task_data, model_loader=recorder)
    return allocation, recorder.inputs, recorder.model


def adalora_config(cfg: ExperimentConfig) -> AdaLoraConfig:
    """SETTINGS written out as PEFT's own config (not through gradience's builder)."""
    return AdaLoraConfig(
        task_type="CAUSAL_LM",
        init_r=4,
        target_r=2,
        total_step=20,
        tinit=2,
        tfinal=4,
        deltaT=1,
        beta1=0.85,
        beta2=0.85,
        orth_reg_weight=0.5,
        lora_alpha=cfg.lora.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(cfg.lora.target_modules),
    )


def peft_manual_loop(cfg: ExperimentConfig, batches: list[dict]):
    """PEFT's documented AdaLoRA loop: backward, step, update_and_allocate(step), zero_grad.

    The optimizer, schedule and clipping are the ones the Trainer uses for this config."""
    model, _ = load_model_and_tokenizer(cfg)
    set_seed(SEED)
    with quiet_peft_deprecations():
        peft_model = get_peft_model(model, adalora_config(cfg))
    # the batches are flattened (padding-free): with a KV cache transformers would not keep
    # the packed examples apart, so training runs without one, as gradience's does
    peft_model.config.use_cache = False
    peft_model.train()
    optimizer = torch.optim.AdamW(
        [p for p in peft_model.parameters() if p.requires_grad],
        lr=cfg.train.learning_rate,
        weight_decay=cfg.train.weight_decay,  # torch's default is 0.01, the Trainer's 0
    )
    scheduler = get_scheduler(
        cfg.train.lr_scheduler_type,
        optimizer,
        num_warmup_steps=cfg.train.warmup_steps,
        num_training_steps=20,
    )
    for step, batch in enumerate(batches):
        peft_model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(peft_model.parameters(), cfg.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        peft_model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    return peft_model


def adapter_weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters() if ".lora_" in name}


def test_adalora_ranks_equal_peft_own_loop_on_the_same_batches(cfg, recorded_run):
    allocation, batches, trained = recorded_run
    # the allocation is final at step total_step - tfinal = 16: 17 steps, then training stops
    assert allocation.steps == len(batches) == 17
    peft_model = peft_manual_loop(cfg, batches)
    pattern = peft_model.peft_config["default"].rank_pattern
    assert allocation.rank_pattern == pattern
    assert allocation.ranks == ranks_from_rank_pattern(pattern)
    # PEFT's masks are applied: the kept singular values are the non-zero ones
    kept = {
        name: int((module.lora_E["default"] != 0).sum())
        for name, module in peft_model.get_base_model().named_modules()
        if hasattr(module, "lora_E")
    }
    assert allocation.ranks == kept
    # not only the same allocation: the same training, step for step (PEFT's step numbering,
    # called between optimizer.step and zero_grad), so the same weights
    ours, peft = adapter_weights(trained), adapter_weights(peft_model.get_base_model())
    assert ours.keys() == peft.keys()
    for name, weight in ours.items():
        torch.testing.assert_close(weight, peft[name], rtol=0, atol=1e-6, msg=name)


def test_adalora_ranks_cover_every_module_and_spend_peft_target_budget(cfg, recorded_run):
    allocation = recorded_run[0]
    model, _ = load_model_and_tokenizer(cfg)
    names = target_module_names(model, cfg.lora.target_modules)
    assert list(allocation.ranks) == names
    assert sum(allocation.ranks.values()) == 2 * len(names)  # target_r per module on average
    assert all(0 <= r <= 4 for r in allocation.ranks.values())
    assert len(set(allocation.ranks.values())) > 1


def test_adalora_is_a_function_of_the_seed(cfg, task_data, recorded_run):
    again = run_adalora(cfg, SEED, SETTINGS, task_data=task_data)
    assert again.rank_pattern == recorded_run[0].rank_pattern


def test_default_settings_follow_the_config():
    settings = AdaLoraSettings().resolved(probe_r=12, max_steps=100)
    assert (settings.init_r, settings.target_r, settings.total_step) == (12, 8, 100)
    assert (settings.tinit, settings.tfinal, settings.final_step) == (10, 20, 80)


def test_schedules_without_an_allocation_are_rejected_before_training():
    with pytest.raises(GradienceError, match="adalora.tfinal"):
        AdaLoraSettings(tfinal=0).resolved(probe_r=4, max_steps=20)
    with pytest.raises(GradienceError, match="no allocation phase"):
        AdaLoraSettings(tinit=15, tfinal=5).resolved(probe_r=4, max_steps=20)
    with pytest.raises(GradienceError, match="adalora.target_r"):
        AdaLoraSettings(target_r=8).resolved(probe_r=4, max_steps=20)


def test_rank_pattern_keys_become_module_names():
    pattern = {
        "model.layers.0.self_attn.q_proj.lora_E.default": [True, False, True],
        "model.layers.0.mlp.up_proj.lora_E": [False, False, False],  # as saved: no adapter name
    }
    assert ranks_from_rank_pattern(pattern) == {
        "model.layers.0.self_attn.q_proj": 2,
        "model.layers.0.mlp.up_proj": 0,
    }
