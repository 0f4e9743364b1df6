"""``gradience train`` and ``gradience eval`` end to end on the embedded random model."""

from __future__ import annotations

import pytest
import yaml

from gradience.cli import main
from gradience.config import load_config
from gradience.io import read_model, write_model
from gradience.models import load_model_and_tokenizer
from gradience.results import EvalResult, RankPattern, TrainResult
from gradience.train import target_module_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def config_file(tmp_path):
    config = {
        "model": {"name": "embedded:tiny-mistral-random"},
        "task": {
            "name": "arithmetic",
            "generated_train_size": 32,
            "generated_eval_size": 8,
            "eval_samples": 8,
            "max_new_tokens": 8,
        },
        "train": {
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "warmup_steps": 0,
            "logging_steps": 1,
            "save_steps": None,
        },
        "lora": {"probe_r": 4, "lora_alpha": 8},
        "compression": {"allowed_ranks": [1, 2, 4]},
        "env": {"device": "cpu", "torch_dtype": "float32", "num_threads": 1},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def rank_pattern(config_file, **overrides) -> RankPattern:
    cfg = load_config(config_file)
    model, _ = load_model_and_tokenizer(cfg)
    names = target_module_names(model, cfg.lora.target_modules)
    ranks = {name: (1, 2, 4)[i % 3] for i, name in enumerate(names)}
    fields = {
        "policy": "energy@0.90",
        "allowed_ranks": [1, 2, 4],
        "probe_r": 4,
        "ranks": ranks,
        "trainable_params": 0,
    }
    return RankPattern(**{**fields, **overrides})


def test_train_with_a_rank_file_then_eval(tmp_path, config_file, capsys):
    pattern = rank_pattern(config_file)
    write_model(tmp_path / "ranks.json", pattern)
    out = tmp_path / "run"
    args = [
        "train",
        "--config",
        str(config_file),
        "--ranks",
        str(tmp_path / "ranks.json"),
        "--seed",
        "3",
    ]
    assert main([*args, "--output", str(out), "--variant", "per_layer"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("trained seed 3: 2 steps") and str(out / "adapter") in summary
    result = read_model(out / "train_result.json", TrainResult)
    assert result.ranks == pattern.ranks and result.variant == "per_layer" and result.seed == 3

    assert (
        main(
            [
                "eval",
                "--config",
                str(config_file),
                "--adapter",
                str(out),
                "--output",
                str(out / "eval"),
            ]
        )
        == 0
    )
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    evaluation = read_model(out / "eval" / "eval.json", EvalResult)
    assert summary.startswith(f"exact_match {evaluation.exact_match:.3f}") and "/8)" in summary
    assert evaluation.adapter == str(out / "adapter")
    assert len((out / "eval" / "predictions.jsonl").read_text().splitlines()) == 8


def test_uniform_rank_trains_every_target_module_at_that_rank(tmp_path, config_file):
    assert (
        main(["train", "--config", str(config_file), "--uniform", "2", "--output", str(tmp_path)])
        == 0
    )
    result = read_model(tmp_path / "train_result.json", TrainResult)
    assert set(result.ranks.values()) == {2} and len(result.ranks) == 4 * 7
    assert result.seed == load_config(config_file).train.seeds[0]
    # the default alpha policy, rslora, keeps alpha (8) and scales by alpha/sqrt(r)
    assert result.alpha_policy == "rslora" and set(result.alphas.values()) == {8.0}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"ranks": {"base_model.model.model.layers.0.self_attn.q_proj": 4}}, "not adapted modules"),
        ({"probe_r": 2, "allowed_ranks": [1, 2]}, "probe_r=2 but the config's lora.probe_r=4"),
    ],
)
def test_bad_rank_file_is_one_line_error_exit_2(tmp_path, config_file, capsys, overrides, message):
    write_model(tmp_path / "ranks.json", rank_pattern(config_file, **overrides))
    args = ["train", "--config", str(config_file), "--ranks", str(tmp_path / "ranks.json")]
    assert main([*args, "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "ranks.json" in err
    assert not (tmp_path / "run" / "train_result.json").exists()


def test_eval_of_a_folder_without_adapter_is_exit_2(tmp_path, config_file, capsys):
    args = [
        "eval",
        "--config",
        str(config_file),
        "--adapter",
        str(tmp_path),
        "--output",
        str(tmp_path / "e"),
    ]
    assert main(args) == 2
    assert "not a PEFT adapter folder" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_help_lists_train_and_eval(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "train" in out and "eval" in out
