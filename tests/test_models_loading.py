"""Model loading by name: devices, dtypes, pad tokens, and actionable hub errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from gradience.config import EnvConfig, ExperimentConfig
from gradience.errors import GradienceError
from gradience.models import load_model_and_tokenizer, resolve_device, resolve_dtype
from gradience.models.embedded import random_model
from gradience.models.hub import ensure_pad_token


def test_resolve_device_and_dtype_on_cpu() -> None:
    assert resolve_device(EnvConfig(device="cpu")) == torch.device("cpu")
    assert resolve_dtype(EnvConfig(torch_dtype="float16")) == torch.float16
    if not torch.cuda.is_available():
        assert resolve_device(EnvConfig(device="auto")).type in {"cpu", "mps"}
        assert resolve_dtype(EnvConfig(device="auto", torch_dtype="auto")) == torch.float32
        with pytest.raises(GradienceError, match="env.device: CUDA was asked for"):
            resolve_device(EnvConfig(device="cuda"))


def test_missing_pad_token_falls_back_to_eos() -> None:
    model, tokenizer = random_model()
    tokenizer.pad_token = None
    model.generation_config.pad_token_id = None
    ensure_pad_token(tokenizer, model)
    assert tokenizer.pad_token == tokenizer.eos_token
    assert model.generation_config.pad_token_id == tokenizer.eos_token_id


def test_unreachable_model_is_an_actionable_error(tmp_path) -> None:
    code = (
        "from gradience.config import ExperimentConfig\n"
        "from gradience.errors import GradienceError\n"
        "from gradience.models import load_model_and_tokenizer\n"
        "cfg = ExperimentConfig.model_validate({'model': {'name': 'gradience-test/no-such-model'},"
        " 'env': {'device': 'cpu', 'torch_dtype': 'float32'}})\n"
        "try:\n    load_model_and_tokenizer(cfg)\n"
        "except GradienceError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    message = out.stdout
    assert message.startswith("model.name: could not load model 'gradience-test/no-such-model'")
    assert "huggingface-cli login" in message and "HF_HUB_OFFLINE" in message


def test_hub_only_options_are_rejected_for_embedded_models() -> None:
    cfg = ExperimentConfig.model_validate(
        {
            "model": {"name": "embedded:tiny-mistral-random", "gguf_file": "x.gguf"},
            "env": {"device": "cpu"},
        }
    )
    with pytest.raises(GradienceError, match="model.gguf_file: not used by the embedded model"):
        load_model_and_tokenizer(cfg)


def test_attn_implementation_is_applied_to_embedded_models() -> None:
    cfg = ExperimentConfig.model_validate(
        {
            "model": {"name": "embedded:tiny-mistral-random", "attn_implementation": "eager"},
            "env": {"device": "cpu", "torch_dtype": "float32"},
        }
    )
    model, _ = load_model_and_tokenizer(cfg)
    assert model.config._attn_implementation == "eager"


def test_a_local_folder_loads_through_from_pretrained(tmp_path) -> None:
    model, tokenizer = random_model()
    model.save_pretrained(tmp_path)
    tokenizer.pad_token = None  # as Mistral and Llama ship: no pad token
    tokenizer.save_pretrained(tmp_path)
    cfg = ExperimentConfig.model_validate(
        {
            "model": {"name": str(tmp_path), "attn_implementation": "eager"},
            "env": {"device": "cpu", "torch_dtype": "bfloat16"},
        }
    )
    loaded, loaded_tokenizer = load_model_and_tokenizer(cfg)
    assert loaded.config._attn_implementation == "eager"
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded_tokenizer.pad_token == loaded_tokenizer.eos_token
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor.to(torch.bfloat16), loaded.state_dict()[name]), name
