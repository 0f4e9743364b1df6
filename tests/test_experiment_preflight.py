"""Checks before a run, and the run script end to end on a reduced config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradience.config import ExperimentConfig, load_config
from gradience.experiment.preflight import device_check, model_access_check
from gradience.io import read_model
from gradience.results import AggregatedResults

REPO = Path(__file__).resolve().parents[1]
FLAGSHIP = REPO / "experiments" / "mechanism_test_config.yaml"
TINY = REPO / "experiments" / "configs" / "tiny_test.yaml"


def flagship() -> ExperimentConfig:
    return load_config(FLAGSHIP).model_copy(deep=True)


def test_gpu_config_without_cuda_is_stopped_with_the_way_out() -> None:
    check = device_check(flagship(), cuda_available=False)
    assert check.level == "error"
    assert "cpu_demo.yaml" in check.message and "env.device: cpu" in check.message
    assert device_check(flagship(), cuda_available=True).level == "ok"


def test_cpu_device_or_embedded_model_needs_no_gpu() -> None:
    forced = flagship()
    forced.env.device = "cpu"
    assert device_check(forced, cuda_available=False).level == "ok"
    embedded = flagship()
    embedded.model.name = "embedded:tiny-mistral"
    assert device_check(embedded, cuda_available=False).level == "ok"
    cuda = flagship()
    cuda.env.device = "cuda"
    check = device_check(cuda, cuda_available=False)
    assert check.level == "error" and "CUDA build of torch" in check.message


def test_embedded_and_local_models_need_no_hub(tmp_path: Path) -> None:
    cfg = flagship()
    cfg.model.name = "embedded:tiny-mistral"
    assert model_access_check(cfg).level == "ok"
    cfg.model.name = str(tmp_path)
    assert model_access_check(cfg).level == "ok"


def preflight(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradience.experiment.preflight", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


def test_offline_hub_model_must_be_in_the_cache(tmp_path: Path) -> None:
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
    }
    result = preflight(FLAGSHIP, env)
    assert result.returncode == 3
    assert "HF_HUB_OFFLINE is set but mistralai/Mistral-7B-v0.1 is not in the" in result.stderr
    # The same model in the cache, in huggingface_hub's own layout: accepted.
    repo = tmp_path / "hub" / "models--mistralai--Mistral-7B-v0.1"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    result = preflight(FLAGSHIP, env)
    assert "from the local cache (HF_HUB_OFFLINE)" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == "experiments/mechanism_test_results"


def test_bad_config_exits_2_from_preflight(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("env:\n  devise: cpu\n")
    result = preflight(config, {})
    assert result.returncode == 2 and "env.devise" in result.stderr and str(config) in result.stderr


@pytest.mark.slow
def test_run_script_runs_checks_experiment_and_analysis(tmp_path: Path) -> None:
    data = load_config(TINY).model_dump(mode="json")
    data["compression"]["variants"] = ["probe", "per_layer", "per_layer_shuffled"]
    data["env"]["output_base_dir"] = str(tmp_path / "run")
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(data))
    result = subprocess.run(
        [str(REPO / "experiments" / "run_mechanism_test.sh"), str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # The console ends with the verdict's sentence, the table of variants and the report.
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == f"report: {tmp_path / 'run'}/report.md"
    verdict = next(i for i, line in enumerate(lines) if line.startswith("verdict: "))
    assert "per_layer scored" in lines[verdict + 1]
    assert any(line.strip().startswith("per_layer_shuffled ") for line in lines[verdict:])
    assert "base model (no LoRA)" in "\n".join(lines[verdict:])
    assert (tmp_path / "run" / "report.md").is_file()
    results = read_model(tmp_path / "run" / "aggregated_results.json", AggregatedResults)
    assert list(results.variants) == ["probe", "per_layer", "per_layer_shuffled"]
