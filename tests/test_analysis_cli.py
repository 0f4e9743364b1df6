"""`gradience mechanism analyze|report` and experiments/analyze_mechanism_test.py, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.mechanism import scenario, write_run_folder

from gradience.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(tmp_path):
    return write_run_folder(tmp_path / "run", scenario("heterogeneity_only", seed_sd=0.001))


def _edit_results(run: Path, edit) -> Path:
    path = run / "aggregated_results.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_analyze_json_prints_the_analysis_and_writes_it_next_to_the_results(run, capsys):
    assert main(["mechanism", "analyze", str(run), "--json", "--no-report"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((run / "mechanism_analysis.json").read_text())
    assert printed == saved
    assert printed["verdict"]["label"] == "heterogeneity_only"
    assert not (run / "report.md").exists()


def test_analyze_prints_a_summary_and_report_rerenders(run, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(["mechanism", "analyze", str(run / "aggregated_results.json"), "--output", str(out)])
        == 0
    )
    text = capsys.readouterr().out
    assert "verdict: heterogeneity_only" in text and "per_layer_vs_probe" in text
    assert (out / "report.md").is_file() and (out / "rank_heatmaps.png").is_file()
    (out / "report.md").unlink()
    assert main(["mechanism", "report", str(out)]) == 0  # finds the results via the analysis
    assert (out / "report.md").is_file()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d.pop("seeds"), "seeds"),
        (lambda d: d.update(schema_version=99), "schema_version"),
        (
            lambda d: d["variants"]["per_layer"]["runs"]["43"]["item_correct"].pop(),
            "variants.per_layer.runs.43.item_correct",
        ),
        (lambda d: d["variants"]["probe"]["runs"]["42"].pop("exact_match"), "exact_match"),
    ],
)
def test_bad_results_are_one_line_errors_naming_file_and_key(run, capsys, edit, expected):
    path = _edit_results(run, edit)
    assert main(["mechanism", "analyze", str(run), "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and expected in err


def test_a_missing_results_file_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main(["mechanism", "analyze", str(tmp_path / "nowhere.json")]) == 2
    assert "not found" in capsys.readouterr().err


def test_the_run_config_sets_the_hypothesis_and_config_overrides_it(run, tmp_path, capsys):
    (run / "config.yaml").write_text("hypothesis:\n  mechanism_threshold: 0.001\n")
    assert main(["mechanism", "analyze", str(run), "--json", "--no-report"]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert from_run["contrasts"]["per_layer_vs_per_layer_shuffled"]["threshold"] == 0.001
    override = tmp_path / "other.yaml"
    override.write_text("hypothesis:\n  mechanism_threshold: 0.03\n  alpha: 0.01\n")
    assert (
        main(["mechanism", "analyze", str(run), "--json", "--no-report", "--config", str(override)])
        == 0
    )
    overridden = json.loads(capsys.readouterr().out)
    assert overridden["inputs"]["hypothesis"]["alpha"] == 0.01
    assert overridden["contrasts"]["per_layer_vs_per_layer_shuffled"]["threshold"] == 0.03


def test_a_bad_config_key_is_reported(run, capsys):
    (run / "config.yaml").write_text("hypothesis:\n  mechanism_treshold: 0.001\n")
    assert main(["mechanism", "analyze", str(run), "--no-report"]) == 2
    assert "mechanism_treshold" in capsys.readouterr().err


def test_extra_contrasts_are_checked_against_the_variants(run, capsys):
    assert (
        main(
            [
                "mechanism",
                "analyze",
                str(run),
                "--json",
                "--no-report",
                "--contrast",
                "per_layer_shuffled:probe",
            ]
        )
        == 0
    )
    assert "per_layer_shuffled_vs_probe" in json.loads(capsys.readouterr().out)["contrasts"]
    assert (
        main(["mechanism", "analyze", str(run), "--no-report", "--contrast", "per_layer:nope"]) == 2
    )
    assert "nope" in capsys.readouterr().err


def test_the_seed_documented_script_analyses_a_results_file(run):
    result = subprocess.run(
        [
            sys.executable,
            "experiments/analyze_mechanism_test.py",
            str(run / "aggregated_results.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "verdict: heterogeneity_only" in result.stdout
    assert (run / "mechanism_analysis.json").is_file() and (run / "report.md").is_file()


def test_registering_the_commands_imports_no_heavy_library():
    code = (
        "import sys, argparse; from gradience.commands import analysis; "
        "p = argparse.ArgumentParser().add_subparsers(); analysis.register(p); "
        "print(sorted(m for m in ('scipy', 'matplotlib', 'statsmodels', 'torch') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_results_and_an_analysis_written_before_schema_3_still_analyse_and_render(run, capsys):
    # what a schema-2 writer left: no per-item strict scores, no module costs
    def to_schema_2(data):
        data["schema_version"] = 2
        data.pop("module_costs", None)
        for aggregate in data["variants"].values():
            for run_ in aggregate["runs"].values():
                run_.pop("item_strict_correct", None)

    _edit_results(run, to_schema_2)
    assert main(["mechanism", "analyze", str(run), "--json", "--no-report"]) == 0
    analysis = json.loads(capsys.readouterr().out)
    assert analysis["schema_version"] == 3
    assert analysis["verdict"]["label"] == "heterogeneity_only"
    assert analysis["placement"]["within_type_moved_fraction"] is None
    efficacy = analysis["contrasts"]["per_layer_vs_probe"]
    assert efficacy["primary"] and efficacy["outcome"] == "pass"
    # and the analysis file as schema 2 wrote it (no outcome, primary, decision_ci) renders
    path = run / "mechanism_analysis.json"
    old = json.loads(path.read_text())
    old["schema_version"] = 2
    for contrast in old["contrasts"].values():
        for key in ("primary", "outcome", "decision_ci", "decision_confidence", "decision_level"):
            contrast.pop(key, None)
    path.write_text(json.dumps(old))
    assert main(["mechanism", "report", str(run)]) == 0
    report = (run / "report.md").read_text()
    assert "## Verdict: **heterogeneity_only**" in report
