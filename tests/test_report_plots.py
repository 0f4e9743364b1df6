"""The decision figure: each primary contrast's paired difference against its threshold."""

from __future__ import annotations

import json

import matplotlib.image
import pytest
from fixtures.mechanism import WITHIN, scenario

from gradience.config import HypothesisConfig
from gradience.report.decision_plot import decision_figure
from gradience.report.files import write_report
from gradience.results import MechanismAnalysis
from gradience.stats import analyze

E = "per_layer_vs_probe"
M = f"per_layer_vs_{WITHIN}"
SEED_RULE = "per_layer_vs_per_layer_shuffled"
H = "per_layer_vs_uniform_matched"
#: One PASS, one FAIL, one UNDETERMINED in the primary family; H judged outside it.
DECIDED = {
    E: {
        "outcome": "pass",
        "mean_diff": 0.026,
        "ci95": (0.015, 0.037),
        "decision_ci": (0.012, 0.040),
        "decision_confidence": 0.9833,
        "threshold": 0.02,
    },
    M: {
        "outcome": "fail",
        "mean_diff": 0.001,
        "ci95": (-0.003, 0.005),
        "decision_ci": (-0.004, 0.006),
        "decision_confidence": 0.9833,
        "threshold": 0.01,
    },
    SEED_RULE: {
        "outcome": "undetermined",
        "mean_diff": 0.01,
        "ci95": (-0.004, 0.024),
        "decision_ci": (-0.008, 0.028),
        "decision_confidence": 0.9833,
        "threshold": 0.01,
    },
    H: {
        "outcome": "pass",
        "mean_diff": 0.02,
        "ci95": (0.003, 0.037),
        "decision_ci": (0.006, 0.034),
        "decision_confidence": 0.9,
        "threshold": 0.01,
        "primary": False,
    },
}


@pytest.fixture(scope="module")
def computed():
    results = scenario("real_mechanism", seed_sd=0.01)
    return analyze(results, HypothesisConfig(primary_metric="exact_match")), results


def _decided(analysis: MechanismAnalysis) -> MechanismAnalysis:
    contrasts = {
        name: c.model_copy(
            update={"primary": name != H, "holm_family": name != H, **DECIDED.get(name, {})}
        )
        for name, c in analysis.contrasts.items()
    }
    return analysis.model_copy(update={"contrasts": contrasts})


def _old(analysis: MechanismAnalysis) -> MechanismAnalysis:
    """The analysis as a schema-2 file has it: no primary, outcome or decision interval."""
    data = json.loads(analysis.model_dump_json())
    data["schema_version"] = 2
    for contrast in data["contrasts"].values():
        for key in ("primary", "outcome", "decision_ci", "decision_confidence"):
            contrast.pop(key, None)
    return MechanismAnalysis.model_validate(data)


def _by_gid(fig, prefix: str) -> dict:
    ax = fig.axes[0]
    return {
        a.get_gid().split(":", 1)[1]: a
        for a in (*ax.lines, *ax.texts)
        if a.get_gid() and a.get_gid().startswith(prefix + ":")
    }


def test_each_row_draws_its_outcome_its_decision_interval_and_its_threshold(computed):
    analysis = _decided(computed[0])
    fig = decision_figure(analysis, "exact_match")
    outcomes = {name: text.get_text() for name, text in _by_gid(fig, "outcome").items()}
    assert outcomes == {E: "PASS", M: "FAIL", SEED_RULE: "UNDETERMINED", H: "PASS"}
    decision, ci95 = _by_gid(fig, "decision_ci"), _by_gid(fig, "ci95")
    thresholds = _by_gid(fig, "threshold")
    for name, expected in DECIDED.items():
        assert tuple(decision[name].get_xdata()) == pytest.approx(expected["decision_ci"])
        assert tuple(ci95[name].get_xdata()) == pytest.approx(expected["ci95"])
        assert decision[name].get_linewidth() > ci95[name].get_linewidth()
        assert ci95[name].get_alpha() < 1
        assert set(thresholds[name].get_xdata()) == {expected["threshold"]}
    ax = fig.axes[0]
    assert analysis.verdict.label in ax.get_title()
    assert ax.get_xlabel() == "paired difference A − B (exact_match)"
    # H, outside the primary family, is drawn below every primary row
    rows = {name: line.get_ydata()[0] for name, line in _by_gid(fig, "estimate").items()}
    assert rows[H] < min(rows[n] for n in (E, M, SEED_RULE))
    assert any(t.get_text() == "outside the primary family" for t in ax.texts)
    assert ax.get_xlim()[0] < -0.02 and ax.get_xlim()[1] > 0.04  # every band and interval


def test_a_contrast_without_a_mean_says_undefined(computed):
    analysis = _decided(computed[0])
    broken = analysis.contrasts[M].model_copy(
        update={"mean_diff": None, "ci95": None, "decision_ci": None, "outcome": "undetermined"}
    )
    analysis = analysis.model_copy(update={"contrasts": {**analysis.contrasts, M: broken}})
    fig = decision_figure(analysis, "exact_match")
    assert _by_gid(fig, "undefined")[M].get_text() == "undefined"
    assert M not in _by_gid(fig, "estimate") and M not in _by_gid(fig, "decision_ci")
    assert _by_gid(fig, "outcome")[M].get_text() == "UNDETERMINED"


def test_the_report_shows_the_decision_figure_under_the_verdict(tmp_path, computed):
    analysis, results = _decided(computed[0]), computed[1]
    written = write_report(analysis, results, tmp_path, tmp_path)
    png = tmp_path / "decision.png"
    assert png in written
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image[..., :3].std() > 0.05
    text = (tmp_path / "report.md").read_text()
    assert text.count("](decision.png)") == 1
    verdict = text.index("## Verdict:")
    figure = text.index("](decision.png)")
    assert verdict < figure < text.index("## Setup") < text.index("## Figures")
    caption = text[figure:].splitlines()[2]
    assert "bold, the family-wise decision interval" in caption
    assert "faint, the unadjusted 95% CI" in caption and "95% CI only" not in caption


def test_an_older_analysis_draws_its_95_ci_and_says_not_recorded(tmp_path, computed):
    analysis, results = _old(_decided(computed[0])), computed[1]
    assert all(c.decision_ci is None and c.outcome is None for c in analysis.contrasts.values())
    fig = decision_figure(analysis, "exact_match")
    outcomes = {name: text.get_text() for name, text in _by_gid(fig, "outcome").items()}
    # the primary family falls back to the Holm family; H (no outcome) is not drawn
    assert outcomes == {E: "not recorded", M: "not recorded", SEED_RULE: "not recorded"}
    assert not _by_gid(fig, "decision_ci")
    assert tuple(_by_gid(fig, "ci95")[E].get_xdata()) == pytest.approx(DECIDED[E]["ci95"])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "no decision interval recorded: 95% CI only" in legend
    write_report(analysis, results, tmp_path, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "](decision.png)" in text and "95% CI only" in text and "not recorded" in text
    assert matplotlib.image.imread(tmp_path / "decision.png").ndim == 3
