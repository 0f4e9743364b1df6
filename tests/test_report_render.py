"""report.md and the PNG figures render from a fixture run folder (and from bare results)."""

from __future__ import annotations

import json
import shutil

import matplotlib.image
import pytest
from fixtures.mechanism import build_results, scenario, write_run_folder

from gradience.errors import GradienceError
from gradience.io import write_model
from gradience.report.files import _rank_patterns, analyze_results, rerender
from gradience.results import MechanismAnalysis

PNGS = ("decision.png", "accuracy.png", "rank_heatmaps.png", "probe_spectra.png")


@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory):
    run = write_run_folder(tmp_path_factory.mktemp("run"), scenario("real_mechanism", seed_sd=0.01))
    return run, analyze_results(run)


def test_the_report_has_its_sections_tables_and_figures(analysed_run):
    run, output = analysed_run
    text = (run / "report.md").read_text()
    assert f"## Verdict: **{output.analysis.verdict.label}**" in text
    for reason in output.analysis.verdict.reasons:
        assert reason in text
    assert "| `per_layer` | 3 |" in text and "seed 42" in text and "trainable params" in text
    assert "### `per_layer_vs_probe` (primary, Holm-corrected)" in text
    assert "Exact McNemar per seed" in text and "Holm p" in text and "pooled bootstrap" in text
    assert output.results.config_hash in text and "constant_scale" in text
    assert output.analysis.inputs["eval_items_sha256_16"] in text
    assert "### Decision rule" in text
    for png in PNGS:
        assert f"]({png})" in text


def test_the_figures_are_real_pngs(analysed_run):
    run, _ = analysed_run
    for png in PNGS:
        image = matplotlib.image.imread(run / png)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.05  # not a blank canvas


def test_the_analysis_json_is_strict_json_and_reads_back(analysed_run):
    run, output = analysed_run
    text = (run / "mechanism_analysis.json").read_text()
    json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in JSON"))
    assert MechanismAnalysis.model_validate_json(text) == output.analysis


def test_bare_results_render_with_notes_instead_of_missing_figures(tmp_path, analysed_run):
    run, _ = analysed_run
    shutil.copy(run / "aggregated_results.json", tmp_path / "aggregated_results.json")
    output = analyze_results(tmp_path / "aggregated_results.json", output_dir=tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "accuracy.png").is_file()
    assert not (tmp_path / "out" / "rank_heatmaps.png").exists()
    assert "rank heatmaps skipped" in text and "probe spectra skipped" in text
    assert output.analysis.inputs["hypothesis_source"].startswith("defaults")


def test_rerender_rebuilds_the_report_from_the_saved_analysis(tmp_path, analysed_run):
    run, _ = analysed_run
    copy = shutil.copytree(run, tmp_path / "run")
    for name in ("report.md", *PNGS):
        (copy / name).unlink()
    written = rerender(copy).written
    assert {p.name for p in written} == {"report.md", *PNGS}


def test_rerender_refuses_results_from_another_config(tmp_path, analysed_run):
    run, _ = analysed_run
    copy = shutil.copytree(run, tmp_path / "run")
    data = json.loads((copy / "aggregated_results.json").read_text())
    data["config_hash"] = "ffffffffffffffff"
    (copy / "aggregated_results.json").write_text(json.dumps(data))
    with pytest.raises(GradienceError, match="config_hash"):
        rerender(copy)


def test_an_unreadable_rank_file_is_skipped_with_a_note(tmp_path, analysed_run):
    run, output = analysed_run
    copy = shutil.copytree(run, tmp_path / "run")
    (copy / "seed_42" / "ranks" / "per_layer.json").write_text("{not json")
    notes: list[str] = []
    patterns = _rank_patterns(output.results, copy, notes)
    assert "per_layer" not in patterns["42"] and "per_layer_shuffled" in patterns["42"]
    assert any("skipped per_layer.json" in note for note in notes)


def test_a_run_where_everything_failed_still_reports_why(tmp_path):
    results = build_results(
        {"probe": {}, "per_layer": {}, "per_layer_shuffled": {}},
        n_items=0,
        failures=[(42, "probe", "CUDA out of memory"), (43, "probe", "gated")],
    )
    write_model(tmp_path / "aggregated_results.json", results)
    output = analyze_results(tmp_path)
    assert output.analysis.verdict.label == "inconclusive"
    text = (tmp_path / "report.md").read_text()
    assert "## Failures" in text and "CUDA out of memory" in text
    assert matplotlib.image.imread(tmp_path / "accuracy.png").ndim == 3
