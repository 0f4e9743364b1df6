"""`mechanism run --reuse-jobs-from`: another run's finished jobs, reused only where they match."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from fixtures.reliability import REPO, gradience, reliability_config, write_config
from fixtures.scripts import experiment_script

from gradience.errors import GradienceError
from gradience.experiment import run_mechanism_test
from gradience.experiment.records import WEIGHTS_REMOVED
from gradience.experiment.reuse import copy_without_weights
from gradience.io import read_model
from gradience.results import AggregatedResults

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


def statuses(run) -> dict[str, str]:
    return {job: outcome.status for job, outcome in run.outcomes.items()}


def accuracies(run_dir: Path) -> dict[str, dict[str, tuple[float, list[int]]]]:
    results = read_model(run_dir / "aggregated_results.json", AggregatedResults)
    return {
        name: {seed: (run.exact_match, run.item_correct) for seed, run in variant.runs.items()}
        for name, variant in results.variants.items()
    }


def test_a_copy_without_weights_resumes_the_run_with_no_job_retrained(
    reference_run, tmp_path
) -> None:
    before = digests(reference_run)
    carried = tmp_path / "carried"
    assert sorted(copy_without_weights(reference_run, carried)) == [
        "seed_42/per_layer",
        "seed_42/probe",
    ]
    assert digests(reference_run) == before
    assert not list(carried.rglob("*.safetensors"))
    assert not list(carried.rglob("checkpoint-*"))
    run = run_mechanism_test(reliability_config(), tmp_path / "resumed", reuse_from=carried)
    # the audit has no weights to read: it re-derives the ranks from the copied audit.json
    assert statuses(run) == {
        "seed_42/probe": "reused",
        "seed_42/audit": "done",
        "seed_42/per_layer": "reused",
    }
    ranks = Path("seed_42/ranks/per_layer.json")
    assert (run.run_dir / ranks).read_bytes() == (reference_run / ranks).read_bytes()
    assert accuracies(run.run_dir) == accuracies(reference_run)


def test_carrying_again_keeps_unchanged_jobs_and_replaces_changed_ones(
    reference_run, tmp_path
) -> None:
    carried = tmp_path / "carried"
    copy_without_weights(reference_run, carried)
    kept = carried / "seed_42" / "probe" / "train_result.json"
    kept.write_text("left alone")  # a job whose record is unchanged is not copied again
    assert copy_without_weights(reference_run, carried) == []
    assert kept.read_text() == "left alone"
    marker = carried / "seed_42" / "per_layer" / WEIGHTS_REMOVED
    marker.write_text('{"sha256": "0"}')  # a copy whose marker is wrong is replaced
    assert copy_without_weights(reference_run, carried) == ["seed_42/per_layer"]
    assert marker.read_text() != '{"sha256": "0"}'


def test_weights_removed_without_a_matching_marker_are_retrained_and_a_reader_says_why(
    reference_run, tmp_path
) -> None:
    carried = tmp_path / "carried"
    copy_without_weights(reference_run, carried)
    (carried / "seed_42" / "per_layer" / WEIGHTS_REMOVED).write_text('{"sha256": "0"}')
    run = run_mechanism_test(reliability_config(), tmp_path / "marker", reuse_from=carried)
    assert statuses(run)["seed_42/per_layer"] == "done"  # trained again here
    assert accuracies(run.run_dir) == accuracies(reference_run)

    # an audit that cannot reuse audit.json needs the probe's weights: one clear failure
    (carried / "seed_42" / "probe" / "audit_source.json").unlink()
    run = run_mechanism_test(reliability_config(), tmp_path / "audit", reuse_from=carried)
    assert statuses(run)["seed_42/audit"] == "failed"
    message = run.outcomes["seed_42/audit"].message
    assert "adapter weights were removed after it finished" in message
    assert "seed_42/probe" in message


def test_carry_jobs_refuses_a_folder_that_is_no_run_or_lies_inside_it(
    reference_run, tmp_path, capsys
) -> None:
    carry = experiment_script("carry_jobs")
    before = digests(reference_run)
    assert carry.main([str(tmp_path), str(tmp_path / "dest")]) == 2
    assert "holds no config.yaml" in capsys.readouterr().err
    assert carry.main([str(reference_run), str(reference_run / "seed_42")]) == 2
    assert "is inside the run folder" in capsys.readouterr().err
    assert digests(reference_run) == before
    assert carry.main([str(reference_run), str(tmp_path / "dest")]) == 0
    assert "2 finished jobs copied into" in capsys.readouterr().out
    assert carry.main([str(reference_run), str(tmp_path / "dest")]) == 0
    assert "0 finished jobs copied into" in (out := capsys.readouterr().out)
    assert "which now holds 2" in out


def test_the_run_script_resumes_from_carried_jobs_and_analyses_them(
    reference_run, tmp_path
) -> None:
    carried = tmp_path / "carried"
    copy_without_weights(reference_run, carried)
    cfg = reliability_config()
    cfg.env.output_base_dir = str(tmp_path / "resumed")
    config = write_config(cfg, tmp_path / "small.yaml")
    script = str(REPO / "experiments" / "run_mechanism_test.sh")

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([script, *argv], capture_output=True, text=True, timeout=300)

    missing = run("--accept-underpowered", str(config), "--reuse-jobs-from")
    assert missing.returncode == 2 and "--reuse-jobs-from needs a folder" in missing.stderr
    result = run("--accept-underpowered", "--reuse-jobs-from", str(carried), str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "seed_42/per_layer: reused" in result.stderr  # the progress view
    assert "seed_42/probe: reused" in result.stderr
    assert (tmp_path / "resumed" / "mechanism_analysis.json").is_file()
    assert accuracies(tmp_path / "resumed") == accuracies(reference_run)
