"""Reusing the base model across a seed's jobs changes no result, only the number of loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import gradience.models
from gradience.config import ExperimentConfig, load_config
from gradience.errors import GradienceError
from gradience.experiment import run_mechanism_test
from gradience.models.reuse import BaseModelCache, reuse_base_model, weights_fingerprint
from gradience.train.lora_build import build_peft_model, target_module_names, uniform_ranks

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
# trained, trained from the audit, and the probe cut by SVD then loaded (load_trained)
VARIANTS = ["probe", "per_layer", "per_layer_truncated"]
#: train_result.json keys that legitimately differ between two runs of the same jobs.
RUN_SPECIFIC = {"wall_time_s", "train_loop_s", "adapter_dir", "config_hash", "truncated_from"}


def reduced_config(reuse: bool | None) -> ExperimentConfig:
    cfg = load_config(REPO / "experiments" / "configs" / "tiny_test.yaml")
    cfg.train.seeds = [42]
    cfg.train.max_steps = 3
    cfg.train.save_steps = None
    cfg.compression.variants = list(VARIANTS)
    cfg.env.reuse_base_model = reuse
    cfg.task.eval_batch_size = "auto"
    return cfg


def counting_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every fresh load of a base model (the real loader still does the loading)."""
    loads: list[str] = []
    real = gradience.models.load_model_and_tokenizer

    def load(cfg):
        loads.append(cfg.model.name)
        return real(cfg)

    monkeypatch.setattr(gradience.models, "load_model_and_tokenizer", load)
    return loads


def job_outputs(run_dir: Path, variant: str) -> tuple[dict, dict, str, dict[str, torch.Tensor]]:
    folder = run_dir / "seed_42" / variant
    train = json.loads((folder / "train_result.json").read_text())
    evaluation = json.loads((folder / "eval.json").read_text())
    for key in RUN_SPECIFIC:
        train.pop(key, None)
    for key in ("wall_time_s", "generation_time_s", "tokens_per_s", "adapter", "config_hash"):
        evaluation.pop(key, None)
    predictions = (folder / "predictions.jsonl").read_text()
    return (
        train,
        evaluation,
        predictions,
        load_file(str(folder / "adapter" / "adapter_model.safetensors")),
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, one_torch_thread):
    """The reduced config run twice: loading the base model per job, then reusing it."""
    monkeypatch = pytest.MonkeyPatch()
    loads = counting_loads(monkeypatch)
    root = tmp_path_factory.mktemp("reuse")
    try:
        fresh = run_mechanism_test(reduced_config(reuse=False), root / "fresh")
        fresh_loads = len(loads)
        reused = run_mechanism_test(reduced_config(reuse=None), root / "reused")
    finally:
        monkeypatch.undo()
    assert fresh.complete and reused.complete
    return fresh, reused, fresh_loads, len(loads) - fresh_loads


def test_a_run_reusing_the_base_model_equals_a_run_loading_it_afresh(two_runs) -> None:
    fresh, reused, fresh_loads, reused_loads = two_runs
    assert fresh_loads == len(VARIANTS)  # one load per train+eval job
    assert reused_loads == 1  # one load for the whole run
    for variant in VARIANTS:
        a_train, a_eval, a_pred, a_adapter = job_outputs(fresh.run_dir, variant)
        b_train, b_eval, b_pred, b_adapter = job_outputs(reused.run_dir, variant)
        assert a_train == b_train, variant
        assert a_eval == b_eval, variant
        assert a_pred == b_pred, variant
        assert a_adapter.keys() == b_adapter.keys()
        assert all(torch.equal(a_adapter[k], b_adapter[k]) for k in a_adapter), variant


def test_an_unpinned_batch_size_is_chosen_by_the_probe_and_used_by_every_variant(two_runs) -> None:
    _, reused, _, _ = two_runs
    evals = {
        v: json.loads((reused.run_dir / "seed_42" / v / "eval.json").read_text()) for v in VARIANTS
    }
    assert {e["eval_batch_size"] for e in evals.values()} == {16}  # on CPU: the fixed default
    assert evals["probe"]["eval_batch_size_source"] == "cpu default"
    assert {evals[v]["eval_batch_size_source"] for v in VARIANTS[1:]} == {"run"}


def test_a_borrowed_model_comes_back_without_lora_and_with_the_same_bits() -> None:
    cfg = reduced_config(reuse=True)
    cache = BaseModelCache()
    model, _ = cache.borrow(cfg)
    loaded = weights_fingerprint(model)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    names = target_module_names(model, cfg.lora.target_modules)
    peft_model, _ = build_peft_model(model, uniform_ranks(names, 8), cfg.lora, None)
    with torch.no_grad():  # a trained LoRA: B no longer zero
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    peft_model.train()
    cache.give_back(peft_model)
    again, _ = cache.borrow(cfg)
    assert again is model and cache.loads == 1
    assert not any("lora" in name for name, _ in again.named_parameters())
    assert weights_fingerprint(again) == loaded
    assert {n: p.requires_grad for n, p in again.named_parameters()} == grads
    assert not again.training


def test_a_model_never_given_back_or_changed_is_loaded_afresh() -> None:
    cfg = reduced_config(reuse=True)
    cache = BaseModelCache()
    first, _ = cache.borrow(cfg)
    names = target_module_names(first, cfg.lora.target_modules)
    build_peft_model(first, uniform_ranks(names, 2), cfg.lora, None)
    second, _ = cache.borrow(cfg)  # the first job raised before giving its model back
    assert second is not first and cache.loads == 2
    with torch.no_grad():
        next(second.parameters()).add_(1.0)
    with pytest.warns(UserWarning, match="weights differ"):
        cache.give_back(second)
    third, _ = cache.borrow(cfg)
    assert third is not second and cache.loads == 3


def test_the_switch_is_on_where_safe_and_true_insists() -> None:
    assert reuse_base_model(reduced_config(reuse=None), "local")
    assert not reuse_base_model(reduced_config(reuse=None), "ray")
    assert not reuse_base_model(reduced_config(reuse=False), "local")
    checkpointing = reduced_config(reuse=None)
    checkpointing.train.gradient_checkpointing = True
    assert not reuse_base_model(checkpointing, "local")
    checkpointing.env.reuse_base_model = True
    with pytest.raises(GradienceError, match="gradient_checkpointing") as error:
        reuse_base_model(checkpointing, "local")
    assert error.value.field == "env.reuse_base_model"
    with pytest.raises(GradienceError, match="fresh worker"):
        reuse_base_model(reduced_config(reuse=True), "ray")
