"""analyze(): contrasts, Holm, missing data, failures, and the exact JSON schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures.mechanism import build_results, scenario
from statsmodels.stats.multitest import multipletests

from gradience.config import HypothesisConfig
from gradience.stats import analyze
from gradience.stats.contrast import holm, holm_adjust

CONTRAST_KEYS = {
    "a",
    "b",
    "n_seeds",
    "mean_diff",
    "ci95",
    "paired_t",
    "welch_t",
    "cohens_d",
    "cohens_dz",
    "holm_p",
    "item_level",
    "seeds_for_80pct_power",
}


def _json(analysis) -> dict:
    def no_nan(token: str):
        raise AssertionError(f"{token} in JSON")

    return json.loads(analysis.model_dump_json(), parse_constant=no_nan)


def test_json_has_the_issue_schema_keys():
    data = _json(analyze(scenario("real_mechanism", seed_sd=0.005), HypothesisConfig()))
    assert data["schema_version"] == 3
    assert set(data["contrasts"]) == {
        "per_layer_vs_probe",
        "per_layer_vs_per_layer_shuffled_within_type",
        "per_layer_vs_per_layer_shuffled",
        "per_layer_vs_uniform_matched",
    }
    assert set(data["verdict"]) == {"label", "reasons", "alpha_policy"}
    assert data["verdict"]["alpha_policy"] == "constant_scale"
    assert set(data["placement"]) >= {
        "seed_rule_changed_fraction",
        "within_type_changed_fraction",
        "rank_agreement_across_seeds",
        "shuffle_percentile",
    }
    assert isinstance(data["inputs"], dict)
    for contrast in data["contrasts"].values():
        assert set(contrast) >= CONTRAST_KEYS | {"param_ratio"}
        assert set(contrast["paired_t"]) >= {"statistic", "p"}
        assert set(contrast["item_level"]) == {"mcnemar", "pooled"}
        assert set(contrast["item_level"]["pooled"]) >= {"method", "p", "ci95"}
        assert set(contrast["item_level"]["mcnemar"]) == {"42", "43", "44"}
        assert all(set(m) == {"b", "c", "p"} for m in contrast["item_level"]["mcnemar"].values())


def test_holm_over_the_two_primary_contrasts_matches_the_step_down_formula():
    analysis = analyze(scenario("real_mechanism", seed_sd=0.01), HypothesisConfig())
    family = [
        analysis.contrasts[name]
        for name in ("per_layer_vs_probe", "per_layer_vs_per_layer_shuffled_within_type")
    ]
    raw = sorted(c.paired_t.p for c in family)
    adjusted = [min(1.0, 2 * raw[0])]
    adjusted.append(max(adjusted[0], raw[1]))
    for c in family:
        assert c.primary and c.holm_family
        assert c.holm_p == pytest.approx(adjusted[raw.index(c.paired_t.p)])
    # the seed's capacity-confounded shuffle is secondary when the within-type one ran
    for name in ("per_layer_vs_per_layer_shuffled", "per_layer_vs_uniform_matched"):
        other = analysis.contrasts[name]
        assert not other.primary and not other.holm_family and other.holm_p is None


@pytest.mark.parametrize("seed", range(5))
def test_holm_adjust_matches_statsmodels(seed):
    rng = np.random.default_rng(seed)
    p_values = rng.uniform(0, 0.3, size=int(rng.integers(1, 7))).tolist()
    p_values.append(p_values[0])  # ties
    expected = multipletests(p_values, method="holm")[1]
    assert holm_adjust(p_values) == pytest.approx(expected.tolist())


def test_holm_keeps_the_family_size_when_one_p_is_undefined():
    analysis = analyze(scenario("real_mechanism", seed_sd=0.01), HypothesisConfig())
    e, m = (
        analysis.contrasts["per_layer_vs_probe"],
        analysis.contrasts["per_layer_vs_per_layer_shuffled"],
    )
    m.paired_t.p = None
    holm([e, m])
    assert e.holm_p == pytest.approx(min(1.0, 2 * e.paired_t.p)) and m.holm_p is None


def test_mean_diff_and_item_level_agree_when_item_vectors_define_accuracy():
    analysis = analyze(scenario("heterogeneity_only", seed_sd=0.01), HypothesisConfig())
    for c in analysis.contrasts.values():
        assert c.item_level.pooled.estimate == pytest.approx(c.mean_diff)


def test_a_variant_missing_for_one_seed_pairs_only_common_seeds_and_says_why():
    results = build_results(
        {
            "probe": {42: 0.65, 43: 0.66, 44: 0.64},
            "per_layer": {42: 0.68, 43: 0.69, 44: 0.67},
            "per_layer_shuffled": {42: 0.66, 44: 0.65},
        },
        failures=[(43, "per_layer_shuffled", "CUDA out of memory")],
    )
    analysis = analyze(results, HypothesisConfig())
    mechanism = analysis.contrasts["per_layer_vs_per_layer_shuffled"]
    assert mechanism.n_seeds == 2 and mechanism.seeds == [42, 44]
    assert set(mechanism.item_level.mcnemar) == {"42", "44"}
    assert any("seed 43" in note and "CUDA out of memory" in note for note in mechanism.notes)
    assert analysis.contrasts["per_layer_vs_probe"].n_seeds == 3
    assert analysis.inputs["failures"][0]["variant"] == "per_layer_shuffled"
    _json(analysis)


def test_a_variant_absent_from_the_results_gives_no_contrast_and_no_verdict_on_it():
    results = build_results(
        {"probe": {42: 0.65, 43: 0.66, 44: 0.64}, "per_layer": {42: 0.70, 43: 0.71, 44: 0.69}}
    )
    analysis = analyze(results, HypothesisConfig())
    assert set(analysis.contrasts) == {"per_layer_vs_probe"}
    assert analysis.contrasts["per_layer_vs_probe"].holm_p == pytest.approx(
        analysis.contrasts["per_layer_vs_probe"].paired_t.p  # a family of one
    )
    assert analysis.verdict.label == "inconclusive"
    assert any("neither per_layer_shuffled_within_type" in r for r in analysis.verdict.reasons)
    _json(analysis)


def test_an_absent_probe_still_gives_a_null_efficacy_contrast():
    results = build_results(
        {"per_layer": {42: 0.70, 43: 0.71}, "per_layer_shuffled": {42: 0.69, 43: 0.70}}
    )
    efficacy = analyze(results, HypothesisConfig()).contrasts["per_layer_vs_probe"]
    assert efficacy.n_seeds == 0 and efficacy.mean_diff is None and efficacy.holm_p is None


def test_one_seed_is_inconclusive_and_json_safe():
    results = build_results(
        {"probe": {42: 0.65}, "per_layer": {42: 0.70}, "per_layer_shuffled": {42: 0.66}}
    )
    analysis = analyze(results, HypothesisConfig())
    assert analysis.verdict.label == "inconclusive"
    assert analysis.contrasts["per_layer_vs_probe"].paired_t.p is None
    assert analysis.contrasts["per_layer_vs_probe"].item_level.pooled.p is not None
    _json(analysis)


def test_identical_variants_are_inconclusive_not_a_scenario():
    same = {42: 0.65, 43: 0.66, 44: 0.64}
    results = build_results({"probe": same, "per_layer": same, "per_layer_shuffled": same})
    for seed, run in results.variants["probe"].runs.items():  # literally the same predictions
        results.variants["per_layer"].runs[seed].item_correct = list(run.item_correct)
    analysis = analyze(results, HypothesisConfig())
    e = analysis.contrasts["per_layer_vs_probe"]
    assert e.mean_diff == 0.0 and e.paired_t.p is None and e.cohens_dz is None
    assert all((m.b, m.c, m.p) == (0, 0, 1.0) for m in e.item_level.mcnemar.values())
    assert analysis.verdict.label == "inconclusive"
    assert any("same items" in reason for reason in analysis.verdict.reasons)
    _json(analysis)


def test_further_controls_get_exploratory_contrasts_outside_the_holm_family():
    results = build_results(
        {
            "probe": {42: 0.65, 43: 0.66},
            "per_layer": {42: 0.68, 43: 0.69},
            "per_layer_shuffled": {42: 0.66, 43: 0.67},
            "uniform_matched": {42: 0.67, 43: 0.66},
        }
    )
    analysis = analyze(results, HypothesisConfig())
    extra = analysis.contrasts["per_layer_vs_uniform_matched"]
    assert extra.holm_p is None and not extra.holm_family and extra.paired_t.p is not None
    assert analysis.contrasts["per_layer_vs_probe"].holm_family


def test_item_vectors_of_the_wrong_length_name_the_key():
    results = build_results(
        {"probe": {42: 0.65}, "per_layer": {42: 0.7}, "per_layer_shuffled": {42: 0.66}}
    )
    results.variants["per_layer"].runs["42"].item_correct.pop()
    with pytest.raises(ValueError, match=r"variants\.per_layer\.runs\.42\.item_correct"):
        analyze(results, HypothesisConfig())


def test_strict_match_is_analysed_on_its_own_scores():
    results = scenario("real_mechanism", seed_sd=0.005)
    for run in results.variants["probe"].runs.values():
        run.strict_match = run.exact_match - 0.05
    analysis = analyze(results, HypothesisConfig(primary_metric="strict_match"))
    exact = analyze(results, HypothesisConfig())
    delta = (
        analysis.contrasts["per_layer_vs_probe"].mean_diff
        - exact.contrasts["per_layer_vs_probe"].mean_diff
    )
    assert delta == pytest.approx(0.05)
    assert "strict_match" in analysis.contrasts["per_layer_vs_probe"].item_level.pooled.reason
