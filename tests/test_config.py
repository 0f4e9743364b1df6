"""The experiment config: the committed YAML loads; unknown keys and wrong types name file and key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from gradience.config import ExperimentConfig, LoraSection, load_config
from gradience.errors import GradienceError
from gradience.train.lora_build import expected_scalings

MECHANISM_YAML = Path(__file__).resolve().parents[1] / "experiments" / "mechanism_test_config.yaml"


def test_mechanism_test_config_loads_with_the_seed_values():
    cfg = load_config(MECHANISM_YAML)
    assert cfg.model.name == "mistralai/Mistral-7B-v0.1"
    assert cfg.task.name == "gsm8k" and cfg.task.eval_samples == 500
    # rslora with alpha 4: 4/sqrt(64) keeps the seed's probe scale 32/64
    assert (cfg.lora.probe_r, cfg.lora.lora_alpha, cfg.lora.lora_dropout) == (64, 4, 0.1)
    assert cfg.lora.target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert cfg.lora.alpha_policy == "rslora"  # the measured default (experiments/README.md)
    assert cfg.lora.lora_alpha / cfg.lora.probe_r**0.5 == 32 / 64  # the seed's probe scale kept
    assert cfg.compression.allowed_ranks == [1, 2, 4, 8, 16, 32, 64]
    assert cfg.train.seeds == [42, 43, 44]
    assert (
        cfg.train.max_steps,
        cfg.train.learning_rate,
        cfg.train.per_device_train_batch_size,
    ) == (1200, 3e-4, 8)
    assert cfg.train.warmup_steps == 120
    h = cfg.hypothesis
    assert (
        h.primary_metric,
        h.compression_threshold,
        h.mechanism_threshold,
        h.alpha,
        h.min_effect_size,
    ) == (
        "exact_match",
        0.02,
        0.01,
        0.05,
        0.5,
    )


def test_every_yaml_key_is_a_config_field():
    raw = yaml.safe_load(MECHANISM_YAML.read_text())
    dumped = load_config(MECHANISM_YAML).model_dump()
    for section, values in raw.items():
        assert set(values) <= set(dumped[section]), section


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def load_error(path: Path) -> str:
    with pytest.raises(GradienceError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_unknown_nested_key_is_rejected_with_its_path(tmp_path):
    message = load_error(write(tmp_path, {"train": {"warmup_step": 10}}))
    assert "train.warmup_step" in message and "Extra inputs are not permitted" in message


def test_unknown_section_is_rejected(tmp_path):
    assert "trainer" in load_error(write(tmp_path, {"trainer": {}}))


@pytest.mark.parametrize(
    "data,key_path",
    [
        ({"train": {"max_steps": "many"}}, "train.max_steps"),
        ({"lora": {"probe_r": 2.5}}, "lora.probe_r"),
        ({"train": {"seeds": [42, "x"]}}, "train.seeds.1"),
        ({"hypothesis": {"alpha": 1.5}}, "hypothesis.alpha"),
        ({"lora": {"alpha_policy": "sometimes"}}, "lora.alpha_policy"),
        ({"compression": {"policy": "energy@1.5"}}, "compression.policy"),
        ({"compression": {"variants": ["probe", "perlayer"]}}, "compression.variants"),
        ({"env": {"device": "tpu"}}, "env.device"),
    ],
)
def test_wrong_types_and_values_name_the_key_path(tmp_path, data, key_path):
    assert key_path in load_error(write(tmp_path, data))


def test_probe_rank_must_be_an_allowed_rank(tmp_path):
    message = load_error(write(tmp_path, {"lora": {"probe_r": 48}}))
    assert "probe_r=48" in message and "allowed_ranks" in message


def test_missing_file_and_bad_yaml(tmp_path):
    assert "config file not found" in load_error(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    assert "not valid YAML" in load_error(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    assert "mapping" in load_error(top)


def test_defaults_are_valid_and_allowed_ranks_are_normalised(tmp_path):
    cfg = load_config(write(tmp_path, {"compression": {"allowed_ranks": [64, 8, 8, 1]}}))
    assert cfg.compression.allowed_ranks == [1, 8, 64]
    assert ExperimentConfig().lora.probe_r in ExperimentConfig().compression.allowed_ranks


def test_config_hash_changes_with_content(tmp_path):
    a = load_config(write(tmp_path, {"train": {"max_steps": 10}}))
    b = load_config(write(tmp_path, {"train": {"max_steps": 11}}))
    assert a.config_hash() != b.config_hash()
    assert (
        a.config_hash() == load_config(write(tmp_path, {"train": {"max_steps": 10}})).config_hash()
    )


def lora_config(tmp_path: Path, lora: dict) -> ExperimentConfig:
    """A config with only ``lora`` set (and probe_r an allowed rank)."""
    return load_config(
        write(tmp_path, {"lora": lora, "compression": {"allowed_ranks": [lora["probe_r"]]}})
    )


@pytest.mark.parametrize("policy", ["rslora", "constant_scale", "fixed_alpha"])
@pytest.mark.parametrize("probe_r", [8, 16, 64])
def test_unset_alpha_gives_the_probe_scale_one_half_under_every_policy(tmp_path, policy, probe_r):
    cfg = lora_config(tmp_path, {"probe_r": probe_r, "alpha_policy": policy})
    alpha = cfg.lora.lora_alpha
    scale = alpha / math.sqrt(probe_r) if policy == "rslora" else alpha / probe_r  # PEFT's scaling
    assert scale == pytest.approx(0.5, rel=1e-12)
    assert expected_scalings({"m": probe_r}, cfg.lora)["m"] == pytest.approx(0.5, rel=1e-12)
    # the number, not null, is what the config records, and it reloads to itself
    dumped = cfg.model_dump(mode="json")["lora"]
    assert dumped["lora_alpha"] == alpha
    assert lora_config(tmp_path, dumped).lora.lora_alpha == alpha


def test_unset_alpha_under_the_default_policy_is_not_the_old_fixed_32():
    lora = ExperimentConfig().lora
    assert (lora.probe_r, lora.alpha_policy) == (64, "rslora")
    assert lora.lora_alpha / math.sqrt(lora.probe_r) == 0.5  # 32 would have given 4


@pytest.mark.parametrize("policy", ["rslora", "constant_scale", "fixed_alpha"])
def test_an_explicit_alpha_is_kept_as_given(policy):
    for alpha in (32, 4, 0.25):
        assert LoraSection(alpha_policy=policy, lora_alpha=alpha).lora_alpha == alpha


@pytest.mark.parametrize("alpha", [0, -1])
def test_alpha_must_be_positive_when_set(tmp_path, alpha):
    assert "lora.lora_alpha" in load_error(write(tmp_path, {"lora": {"lora_alpha": alpha}}))


def test_committed_configs_keep_their_explicit_alphas():
    configs = Path(__file__).resolve().parents[1] / "experiments" / "configs"
    for path in [MECHANISM_YAML, *sorted(configs.glob("*.yaml"))]:
        raw = yaml.safe_load(path.read_text())
        if "lora_alpha" in raw.get("lora", {}):
            assert load_config(path).lora.lora_alpha == raw["lora"]["lora_alpha"], path.name
