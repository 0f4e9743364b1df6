"""Same config, same seed, on CPU: the same bits, run after run, with or without env.deterministic.

(Local vs Ray executors: tests/test_experiment_pipeline.py::test_ray_executor_matches_the_local_executor.)
"""

from __future__ import annotations

import os

import pytest
import torch
from fixtures.reliability import reliability_config, result_files

from gradience.config import EnvConfig
from gradience.experiment import run_mechanism_test
from gradience.models.determinism import CUBLAS_WORKSPACE_CONFIG, apply_determinism

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def torch_determinism_restored():
    """env.deterministic switches torch process-wide; give the other tests their torch back."""
    state = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    yield
    torch.use_deterministic_algorithms(state[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = state[1], state[2]
    if state[3] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = state[3]


@pytest.mark.slow
def test_two_cpu_runs_of_one_config_and_seed_give_the_same_bits(
    reference_run, tmp_path, torch_determinism_restored
) -> None:
    again = run_mechanism_test(reliability_config(), tmp_path / "again")
    assert again.complete
    assert result_files(again.run_dir) == result_files(reference_run)

    cfg = reliability_config()
    cfg.env.deterministic = True
    strict = run_mechanism_test(cfg, tmp_path / "deterministic")
    assert torch.are_deterministic_algorithms_enabled()  # the jobs asked torch for it
    assert result_files(strict.run_dir) == result_files(reference_run)


def test_env_deterministic_switches_torch_cudnn_and_cublas(torch_determinism_restored) -> None:
    torch.use_deterministic_algorithms(False)
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    assert apply_determinism(EnvConfig()) is False
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ

    assert apply_determinism(EnvConfig(deterministic=True)) is True
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE_CONFIG
