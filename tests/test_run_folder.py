"""The run folder guard: one run at a time, another experiment's results never overwritten,
--fresh moves an earlier run aside and deletes nothing."""

from __future__ import annotations

import shutil

import pytest
import yaml
from fixtures.reliability import digests, records, reliability_config, write_config

from gradience.cli import main
from gradience.experiment import run_mechanism_test
from gradience.experiment.runfolder import config_differences, folder_lock, sweep_partial_files
from gradience.io import write_text_atomic

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def earlier(reference_run, tmp_path):
    """A copy of a finished run, to point commands at."""
    return shutil.copytree(reference_run, tmp_path / "run")


@pytest.mark.slow
def test_fresh_moves_the_earlier_run_aside_and_starts_afresh(earlier, tmp_path, capsys) -> None:
    before = digests(earlier)
    cfg = reliability_config()
    cfg.train.learning_rate = 0.02
    config = write_config(cfg, tmp_path / "changed.yaml")
    argv = ["mechanism", "run", "--config", str(config), "--output", str(earlier), "--fresh"]
    assert main(argv) == 0
    [aside] = tmp_path.glob("run.replaced-*")
    assert digests(aside) == before  # every earlier file, moved as it was
    assert f"moved the earlier run to {aside}" in capsys.readouterr().err
    assert yaml.safe_load((earlier / "config.yaml").read_text())["train"]["learning_rate"] == 0.02
    assert all(record.attempts == 1 for record in records(earlier).values())


def test_settings_that_shaped_no_result_may_change_and_every_job_is_reused(earlier) -> None:
    cfg = reliability_config()
    cfg.hypothesis.alpha = 0.01
    cfg.metadata.description = "same experiment, other analysis"
    cfg.compression.probe_gate = 0.0
    cfg.train.logging_steps = 3
    adapters = {job: r.output_digest for job, r in records(earlier).items()}
    run = run_mechanism_test(cfg, earlier)
    assert {outcome.status for outcome in run.outcomes.values()} == {"reused"}
    assert {job: r.output_digest for job, r in records(earlier).items()} == adapters


def test_config_differences_name_what_shaped_results_and_ignore_the_rest() -> None:
    earlier, given = reliability_config(), reliability_config()
    given.train.seeds = [42, 43]  # more seeds: new jobs, the old ones stay valid
    given.compression.variants = ["probe", "per_layer", "per_layer_shuffled"]
    given.env.executor = "ray"
    given.hypothesis.primary_metric = "strict_match"
    assert config_differences(earlier, given) == []
    given.lora.lora_alpha = 32
    given.task.eval_samples = 4
    assert config_differences(earlier, given) == [
        ("lora.lora_alpha", 16.0, 32.0),
        ("task.eval_samples", 8, 4),
    ]


def test_a_second_run_on_a_folder_in_use_is_refused(earlier, tmp_path, capsys) -> None:
    config = write_config(reliability_config(), tmp_path / "same.yaml")
    before = digests(earlier)
    with folder_lock(earlier):  # what a run in another process holds while it works
        code = main(["mechanism", "run", "--config", str(config), "--output", str(earlier)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{earlier}: another gradience run is using this run folder" in err
    assert digests(earlier) == before


def test_a_folder_with_other_files_is_not_taken_for_a_run(tmp_path, capsys) -> None:
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\begin{document}")
    config = write_config(reliability_config(), tmp_path / "c.yaml")
    for extra in ([], ["--fresh"]):
        argv = ["mechanism", "run", "--config", str(config), "--output", str(folder), *extra]
        assert main(argv) == 2
        assert "holds no gradience run (no config.yaml)" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("documents")] == ["documents"]
    assert (folder / "thesis.tex").read_text() == "\\begin{document}"


def test_an_unreadable_earlier_config_points_at_fresh(earlier, tmp_path, capsys) -> None:
    (earlier / "config.yaml").write_text("train:\n  max_step: 6\n")  # e.g. from a future version
    before = digests(earlier)
    config = write_config(reliability_config(), tmp_path / "c.yaml")
    assert main(["mechanism", "run", "--config", str(config), "--output", str(earlier)]) == 2
    err = capsys.readouterr().err
    assert f"{earlier / 'config.yaml'}: the earlier run's config cannot be read" in err
    assert "--fresh" in err and digests(earlier) == before


def test_sweep_removes_only_what_a_killed_writer_left(tmp_path) -> None:
    job = tmp_path / "seed_42" / "probe"
    write_text_atomic(job / "eval.json", "{}")
    (job / ".eval.json.k3j9x_2a.tmp").write_text("{half")  # mkstemp's name for a temp copy
    (job / "adapter.partial").mkdir()
    (job / "notes.tmp").write_text("the user's own file")
    swept = sweep_partial_files(tmp_path)
    assert sorted(p.name for p in swept) == [".eval.json.k3j9x_2a.tmp", "adapter.partial"]
    assert sorted(p.name for p in job.iterdir()) == ["eval.json", "notes.tmp"]
