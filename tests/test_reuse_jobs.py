"""`mechanism run --reuse-jobs-from`: another run's finished jobs, reused only where they match."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fixtures.reliability import gradience, reliability_config

from gradience.errors import GradienceError
from gradience.experiment import run_mechanism_test

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_matching_jobs_are_reused_the_rest_trained_and_the_source_untouched(
    reference_run, tmp_path
) -> None:
    before = digests(reference_run)
    cfg = reliability_config()
    cfg.compression.variants = ["probe", "per_layer", "per_layer_shuffled_within_type"]
    run = run_mechanism_test(cfg, tmp_path / "more", reuse_from=reference_run)
    status = {job: outcome.status for job, outcome in run.outcomes.items()}
    assert status["seed_42/probe"] == status["seed_42/per_layer"] == "reused"
    assert status["seed_42/per_layer_shuffled_within_type"] == "done"  # trained here
    for name in ("probe/eval.json", "per_layer/adapter/adapter_model.safetensors"):
        copy = (tmp_path / "more" / "seed_42" / name).read_bytes()
        assert copy == (reference_run / "seed_42" / name).read_bytes()
    assert not list((tmp_path / "more" / "seed_42" / "probe").glob("checkpoint-*"))
    assert digests(reference_run) == before

    # another learning rate: the copies' inputs differ, so every job is trained again
    other = reliability_config()
    other.train.learning_rate *= 2
    rerun = run_mechanism_test(other, tmp_path / "other", reuse_from=reference_run)
    assert {o.status for o in rerun.outcomes.values()} == {"done"}
    assert digests(reference_run) == before


def test_a_source_that_is_no_run_is_one_clear_error_before_anything_is_written(
    reliability_config_file, tmp_path
) -> None:
    with pytest.raises(GradienceError, match="holds no config.yaml"):
        run_mechanism_test(reliability_config(), tmp_path / "run", reuse_from=tmp_path)
    assert not (tmp_path / "run").exists()
    result = gradience(
        "mechanism", "run", "--config", reliability_config_file, "--output", tmp_path / "run",
        "--no-estimate", "--reuse-jobs-from", tmp_path / "nowhere",
    )  # fmt: skip
    assert result.returncode == 2
    assert "--reuse-jobs-from: does not exist" in result.stderr
    assert "Traceback" not in result.stderr
