"""Training one variant on the embedded random model: masking, seeding, pairing, NaN, resume, outputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gradience.config import ExperimentConfig
from gradience.errors import GradienceError
from gradience.io import read_model
from gradience.models import load_model_and_tokenizer
from gradience.results import TrainResult
from gradience.tasks import build_completion, build_prompt, load_task
from gradience.train.data import IGNORE_INDEX, CompletionCollator, encode_examples
from gradience.train.run import train_variant

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**train: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": {"name": "embedded:tiny-mistral-random"},
            "task": {
                "name": "arithmetic",
                "generated_train_size": 64,
                "generated_eval_size": 16,
                "eval_samples": 16,
                "max_seq_length": 64,
                "max_new_tokens": 12,
            },
            "train": {
                "max_steps": 4,
                "learning_rate": 1e-2,
                "per_device_train_batch_size": 4,
                "warmup_steps": 0,
                "logging_steps": 1,
                "save_steps": None,
                **train,
            },
            "lora": {"probe_r": 4, "lora_alpha": 8, "alpha_policy": "constant_scale"},
            "compression": {"allowed_ranks": [1, 2, 4]},
            "env": {"device": "cpu", "torch_dtype": "float32", "num_threads": 1},
        }
    )


@pytest.fixture(scope="module")
def task_data():
    return load_task(tiny_config().task)


def adapter_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


class BatchRecorder:
    """A model loader that records every training batch the model sees (a forward pre-hook)."""

    def __init__(self) -> None:
        self.batches: list[str] = []
        self.tokens = 0

    def __call__(self, cfg: ExperimentConfig):
        model, tokenizer = load_model_and_tokenizer(cfg)
        model.register_forward_pre_hook(self._record, with_kwargs=True)
        return model, tokenizer

    def _record(self, module, args, kwargs) -> None:
        if module.training:
            ids = kwargs["input_ids"]
            self.batches.append(hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16])
            mask = kwargs.get("attention_mask")
            # padded batches carry a mask; flattened (padding-free) ones are all real tokens
            self.tokens += int(mask.sum()) if mask is not None else ids.numel()


def test_collator_masks_exactly_the_prompt_and_padding(task_data):
    cfg = tiny_config()
    _, tokenizer = load_model_and_tokenizer(cfg)
    examples = task_data.train[:8]
    encoded = encode_examples(tokenizer, cfg.task, examples)
    batch = CompletionCollator(pad_token_id=tokenizer.pad_token_id)(encoded.features)
    lengths = [len(f["input_ids"]) for f in encoded.features]
    assert len(set(lengths)) > 1, "need examples of different lengths to see padding"
    for row, example in enumerate(examples):
        ids, labels, mask = (
            batch["input_ids"][row],
            batch["labels"][row],
            batch["attention_mask"][row],
        )
        n = lengths[row]
        assert mask[:n].all() and not mask[n:].any()
        assert (ids[n:] == tokenizer.pad_token_id).all() and (labels[n:] == IGNORE_INDEX).all()
        learned = ids[:n][labels[:n] != IGNORE_INDEX].tolist()
        masked = ids[:n][labels[:n] == IGNORE_INDEX].tolist()
        assert learned[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(learned[:-1]) == build_completion(example)
        assert tokenizer.decode(masked, skip_special_tokens=True) == build_prompt(cfg.task, example)
        assert (labels[:n][labels[:n] != IGNORE_INDEX] == ids[:n][labels[:n] != IGNORE_INDEX]).all()


def mixed_ranks(cfg: ExperimentConfig) -> dict[str, int]:
    from gradience.train import target_module_names

    model, _ = load_model_and_tokenizer(cfg)
    names = target_module_names(model, cfg.lora.target_modules)
    return {n: (4, 1, 2)[i % 3] for i, n in enumerate(names)}


PAIRED_CONFIG = {"max_steps": 4, "gradient_accumulation_steps": 2, "save_steps": 2, "eval_steps": 2}


@pytest.fixture(scope="module")
def paired_runs(tmp_path_factory, task_data):
    """Four runs: seed 7 twice (uniform r=4), seed 7 with mixed ranks, seed 8 (uniform r=4)."""
    cfg = tiny_config(**PAIRED_CONFIG)
    root = tmp_path_factory.mktemp("paired")
    plan = {"a": (7, 4), "b": (7, 4), "mixed": (7, mixed_ranks(cfg)), "other_seed": (8, 4)}
    runs = {}
    for name, (seed, ranks) in plan.items():
        recorder, events = BatchRecorder(), []
        result = train_variant(
            cfg,
            ranks,
            seed,
            root / name,
            variant=name,
            task_data=task_data,
            model_loader=recorder,
            progress=events.append,
        )
        runs[name] = {
            "dir": root / name,
            "result": result,
            "batches": recorder,
            "events": events,
            "ranks": ranks,
        }
    return runs


def test_same_seed_gives_identical_adapters_and_another_seed_does_not(paired_runs):
    a, b, c = (adapter_tensors(paired_runs[name]["dir"]) for name in ("a", "b", "other_seed"))
    assert a.keys() == b.keys() and len(a) == 2 * len(paired_runs["a"]["result"].ranks)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)
    assert paired_runs["a"]["result"].loss_curve == paired_runs["b"]["result"].loss_curve


def test_same_seed_gives_every_rank_pattern_the_same_batches_in_the_same_order(paired_runs):
    batches = {name: run["batches"].batches for name, run in paired_runs.items()}
    assert len(batches["a"]) == 4 * 2  # steps x gradient accumulation
    assert batches["mixed"] == batches["a"]
    assert batches["other_seed"] != batches["a"]
    for name, run in paired_runs.items():
        assert run["result"].tokens == run["batches"].tokens, name
    assert (
        paired_runs["mixed"]["result"].trainable_params
        < paired_runs["a"]["result"].trainable_params
    )


def test_train_result_and_adapter_record_the_intent(paired_runs):
    run = paired_runs["mixed"]
    cfg, ranks, result, run_dir = (
        tiny_config(**PAIRED_CONFIG),
        run["ranks"],
        run["result"],
        run["dir"],
    )
    saved = read_model(run_dir / "train_result.json", TrainResult)
    assert saved.model_dump(mode="json") == result.model_dump(mode="json")
    assert result.ranks == ranks and list(result.ranks) == list(ranks)
    assert result.alpha_policy == "constant_scale"
    assert result.alphas == {n: r * 8 / 4 for n, r in ranks.items()}
    model, _ = load_model_and_tokenizer(cfg)
    shapes = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if n in ranks}
    assert result.trainable_params == sum(r * sum(shapes[n]) for n, r in ranks.items())
    assert result.steps == 4 and [step for step, _ in result.loss_curve] == [1, 2, 3, 4]
    assert [e["step"] for e in run["events"]] == [1, 2, 3, 4] and run["events"][-1][
        "max_steps"
    ] == 4
    assert result.loss_last == result.loss_curve[-1][1]
    assert [step for step, _ in result.eval_loss_curve] == [2, 4]
    assert result.eval_loss == pytest.approx(result.eval_loss_curve[-1][1], rel=1e-5)
    assert result.loss_min == min(v for _, v in result.loss_curve)
    assert {"torch", "transformers", "peft"} <= set(result.versions)
    assert (
        result.variant == "mixed" and result.seed == 7 and result.config_hash == cfg.config_hash()
    )
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert len(adapter_config["rank_pattern"]) == len(ranks)
    tensors = adapter_tensors(run_dir)
    for name, r in ranks.items():
        assert tensors[f"base_model.model.{name}.lora_A.weight"].shape[0] == r
        assert tensors[f"base_model.model.{name}.lora_B.weight"].shape[1] == r
    assert not (run_dir / "checkpoints").exists()


def test_nan_loss_stops_the_run_with_a_clear_error(tmp_path, task_data):
    cfg = tiny_config(learning_rate=1e30, max_steps=6, max_grad_norm=1e30)
    with pytest.raises(
        GradienceError, match=r"step \d+: (loss|grad_norm) is (nan|inf).*learning_rate"
    ):
        train_variant(cfg, None, 1, tmp_path, task_data=task_data, progress=lambda e: None)
    assert not (tmp_path / "train_result.json").exists()
    assert not (tmp_path / "adapter").exists()


class Interrupt(Exception):
    pass


def die_at_step(step: int):
    def progress(event: dict) -> None:
        if event["step"] == step:
            raise Interrupt

    return progress


def test_killed_run_resumes_from_its_checkpoint_and_ends_where_an_unbroken_run_ends(
    tmp_path, task_data, paired_runs
):
    cfg = tiny_config(**PAIRED_CONFIG)
    with pytest.raises(Interrupt):
        train_variant(cfg, 4, 7, tmp_path, task_data=task_data, progress=die_at_step(3))
    assert (tmp_path / "checkpoints" / "checkpoint-2").is_dir()
    resumed = train_variant(cfg, 4, 7, tmp_path, task_data=task_data, progress=lambda e: None)
    unbroken = paired_runs["a"]
    assert resumed.resumed_from.endswith("checkpoint-2")
    assert resumed.steps == 4 and resumed.tokens == unbroken["result"].tokens
    a, b = adapter_tensors(unbroken["dir"]), adapter_tensors(tmp_path)
    assert all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)


def test_checkpoint_of_another_run_is_not_resumed(tmp_path, task_data):
    cfg = tiny_config(max_steps=2, save_steps=1)
    with pytest.raises(Interrupt):
        train_variant(cfg, None, 5, tmp_path, task_data=task_data, progress=die_at_step(2))
    assert (tmp_path / "checkpoints" / "checkpoint-1").is_dir()
    other_seed = train_variant(cfg, None, 6, tmp_path, task_data=task_data, progress=lambda e: None)
    assert other_seed.resumed_from is None and other_seed.steps == 2


def test_same_seed_gives_identical_predictions(paired_runs, tmp_path, task_data):
    from gradience.evaluate import evaluate_adapter

    cfg = tiny_config(**PAIRED_CONFIG)
    texts = {}
    for name in ("a", "b"):
        result = evaluate_adapter(
            cfg, paired_runs[name]["dir"], tmp_path / name, task_data=task_data
        )
        assert result.adapter == str(paired_runs[name]["dir"] / "adapter")
        texts[name] = (tmp_path / name / "predictions.jsonl").read_text()
    assert texts["a"] == texts["b"] and len(texts["a"].splitlines()) == len(task_data.eval)


def test_gradient_checkpointing_is_on_and_still_trains_the_adapter(tmp_path, task_data):
    loaded = []

    def loader(cfg):
        model, tokenizer = load_model_and_tokenizer(cfg)
        loaded.append(model)
        return model, tokenizer

    cfg = tiny_config(max_steps=2, gradient_checkpointing=True)
    result = train_variant(
        cfg, 2, 1, tmp_path, task_data=task_data, model_loader=loader, progress=lambda e: None
    )
    assert loaded[0].is_gradient_checkpointing
    lora_b = [t for key, t in adapter_tensors(tmp_path).items() if "lora_B" in key]
    assert result.steps == 2 and len(lora_b) == len(result.ranks)
    assert all(t.abs().sum() > 0 for t in lora_b)  # B starts at 0: every module got gradients


def test_every_train_knob_reaches_the_trainer(tmp_path):
    from gradience.train.arguments import training_arguments

    knobs = {
        "max_steps": 17,
        "learning_rate": 1.5e-4,
        "per_device_train_batch_size": 3,
        "gradient_accumulation_steps": 5,
        "warmup_steps": 7,
        "lr_scheduler_type": "linear",
        "weight_decay": 0.01,
        "max_grad_norm": 0.5,
        "optim": "adamw_torch",
        "logging_steps": 4,
        "eval_steps": 6,
        "save_steps": 8,
        "gradient_checkpointing": True,
        "report_to": ["tensorboard"],
        "dataloader_num_workers": 2,
    }
    cfg = tiny_config(**knobs)
    args = training_arguments(cfg, 99, tmp_path, quiet=True)
    for name in ("max_steps", "learning_rate", "per_device_train_batch_size", "warmup_steps"):
        assert getattr(args, name) == knobs[name], name
    for name in ("gradient_accumulation_steps", "weight_decay", "max_grad_norm", "logging_steps"):
        assert getattr(args, name) == knobs[name], name
    assert args.eval_steps == 6 and args.eval_strategy == "steps"
    assert args.save_steps == 8 and args.save_strategy == "steps"
    assert args.lr_scheduler_type == "linear" and args.optim == "adamw_torch"
    assert args.gradient_checkpointing and args.dataloader_num_workers == 2
    assert args.report_to == ["tensorboard"]
    assert args.seed == 99 and args.data_seed == 99 and args.disable_tqdm
    assert not args.logging_nan_inf_filter and not args.bf16 and not args.fp16
    defaults = training_arguments(tiny_config(), 1, tmp_path, quiet=False)
    assert defaults.save_strategy == "no" and defaults.eval_strategy == "no"
    assert defaults.report_to in ([], "none", ["none"])
