"""The vllm backend serves the trained update through vLLM's LoRA support, never a merged base.

vLLM needs CUDA and is not installed here. What runs everywhere: the uniform export handed to
vLLM, loaded back with PEFT on the same base, has every module's trained update (a
heterogeneous adapter, rsLoRA and plain alpha/r) and decodes the same completions; its config
gives scaling 1 under vLLM's one-alpha/r rule; the engine's max_lora_rank comes from vLLM's
allowed set; configs and adapters vLLM would refuse stop with a GradienceError naming the
field; the evaluation's vllm branch scores that export (vLLM replaced by a transformers
stand-in that loads the folder its LoRARequest would name). What needs vLLM and a GPU (the
greedy-token parity) is skipped here with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open

from gradience.config import ExperimentConfig
from gradience.errors import GradienceError
from gradience.evaluate import evaluate_model
from gradience.evaluate.generate import finish_completion, generate_completions
from gradience.evaluate.run import adapter_applied
from gradience.evaluate.vllm_backend import (
    check_vllm_config,
    engine_settings,
    vllm_unavailable_reason,
)
from gradience.evaluate.vllm_export import (
    VLLM_MAX_LORA_RANKS,
    check_vllm_adapter_config,
    choose_max_lora_rank,
    export_for_vllm,
)
from gradience.evaluate.vllm_parity import vllm_parity
from gradience.experiment import run_mechanism_test
from gradience.models import load_model_and_tokenizer, quiet_peft_deprecations
from gradience.models.embedded import shipped_model_dir
from gradience.models.reuse import weights_fingerprint
from gradience.tasks import build_prompt, load_task
from gradience.train.lora_build import build_peft_model, lora_layers, target_module_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**sections: dict[str, Any]) -> ExperimentConfig:
    config: dict[str, dict[str, Any]] = {
        "model": {"name": "embedded:tiny-mistral-random"},
        "task": {
            "name": "arithmetic",
            "generated_train_size": 16,
            "generated_eval_size": 12,
            "eval_samples": 12,
            "max_seq_length": 64,
            "max_new_tokens": 12,
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
    for name, values in sections.items():
        config[name] = {**config[name], **values}
    return ExperimentConfig.model_validate(config)


def vllm_ready_config(**sections: dict[str, Any]) -> ExperimentConfig:
    """A config the vllm backend accepts: a base on disk, CUDA, half precision."""
    base = {
        "model": {"name": "embedded:tiny-mistral"},
        "task": {"eval_backend": "vllm"},
        "env": {"device": "auto", "torch_dtype": "auto", "num_threads": 1},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return tiny_config(**base)


def heterogeneous_adapter(cfg: ExperimentConfig) -> Any:
    """The embedded random base with ranks 2/4/8 across its modules and a sizeable update."""
    model, _ = load_model_and_tokenizer(cfg)
    names = target_module_names(model, cfg.lora.target_modules)
    ranks = {name: (2, 4, 8)[i % 3] for i, name in enumerate(names)}
    torch.manual_seed(0)
    peft_model, _ = build_peft_model(model, ranks, cfg.lora, None)
    with torch.no_grad():  # a trained adapter: PEFT starts lora_B at zero
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    return peft_model.eval()


def vllm_scaling(config: dict[str, Any]) -> float:
    """The one scaling vLLM applies to a whole adapter (PEFTHelper.__post_init__,
    vllm/lora/peft_helper.py): lora_alpha / r, or / sqrt(r) with use_rslora."""
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def completions(cfg: ExperimentConfig, model: Any, tokenizer: Any) -> list[str]:
    prompts = [build_prompt(cfg.task, item) for item in load_task(cfg.task).eval]
    generations = generate_completions(
        model,
        tokenizer,
        prompts,
        batch_size=4,
        max_new_tokens=cfg.task.max_new_tokens,
        stop_strings=cfg.task.stop_strings,
        stop_at_answer=True,
    )
    return [g.text for g in generations]


@pytest.mark.parametrize("alpha_policy", ["rslora", "fixed_alpha"])
def test_the_vllm_export_applies_every_module_s_trained_update(tmp_path, alpha_policy) -> None:
    cfg = tiny_config(lora={"alpha_policy": alpha_policy})
    trained = heterogeneous_adapter(cfg)
    layers = lora_layers(trained)
    scalings = {name: layer.scaling["default"] for name, layer in layers.items()}
    one_scale = vllm_scaling(trained.peft_config["default"].to_dict())
    # handed over as trained, vLLM's one alpha/r would scale some modules wrongly
    assert any(not math.isclose(s, one_scale) for s in scalings.values())
    before = weights_fingerprint(trained)

    served = export_for_vllm(trained, tmp_path / "served")

    assert weights_fingerprint(trained) == before  # the scored model is left as trained
    config = json.loads((served.folder / "adapter_config.json").read_text())
    assert served.rank == 8
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (8, 8, False)
    assert config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    assert vllm_scaling(config) == 1.0  # exactly, under vLLM's rule
    check_vllm_adapter_config(config, served.folder / "adapter_config.json")
    with safe_open(str(served.folder / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        assert len(keys) == 2 * len(layers)
        for key in keys:  # what vLLM's parse_fine_tuned_lora_name reads
            match = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key)
            assert match is not None and match[1] in layers, key
            shape = f.get_slice(key).get_shape()
            assert (shape[0] if match[2] == "A" else shape[1]) == served.rank

    fresh, tokenizer = load_model_and_tokenizer(cfg)
    with quiet_peft_deprecations():
        exported = PeftModel.from_pretrained(fresh, str(served.folder)).eval()
    exported_layers = lora_layers(exported)
    assert set(exported_layers) == set(layers)
    with torch.no_grad():
        for name, layer in exported_layers.items():
            assert layer.scaling["default"] == 1.0 and layer.r["default"] == 8
            want = layers[name].get_delta_weight("default")
            got = layer.get_delta_weight("default")
            # factors rebuilt through a float64 SVD and stored in float32
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * float(want.abs().max()))
    trained_texts = completions(cfg, trained, tokenizer)
    assert completions(cfg, exported, tokenizer) == trained_texts
    assert len(set(trained_texts)) > 1  # not a degenerate constant completion


def test_max_lora_rank_is_the_smallest_allowed_rank_that_holds_the_adapter() -> None:
    assert VLLM_MAX_LORA_RANKS == (8, 16, 32, 64, 128, 256, 320, 512)
    expected = {1: 8, 8: 8, 9: 16, 33: 64, 64: 64, 65: 128, 300: 320, 321: 512, 512: 512}
    assert {rank: choose_max_lora_rank(rank) for rank in expected} == expected
    with pytest.raises(GradienceError, match="above vLLM's largest") as error:
        choose_max_lora_rank(513)
    assert error.value.field == "lora.probe_r"
    with pytest.raises(ValueError):
        choose_max_lora_rank(0)


def test_one_engine_holds_every_adapter_of_a_run() -> None:
    cfg = vllm_ready_config()
    settings = engine_settings(cfg)
    assert settings.model == str(shipped_model_dir())  # the base on disk, never a copy
    assert settings.max_lora_rank == 8  # room for lora.probe_r: every variant's ranks fit
    assert engine_settings(cfg, adapter_rank=2) == settings
    larger = engine_settings(cfg, adapter_rank=20)
    assert larger.max_lora_rank == 32
    assert larger.holds(settings) and not settings.holds(larger)
    other_base = engine_settings(vllm_ready_config(model={"name": "some/hub-model"}))
    assert not other_base.holds(settings) and not settings.holds(other_base)


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ({"lora": {"bias": "all"}}, "lora.bias"),
        ({"model": {"name": "embedded:tiny-mistral-random"}}, "model.name"),
        ({"model": {"name": "some/model", "gguf_file": "model.gguf"}}, "model.gguf_file"),
        ({"env": {"device": "cpu"}}, "env.device"),
        ({"env": {"torch_dtype": "float32"}}, "env.torch_dtype"),
        (
            {"lora": {"probe_r": 1024}, "compression": {"allowed_ranks": [2, 4, 1024]}},
            "lora.probe_r",
        ),
    ],
)
def test_configs_vllm_cannot_serve_as_trained_stop_naming_the_field(sections, field) -> None:
    check_vllm_config(vllm_ready_config())  # the base config is servable
    with pytest.raises(GradienceError) as error:
        check_vllm_config(vllm_ready_config(**sections))
    assert error.value.field == field


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lora_alpha": 16}, "lora_alpha"),  # one alpha/r other than 1
        ({"use_rslora": True}, "lora_alpha"),
        ({"rank_pattern": {"q_proj": 4}}, "lora_alpha"),
        ({"alpha_pattern": {"q_proj": 4.0}}, "lora_alpha"),
        ({"target_modules": None}, "target_modules"),
        ({"use_dora": True}, "use_dora"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "lora_only"}, "bias"),
        ({"lora_bias": True}, "lora_bias"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights"),
    ],
)
def test_adapters_vllm_would_refuse_or_misread_are_refused(tmp_path, change, field) -> None:
    uniform = {
        "r": 8,
        "lora_alpha": 8,
        "use_rslora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "init_lora_weights": True,
    }
    path = tmp_path / "adapter_config.json"
    check_vllm_adapter_config(uniform, path)
    check_vllm_adapter_config({**uniform, "init_lora_weights": "gaussian"}, path)
    with pytest.raises(GradienceError) as error:
        check_vllm_adapter_config({**uniform, **change}, path)
    assert (error.value.field, error.value.path) == (field, str(path))


def test_adapter_applied_says_how_the_adapter_reached_the_scored_model() -> None:
    assert adapter_applied(tiny_config(), "run/adapter") == "unmerged"
    served = adapter_applied(vllm_ready_config(), "run/adapter")
    assert served is not None and served.startswith("vllm lora") and "unmerged" in served
    assert "scaling folded" in served
    assert adapter_applied(vllm_ready_config(), None) is None  # the base model alone


def test_the_vllm_branch_scores_the_export_of_the_in_memory_adapter(tmp_path, monkeypatch) -> None:
    """vLLM replaced by a stand-in that does what it would: load the folder the LoRARequest
    names onto the base and decode the prompt ids greedily up to the budget."""
    import gradience.evaluate.vllm_backend as backend

    cfg = tiny_config()
    trained = heterogeneous_adapter(cfg)
    _, tokenizer = load_model_and_tokenizer(cfg)
    served: list[tuple[Path | None, dict[str, Any] | None]] = []

    def stand_in(run_cfg, prompt_ids, *, adapter, tokenizer):
        max_new_tokens, stop_strings = run_cfg.task.max_new_tokens, run_cfg.task.stop_strings
        stop_at_answer = True  # as vllm_generate: the HF path's cut after the answer line
        model, _ = load_model_and_tokenizer(run_cfg)
        config = None
        if adapter is not None:
            config = json.loads((adapter.folder / "adapter_config.json").read_text())
            with quiet_peft_deprecations():
                model = PeftModel.from_pretrained(model, str(adapter.folder))
        served.append((adapter.folder if adapter else None, config))
        generations = []
        with torch.no_grad():
            for ids in prompt_ids:
                output = model.eval().generate(
                    input_ids=torch.tensor([ids]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
                new = output[0, len(ids) :].tolist()
                generations.append(finish_completion(tokenizer, new, stop_strings, stop_at_answer))
        return generations

    monkeypatch.setattr(backend, "require_vllm", lambda: None)
    monkeypatch.setattr(backend, "check_vllm_config", lambda cfg: None)  # CPU, float32
    monkeypatch.setattr(backend, "vllm_generate", stand_in)
    vllm_cfg = cfg.model_copy(update={"task": cfg.task.model_copy(update={"eval_backend": "vllm"})})

    through_vllm = evaluate_model(
        vllm_cfg, trained, tokenizer, tmp_path / "vllm", adapter_label="a"
    )
    through_hf = evaluate_model(cfg, trained, tokenizer, tmp_path / "hf", adapter_label="a")

    folder, config = served[0]
    assert config is not None and config["r"] == config["lora_alpha"] == 8
    assert folder is not None and not folder.exists()  # the export is removed afterwards
    assert {p.name for p in (tmp_path / "vllm").iterdir()} == {"predictions.jsonl", "eval.json"}
    assert through_vllm.exact_match == through_hf.exact_match
    recorded = json.loads((tmp_path / "vllm" / "eval.json").read_text())
    assert recorded["adapter_applied"].startswith("vllm lora")
    hf_rows = (tmp_path / "hf" / "predictions.jsonl").read_text().splitlines()
    vllm_rows = (tmp_path / "vllm" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(r)["completion"] for r in vllm_rows] == [
        json.loads(r)["completion"] for r in hf_rows
    ]

    with trained.disable_adapter():
        base = evaluate_model(vllm_cfg, trained, tokenizer, tmp_path / "base")
    assert served[-1] == (None, None) and base.adapter is None  # the base: no LoRA request


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_the_parity_check_says_why_it_was_skipped_without_vllm() -> None:
    result = vllm_parity(vllm_ready_config(), n_prompts=4)
    assert result == {"status": "skipped", "reason": vllm_unavailable_reason()}
    assert "vLLM is not installed" in result["reason"]


@pytest.mark.skipif(vllm_unavailable_reason() is not None, reason=str(vllm_unavailable_reason()))
def test_vllm_decodes_the_export_like_the_unmerged_adapter() -> None:
    result = vllm_parity(vllm_ready_config(), n_prompts=12)
    assert result["status"] == "ok", result
    assert result["lora_changes_output_fraction"] > 0  # the LoRA really was applied
    assert result["wake_consistent"]
    # bfloat16 in both engines, rounded differently: near-ties may flip, most rows agree
    assert result["token_match_fraction"] >= 0.75, result["first_mismatch"]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_asking_for_vllm_without_it_stops_before_training_naming_the_field(tmp_path) -> None:
    cfg = tiny_config(task={"eval_backend": "vllm"})
    with pytest.raises(GradienceError, match=r"gradience\[vllm\]") as error:
        run_mechanism_test(cfg, tmp_path / "run")
    assert error.value.field == "task.eval_backend"
    assert not (tmp_path / "run").exists()
