"""`mechanism run --until-decided`: seeds added one at a time until the sequential rule stops;
a plan registered before the data; a killed sequential run continues at the next seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures.mechanism import build_results
from fixtures.reliability import TINY_CONFIG, gradience, records, write_config

from gradience.cli import main
from gradience.config import load_config
from gradience.errors import GradienceError
from gradience.experiment.pipeline import MechanismRun
from gradience.experiment.sequential import run_until_decided, sequential_config
from gradience.faults import FAULT_EXIT_CODE
from gradience.io import read_model
from gradience.report.markdown import render_report
from gradience.results import AggregatedResults, MechanismAnalysis
from gradience.stats.registered import PLAN_FILE

SEEDS = list(range(100, 115))


def _synthetic_runner(placement_effect: float, sd: float, calls: list[int]):
    """A step's results from fixed per-seed accuracies (the loop's logic, not training)."""

    def runner(step, output_dir, **_):
        seeds = step.train.seeds
        calls.append(len(seeds))
        rng = np.random.default_rng(7)  # the same draws for every step: seed s keeps its scores
        noise = {v: dict(zip(SEEDS, rng.normal(0, sd, len(SEEDS)), strict=True)) for v in range(3)}
        accuracies = {
            "probe": {s: 0.60 + noise[0][s] for s in seeds},
            "per_layer": {s: 0.66 + noise[1][s] for s in seeds},
            "per_layer_shuffled_within_type": {
                s: 0.66 - placement_effect + noise[2][s] for s in seeds
            },
        }
        return MechanismRun(Path(output_dir), build_results(accuracies, n_items=2000), {})

    return runner


def _cfg(max_seeds: int):
    cfg = load_config(TINY_CONFIG).model_copy(deep=True)
    cfg.train.seeds = SEEDS
    cfg.compression.variants = ["probe", "per_layer", "per_layer_shuffled_within_type"]
    return sequential_config(cfg, max_seeds)


def test_a_large_effect_stops_early_and_an_undecidable_one_runs_to_max_seeds(tmp_path):
    calls: list[int] = []
    run_until_decided(
        _cfg(12), tmp_path, runner=_synthetic_runner(0.08, 0.002, calls), max_seeds=12
    )
    assert calls[0] == 3 and calls == list(range(3, calls[-1] + 1)) and calls[-1] < 12
    calls.clear()
    # a placement effect at the threshold with noisy seeds: neither PASS nor FAIL is reachable
    run_until_decided(_cfg(6), tmp_path, runner=_synthetic_runner(0.01, 0.02, calls), max_seeds=6)
    assert calls == [3, 4, 5, 6]


def test_max_seeds_beyond_the_listed_seeds_is_refused():
    cfg = load_config(TINY_CONFIG)
    with pytest.raises(GradienceError, match="train.seeds lists 2"):
        sequential_config(cfg, 5)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_killed_sequential_run_resumes_at_the_next_seed_and_records_every_look(tmp_path):
    cfg = load_config(TINY_CONFIG).model_copy(deep=True)
    cfg.train.seeds = [1, 2, 3, 4, 5]
    cfg.compression.variants = ["probe", "per_layer"]  # the family is efficacy alone
    cfg.train.max_steps, cfg.train.save_steps, cfg.task.eval_samples = 2, None, 4
    config = write_config(cfg, tmp_path / "seq.yaml")
    run = tmp_path / "run"
    args = ("mechanism", "run", "--config", config, "--output", run, "--until-decided")
    # 3 seeds x 2 trained jobs x 2 steps = 12 steps; the 13th is seed 4's probe, first step
    killed = gradience(*args, "--max-seeds", "4", env={"GRADIENCE_FAULT": "train_step@13"})
    assert killed.returncode == FAULT_EXIT_CODE, killed.stderr[-2000:]
    plan = json.loads((run / PLAN_FILE).read_text())
    assert plan["plan"]["sequential"]["max_seeds"] == 4
    first = {job: r for job, r in records(run).items() if r.status == "done"}
    assert {job.split("/")[0] for job in first} == {"seed_1", "seed_2", "seed_3"}

    final = gradience(*args, "--max-seeds", "4")
    assert final.returncode == 0, final.stderr[-2000:]
    now = records(run)
    assert all(now[job] == record for job, record in first.items())  # none redone
    results = json.loads((run / "aggregated_results.json").read_text())
    assert results["seeds"] == [1, 2, 3, 4]  # random model: nothing decidable, so the cap

    assert main(["mechanism", "analyze", str(run), "--no-report", "--json"]) == 0
    analysis = json.loads((run / "mechanism_analysis.json").read_text())
    assert [look["n_seeds"] for look in analysis["looks"]] == [3, 4]
    assert analysis["sequential"]["max_seeds"] == 4
    assert analysis["registered_plan_hash"] == plan["plan_hash"] == analysis["plan_hash"]
    report = render_report(  # the markdown alone: the figures are tested elsewhere
        read_model(run / "mechanism_analysis.json", MechanismAnalysis),
        read_model(run / "aggregated_results.json", AggregatedResults),
        {},
    )
    assert "## Sequential looks" in report
    assert f"Analysis plan `{plan['plan_hash']}`, registered before the first seed" in report
