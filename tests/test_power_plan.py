"""`gradience mechanism power`: the power plan before training, and run_mechanism_test.sh's stop."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixtures.mechanism import scenario, write_run_folder
from scipy import optimize, stats

from gradience.cli import main
from gradience.config import load_config
from gradience.stats import analyze
from gradience.stats.plan import rescale_sd

REPO = Path(__file__).resolve().parents[1]
FLAGSHIP = REPO / "experiments" / "mechanism_test_config.yaml"
DECISIVE = REPO / "experiments" / "mechanism_test_decisive.yaml"
DEMO = REPO / "experiments" / "configs" / "cpu_demo.yaml"
TINY = REPO / "experiments" / "configs" / "tiny_test.yaml"
PLACEMENT = "per_layer_vs_per_layer_shuffled_within_type"
EFFICACY = "per_layer_vs_probe"
SEEDS = [42, 43, 44, 45, 46]
N_ITEMS = 1000  # build_results' default


def plan_json(capsys, *argv: str) -> dict:
    assert main(["mechanism", "power", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def by_name(plan: dict) -> dict[str, dict]:
    return {c["name"]: c for c in plan["contrasts"]}


def independent_mde(sd: float, n: int, level: float, power: float) -> float:
    """The effect δ with P(noncentral t_{n-1}(δ√n/sd) > t_{1-level}) = power, solved afresh."""
    critical = stats.t.ppf(1 - level, n - 1)
    return optimize.brentq(
        lambda d: stats.nct.sf(critical, n - 1, d * math.sqrt(n) / sd) - power, 1e-9, 10.0
    )


def write_config(path: Path, source: Path = TINY, **edits: object) -> Path:
    """A copy of ``source`` with dotted keys set (value None removes the key)."""
    data = yaml.safe_load(source.read_text())
    for key, value in edits.items():
        section, name = key.split(".")
        data.setdefault(section, {})
        if value is None:
            data[section].pop(name, None)
        else:
            data[section][name] = value
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def pilot(tmp_path: Path) -> Path:
    # item noise 0.3: about 8% of items flip between paired runs, less than the seed-to-seed part
    results = scenario("real_mechanism", seeds=SEEDS, seed_sd=0.02, rng_seed=5, item_noise=0.3)
    return write_run_folder(tmp_path / "pilot", results)


def pilot_config(tmp_path: Path, n_items: int = N_ITEMS, seeds: list[int] = SEEDS) -> Path:
    """A config planning the pilot's own variants, seeds and (with the default) items."""
    return write_config(
        tmp_path / "plan.yaml",
        **{
            "train.seeds": seeds,
            "task.generated_eval_size": max(n_items, N_ITEMS),
            "task.eval_samples": n_items,
            "compression.variants": [
                "probe",
                "per_layer",
                "per_layer_shuffled_within_type",
                "per_layer_shuffled",
            ],
        },
    )


def test_the_seeds_three_seed_config_is_underpowered_for_placement(capsys):
    plan = plan_json(capsys, "--config", str(FLAGSHIP))
    assert plan["schema_version"] == 3 and plan["config"] == str(FLAGSHIP)
    assert plan["family_size"] == 2 and plan["n_seeds"] == 3 and plan["n_eval_items"] == 500
    placement = by_name(plan)[PLACEMENT]
    assert placement["threshold"] == 0.01 and placement["level"] == pytest.approx(0.025)
    assert placement["variance_source"] == "prior" and placement["sd"] == 0.015
    assert placement["detectable_effect"] > 0.01 and placement["seeds_needed"] > 3
    assert placement["detectable"] is False and plan["all_detectable"] is False
    for key in (
        "name",
        "threshold",
        "sd",
        "detectable_effect",
        "seeds_needed",
        "variance_source",
        "n_seeds",
        "n_eval_items",
        "level",
        "power",
        "detectable",
    ):
        assert key in placement


def test_human_output_has_the_table_and_one_line_per_contrast(capsys):
    assert main(["mechanism", "power", "--config", str(FLAGSHIP)]) == 0
    out = capsys.readouterr().out
    assert "detectable at 3 seeds" in out and "seeds needed" in out
    assert "placement: threshold 0.01 is NOT detectable at 3 seeds" in out
    assert "efficacy: threshold 0.02 is NOT detectable at 3 seeds" in out


def test_the_decisive_config_detects_both_thresholds_with_the_prior_rescaled_to_all_items(capsys):
    cfg = load_config(DECISIVE)
    assert cfg.task.eval_samples is None and "per_layer_shuffled" not in cfg.compression.variants
    plan = plan_json(capsys, "--config", str(DECISIVE))
    hyp = cfg.hypothesis
    n = len(cfg.train.seeds)
    assert plan["n_eval_items"] == 1319 and plan["n_seeds"] == n == 20
    expected_sd = math.sqrt(
        hyp.assumed_diff_sd**2
        - hyp.assumed_discordant_fraction / hyp.assumed_diff_sd_items
        + hyp.assumed_discordant_fraction / 1319
    )
    for contrast in plan["contrasts"]:
        assert contrast["sd"] == pytest.approx(expected_sd, rel=1e-12)
        assert contrast["detectable"] and contrast["seeds_needed"] <= n
        assert contrast["detectable_effect"] == pytest.approx(
            independent_mde(expected_sd, n, 0.025, 0.8), rel=1e-6
        )


def test_a_pilot_at_its_own_seeds_and_items_reproduces_the_analysis(tmp_path, pilot, capsys):
    config = pilot_config(tmp_path)
    plan = by_name(plan_json(capsys, "--config", str(config), "--pilot", str(pilot)))
    cfg = load_config(config)
    results = json.loads((pilot / "aggregated_results.json").read_text())
    from gradience.results import AggregatedResults

    analysis = analyze(AggregatedResults.model_validate(results), cfg.hypothesis)
    assert analysis.placement.min_detectable_effect == pytest.approx(
        plan[PLACEMENT]["detectable_effect"], abs=1e-9
    )
    for name in (EFFICACY, PLACEMENT):
        contrast = analysis.contrasts[name]
        assert contrast.primary and plan[name]["variance_source"] == "pilot"
        assert plan[name]["sd"] == pytest.approx(contrast.sd_diff, abs=1e-12)
        assert plan[name]["detectable_effect"] == pytest.approx(
            contrast.min_detectable_effect, abs=1e-9
        )
        assert plan[name]["seeds_needed"] == contrast.seeds_for_80pct_power_at_threshold
        assert plan[name]["level"] == pytest.approx(contrast.decision_level, abs=1e-15)


def test_a_pilot_rescaled_to_other_items_matches_an_independent_computation(
    tmp_path, pilot, capsys
):
    new_items, seeds = 250, list(range(42, 52))
    config = pilot_config(tmp_path, n_items=new_items, seeds=seeds)
    plan = by_name(plan_json(capsys, "--config", str(config), "--pilot", str(pilot)))
    results = json.loads((pilot / "aggregated_results.json").read_text())
    variants = results["variants"]
    for name, (a, b) in (
        (EFFICACY, ("per_layer", "probe")),
        (PLACEMENT, ("per_layer", "per_layer_shuffled_within_type")),
    ):
        runs_a, runs_b = variants[a]["runs"], variants[b]["runs"]
        diffs = [runs_a[str(s)]["exact_match"] - runs_b[str(s)]["exact_match"] for s in SEEDS]
        q = np.mean(
            [
                np.mean(
                    np.array(runs_a[str(s)]["item_correct"])
                    != np.array(runs_b[str(s)]["item_correct"])
                )
                for s in SEEDS
            ]
        )
        var = float(np.var(diffs, ddof=1))
        assert q / N_ITEMS < var  # the plain formula applies: no floor
        sd = math.sqrt(var - q / N_ITEMS + q / new_items)
        assert plan[name]["sd"] == pytest.approx(sd, rel=1e-9)
        assert plan[name]["n_eval_items"] == new_items and plan[name]["n_seeds"] == len(seeds)
        assert plan[name]["detectable_effect"] == pytest.approx(
            independent_mde(sd, len(seeds), 0.025, 0.8), rel=1e-6
        )
        assert f"discordant fraction {q:.3f}" in plan[name]["variance_detail"]


def test_rescaling_keeps_the_seed_part_and_never_goes_below_zero():
    # var = 1e-4, item part q/N = 0.02/500 = 4e-5: 6e-5 stays, the item part scales by 500/1000
    assert rescale_sd(0.01, 500, 1000, 0.02) == pytest.approx(math.sqrt(6e-5 + 2e-5), rel=1e-12)
    # fewer items: the item part grows
    assert rescale_sd(0.01, 500, 250, 0.02) == pytest.approx(math.sqrt(6e-5 + 8e-5), rel=1e-12)
    # q/N = 4e-4 exceeds var = 1e-4: all of it is item noise, scaled by N/N'
    assert rescale_sd(0.01, 500, 1000, 0.2) == pytest.approx(0.01 * math.sqrt(0.5), rel=1e-12)
    assert rescale_sd(0.01, 500, 500, 0.2) == 0.01


def test_without_a_placement_control_the_family_is_efficacy_alone_at_alpha(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", **{"compression.variants": ["probe", "per_layer"]})
    plan = plan_json(capsys, "--config", str(config))
    assert plan["family_size"] == 1 and [c["name"] for c in plan["contrasts"]] == [EFFICACY]
    assert plan["contrasts"][0]["level"] == 0.05


def test_the_demo_config_can_detect_both_thresholds_by_its_last_look(capsys):
    assert main(["mechanism", "power", "--config", str(DEMO), "--require-detectable"]) == 0
    out = capsys.readouterr().out
    assert "placement: threshold 0.01 is detectable at 14 seeds" in out
    assert "accept_underpowered" not in out


def test_require_detectable_exits_3_when_underpowered(capsys):
    assert main(["mechanism", "power", "--config", str(FLAGSHIP), "--require-detectable"]) == 3


def bad(capsys, *argv: str) -> str:
    assert main(["mechanism", "power", *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err and captured.out == ""
    return lines[0]


def test_a_missing_config_names_the_file(tmp_path, capsys):
    line = bad(capsys, "--config", str(tmp_path / "none.yaml"))
    assert str(tmp_path / "none.yaml") in line and "not found" in line


def test_a_pilot_folder_without_results_names_the_file(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = bad(capsys, "--config", str(FLAGSHIP), "--pilot", str(tmp_path / "empty"))
    assert str(tmp_path / "empty" / "aggregated_results.json") in line


def test_a_pilot_without_the_configs_variants_names_the_file_and_field(tmp_path, capsys):
    results = scenario("real_mechanism", seeds=SEEDS, seed_sd=0.01)
    del results.variants["per_layer_shuffled_within_type"]
    run = write_run_folder(tmp_path / "pilot", results)
    line = bad(capsys, "--config", str(pilot_config(tmp_path)), "--pilot", str(run))
    assert str(run / "aggregated_results.json") in line
    assert "variants.per_layer_shuffled_within_type" in line


def test_the_command_is_fast_and_never_imports_torch():
    code = (
        "import sys; from gradience.cli import main; "
        f"rc = main(['mechanism', 'power', '--config', {str(FLAGSHIP)!r}, '--json']); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr


def run_script(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "experiments" / "run_mechanism_test.sh"), *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_run_script_stops_an_underpowered_config_before_training(tmp_path):
    config = write_config(
        tmp_path / "tiny.yaml",
        **{
            "train.seeds": [42, 43],
            "hypothesis.accept_underpowered": None,
            "env.output_base_dir": str(tmp_path / "run"),
        },
    )
    result = run_script(str(config))
    assert result.returncode == 4, result.stderr
    assert "running the experiment" not in result.stdout and "checking" not in result.stdout
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "underpowered" in errors[0]
    assert "--accept-underpowered" in errors[0] and "hypothesis.accept_underpowered" in errors[0]
    assert "NOT detectable at 2 seeds" in result.stdout
    assert not (tmp_path / "run").exists()


def test_accept_underpowered_lets_the_run_script_past_the_power_plan(tmp_path):
    # env.device mps: the next check (pre-flight) stops it on any Linux machine, before training
    config = write_config(
        tmp_path / "tiny.yaml",
        **{
            "train.seeds": [42, 43],
            "hypothesis.accept_underpowered": None,
            "env.device": "mps",
            "env.output_base_dir": str(tmp_path / "run"),
        },
    )
    result = run_script("--accept-underpowered", str(config))
    assert "accepted by --accept-underpowered" in result.stdout
    assert f"checking {config}" in result.stdout
    assert result.returncode == 3 and "MPS is not available" in result.stdout + result.stderr
