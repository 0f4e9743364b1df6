"""The GPU fast path of training, checked on a CPU: PEFT's input casting off under autocast,
fused AdamW, token counting without a per-step sync, no final checkpoint, flash-attention
collator kwargs. Each is compared with the path it replaces (equality or a stated tolerance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback

from gradience.config import ExperimentConfig
from gradience.models import load_model_and_tokenizer
from gradience.tasks import load_task
from gradience.train import build_peft_model, target_module_names, uniform_ranks
from gradience.train.arguments import resolve_optimizer, training_arguments
from gradience.train.callbacks import LossRecorder
from gradience.train.data import (
    IGNORE_INDEX,
    CompletionCollator,
    encode_examples,
    training_collator,
)
from gradience.train.run import build_trainer, train_and_keep, train_variant
from gradience.train.trainer import (
    GradienceTrainer,
    lora_input_casting,
    lora_input_casting_removable,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(
    *, dtype: str = "float32", lora: dict | None = None, **train: object
) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": {"name": "embedded:tiny-mistral-random"},
            "task": {
                "name": "arithmetic",
                "generated_train_size": 20,
                "generated_eval_size": 8,
                "eval_samples": 8,
                "max_seq_length": 64,
            },
            "train": {
                "max_steps": 4,
                "learning_rate": 1e-2,
                "per_device_train_batch_size": 6,
                "warmup_steps": 0,
                "logging_steps": 1,
                "save_steps": None,
                **train,
            },
            "lora": {"probe_r": 4, "lora_alpha": 8, **(lora or {})},
            "compression": {"allowed_ranks": [1, 2, 4]},
            "env": {"device": "cpu", "torch_dtype": dtype, "num_threads": 1},
        }
    )


def losses(curve: list[tuple[int, float]]) -> list[float]:
    return [loss for _, loss in curve]


# --- 1. PEFT's input casting, off under autocast ------------------------------------------


class LoraInputDtypes:
    """trainer_hook: records the dtype of every input that reaches a LoRA A in training."""

    def __init__(self) -> None:
        self.seen: set[torch.dtype] = set()

    def __call__(self, trainer: Trainer) -> None:
        for name, module in trainer.model.named_modules():
            if name.endswith("lora_A.default"):
                module.register_forward_pre_hook(self._record)

    def _record(self, module, args) -> None:
        if module.training:
            self.seen.add(args[0].dtype)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_lora_inputs_uncast_under_autocast_train_like_the_cast_ones(monkeypatch, tmp_path, dropout):
    """bf16 base, fp32 LoRA, bf16 autocast (gradience's CUDA set-up, here on a CPU).

    Tolerance: without dropout both paths compute the same numbers (equal losses, measured
    bit for bit). With dropout 0.1 it is applied to the bf16 input instead of an fp32 copy
    and rounds differently: measured 7e-5 relative at most over 4 steps; asserted to 1e-3.
    """
    from gradience.train import arguments

    monkeypatch.setattr(arguments, "mixed_precision", lambda cfg, device: (True, False))
    cfg = config(dtype="bfloat16", lora={"lora_dropout": dropout}, eval_steps=2)
    runs = {}
    for cast in (False, True):
        if cast:  # PEFT's default: every LoRA input copied to the adapter's fp32
            monkeypatch.setattr(
                "gradience.train.trainer.lora_input_casting_removable", lambda args: False
            )
        dtypes = LoraInputDtypes()
        trained = train_and_keep(cfg, 2, 42, tmp_path / str(cast), trainer_hook=dtypes)
        runs[cast] = (trained, dtypes.seen)
    (uncast, uncast_dtypes), (cast, cast_dtypes) = runs[False], runs[True]
    assert uncast_dtypes == {torch.bfloat16} and cast_dtypes == {torch.float32}
    lora_weights = [p for n, p in uncast.model.named_parameters() if "lora_" in n]
    assert lora_weights and all(p.dtype == torch.float32 for p in lora_weights)
    # restored after training: generation without autocast casts as PEFT does by default
    flags = [m.cast_input_dtype_enabled for m in uncast.model.modules() if hasattr(m, "lora_A")]
    assert flags and all(flags)
    first, second = losses(uncast.result.loss_curve), losses(cast.result.loss_curve)
    assert len(first) == len(second) == 4
    if dropout == 0.0:
        assert first == second
        assert uncast.result.eval_loss == cast.result.eval_loss
    else:
        assert first == pytest.approx(second, rel=1e-3)
        assert uncast.result.eval_loss == pytest.approx(cast.result.eval_loss, rel=1e-3)
    for trained, _ in runs.values():
        trained.release()


def test_input_casting_stays_on_without_autocast(tmp_path):
    """Without autocast a bf16 base hands bf16 inputs to fp32 LoRA weights: the cast is needed."""
    cfg = config(dtype="bfloat16")
    assert not lora_input_casting_removable(training_arguments(cfg, 1, tmp_path, quiet=True))
    model, _ = load_model_and_tokenizer(cfg)
    ranks = uniform_ranks(target_module_names(model, cfg.lora.target_modules), 2)
    peft_model, _ = build_peft_model(model, ranks, cfg.lora)
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        peft_model(input_ids=ids)  # PEFT's default cast: works
        with lora_input_casting(peft_model, enabled=False) as switched:
            assert switched == len(ranks)
            with pytest.raises(RuntimeError, match="dtype"):
                peft_model(input_ids=ids)
    assert all(m.cast_input_dtype_enabled for m in peft_model.modules() if hasattr(m, "lora_A"))


# --- 2. fused AdamW -----------------------------------------------------------------------


class OptimizerSeen(TrainerCallback):
    def __init__(self) -> None:
        self.optimizer = None

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs) -> None:
        self.optimizer = optimizer

    def __call__(self, trainer: Trainer) -> None:
        trainer.add_callback(self)


def test_fused_adamw_trains_like_plain_adamw(tmp_path):
    """Same update rule in one kernel: losses equal to 1e-5 relative over 4 steps (rounding)."""
    runs = {}
    for optim in ("adamw_torch", "adamw_torch_fused"):
        seen = OptimizerSeen()
        result = train_variant(config(optim=optim), 2, 42, tmp_path / optim, trainer_hook=seen)
        runs[optim] = (result, getattr(seen.optimizer, "optimizer", seen.optimizer).defaults)
    (plain, plain_defaults), (fused, fused_defaults) = runs.values()
    assert not plain_defaults.get("fused") and fused_defaults["fused"] is True
    assert losses(fused.loss_curve) == pytest.approx(losses(plain.loss_curve), rel=1e-5)
    assert fused.eval_loss == pytest.approx(plain.eval_loss, rel=1e-5)


def test_adamw_torch_is_fused_on_cuda_and_as_written_elsewhere(tmp_path):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_optimizer("adamw_torch", cuda) == "adamw_torch_fused"
    assert resolve_optimizer("adamw_torch", cpu) == "adamw_torch"
    for name in ("adamw_torch_fused", "adafactor", "sgd"):
        assert resolve_optimizer(name, cuda) == resolve_optimizer(name, cpu) == name
    assert training_arguments(config(), 1, tmp_path, quiet=True).optim == "adamw_torch"
    # the config (and its hashes) keep the name the user wrote
    assert config().train.optim == "adamw_torch"


# --- 3. tokens seen, without a per-step sync; 4. no final checkpoint ------------------------


def trainer_pair(cfg: ExperimentConfig, root: Path, mode: str) -> tuple[Trainer, Trainer]:
    """gradience's trainer and the stock Trainer counting tokens itself (``mode``), same data."""
    model, tokenizer = load_model_and_tokenizer(cfg)
    data = load_task(cfg.task)
    features = encode_examples(tokenizer, cfg.task, data.train).features
    ranks = uniform_ranks(target_module_names(model, cfg.lora.target_modules), 2)
    peft_model, _ = build_peft_model(model, ranks, cfg.lora)
    peft_model.config.use_cache = False
    ours = build_trainer(
        cfg, peft_model, tokenizer, features, [], 3, root / "ours", LossRecorder(lambda e: None)
    )
    args = training_arguments(cfg, 3, root / "stock", quiet=True)
    args.include_num_input_tokens_seen = mode  # what training_arguments passed before
    args.save_total_limit = None  # keep every checkpoint, to compare them
    stock = Trainer(
        model=peft_model,
        args=args,
        train_dataset=ours.train_dataset,
        data_collator=ours.data_collator,
    )
    return ours, stock


@pytest.mark.parametrize(("padding_free", "mode"), [(False, "non_padding"), (True, "all")])
def test_tokens_seen_equal_the_trainers_own_count(tmp_path, padding_free, mode):
    # 20 examples in batches of 6: the 4th batch of each epoch has 2; 7 steps x 2 micro-batches
    # cross three epoch boundaries. The checkpoint at step 6 stores the count so far.
    cfg = config(
        padding_free=padding_free, max_steps=7, gradient_accumulation_steps=2, save_steps=3
    )
    ours, stock = trainer_pair(cfg, tmp_path, mode)
    assert isinstance(ours, GradienceTrainer)
    assert ours.args.include_num_input_tokens_seen == "no"  # no per-step .item() in the Trainer
    assert isinstance(ours.data_collator, CompletionCollator) is not padding_free
    ours.train()
    stock.train()
    assert ours.state.num_input_tokens_seen == stock.state.num_input_tokens_seen > 0
    saved = [
        json.loads((tmp_path / who / "checkpoint-6" / "trainer_state.json").read_text())
        for who in ("ours", "stock")
    ]
    assert saved[0]["num_input_tokens_seen"] == saved[1]["num_input_tokens_seen"]
    assert 0 < saved[0]["num_input_tokens_seen"] < ours.state.num_input_tokens_seen
    # gradience keeps the last checkpoint only, and writes none after the last step (the
    # adapter saved right after training replaces it); the stock Trainer writes that one too
    assert sorted(p.name for p in (tmp_path / "ours").glob("checkpoint-*")) == ["checkpoint-6"]
    assert (tmp_path / "stock" / "checkpoint-7").is_dir()


# --- 5. flash-attention collator kwargs ----------------------------------------------------


@pytest.fixture(scope="module")
def flat_setup():
    cfg = config()
    model, tokenizer = load_model_and_tokenizer(cfg)
    features = encode_examples(tokenizer, cfg.task, load_task(cfg.task).train[:6]).features
    assert len({len(f["input_ids"]) for f in features}) > 1
    return model, tokenizer, features


def test_flash_attention_batches_carry_the_boundaries_and_others_do_not(flat_setup):
    model, tokenizer, features = flat_setup
    config_fa2 = ExperimentConfig.model_validate(
        {"model": {"name": "x", "attn_implementation": "flash_attention_2"}}
    )
    assert config_fa2.model.attn_implementation == "flash_attention_2"
    lengths = [len(f["input_ids"]) for f in features]
    starts = [sum(lengths[:i]) for i in range(len(lengths) + 1)]
    flash_keys = {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"}
    reference = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)(
        features
    )
    before = model.config._attn_implementation
    try:
        for attention in ("sdpa", "eager", "flash_attention_2"):
            model.config._attn_implementation = attention
            collator, flattened = training_collator(None, model, tokenizer.pad_token_id)
            assert flattened
            batch = collator(features)
            plain = {key: value for key, value in batch.items() if key not in flash_keys}
            assert plain.keys() == reference.keys() == {"input_ids", "labels", "position_ids"}
            assert all(torch.equal(plain[key], reference[key]) for key in reference)
            if attention != "flash_attention_2":
                assert not flash_keys & batch.keys()  # sdpa/eager batches: unchanged
                continue
            for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
                assert batch[key].dtype == torch.int32 and batch[key].tolist() == starts
            assert batch["max_length_q"] == batch["max_length_k"] == max(lengths)
            restarts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
            assert restarts == starts[:-1]
            padded, flattened = training_collator(False, model, tokenizer.pad_token_id)
            assert not flattened and not flash_keys & padded(features).keys()
    finally:
        model.config._attn_implementation = before
