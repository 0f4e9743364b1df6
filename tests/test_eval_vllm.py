"""The vllm backend's merged model decodes like the trained adapter; no vLLM is a clear error.

vLLM itself needs CUDA and is not installed here: the parity test runs the folder vLLM would
be given through transformers, against the unmerged PeftModel the HF backend evaluates.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from gradience.config import ExperimentConfig
from gradience.errors import GradienceError
from gradience.evaluate.generate import generate_completions
from gradience.evaluate.vllm_backend import save_merged_model
from gradience.experiment import run_mechanism_test
from gradience.models import load_model_and_tokenizer
from gradience.models.reuse import weights_fingerprint
from gradience.tasks import build_prompt, load_task
from gradience.train.lora_build import build_peft_model, target_module_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**task: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": {"name": "embedded:tiny-mistral-random"},
            "task": {
                "name": "arithmetic",
                "generated_train_size": 16,
                "generated_eval_size": 12,
                "eval_samples": 12,
                "max_seq_length": 64,
                "max_new_tokens": 12,
                **task,
            },
            "train": {"seeds": [42], "max_steps": 1, "save_steps": None, "warmup_steps": 0},
            "lora": {
                "probe_r": 8,
                "lora_alpha": 16,
                "lora_dropout": 0.0,
                "alpha_policy": "fixed_alpha",
            },
            "compression": {"allowed_ranks": [2, 4, 8]},
            "env": {"device": "cpu", "torch_dtype": "float32", "num_threads": 1},
        }
    )


def test_the_merged_folder_decodes_exactly_like_the_unmerged_heterogeneous_adapter(
    tmp_path: Path,
) -> None:
    cfg = tiny_config()
    model, tokenizer = load_model_and_tokenizer(cfg)
    names = target_module_names(model, cfg.lora.target_modules)
    ranks = {name: (2, 4, 8)[i % 3] for i, name in enumerate(names)}  # one alpha/r would be wrong
    peft_model, _ = build_peft_model(model, ranks, cfg.lora, None)
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter: a sizeable update in every module
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    peft_model.eval()
    before = weights_fingerprint(peft_model)
    prompts = [build_prompt(cfg.task, item) for item in load_task(cfg.task).eval]
    settings = {
        "batch_size": 4,
        "max_new_tokens": 12,
        "stop_strings": ["\nQuestion:"],
        "stop_at_answer": True,
    }
    unmerged = generate_completions(peft_model, tokenizer, prompts, **settings)

    folder = save_merged_model(peft_model, tokenizer, tmp_path / "merged")
    assert weights_fingerprint(peft_model) == before  # the trained model is left as it was
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    base_q = peft_model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.equal(merged.state_dict()[q_proj], base_q)  # the update is folded in
    from_folder = generate_completions(merged, tokenizer, prompts, **settings)
    assert [g.text for g in from_folder] == [g.text for g in unmerged]
    assert len({g.text for g in unmerged}) > 1  # not a degenerate constant completion


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_asking_for_vllm_without_it_stops_before_training_naming_the_field(tmp_path) -> None:
    cfg = tiny_config(eval_backend="vllm")
    with pytest.raises(GradienceError, match=r"gradience\[vllm\]") as error:
        run_mechanism_test(cfg, tmp_path / "run")
    assert error.value.field == "task.eval_backend"
    assert not (tmp_path / "run").exists()
