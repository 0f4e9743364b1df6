"""The verdict: the seed's three scenarios, honest 'inconclusive', and the rule's consistency."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.mechanism import build_results, scenario

from gradience.config import HypothesisConfig
from gradience.stats import analyze
from gradience.stats.verdict import PlacementContrasts, decide

HYP = HypothesisConfig()


@pytest.mark.parametrize("label", ["real_mechanism", "heterogeneity_only", "no_benefit"])
def test_clear_cut_data_reproduce_the_seed_scenarios(label):
    analysis = analyze(scenario(label, seed_sd=0.001), HYP)
    assert analysis.verdict.label == label


def test_the_seed_scenario_1_with_its_own_seed_noise_at_three_seeds_is_not_overclaimed():
    # the README's means AND spreads: probe 0.650 ± 0.010, per_layer 0.675 ± 0.008, shuffled 0.660 ± 0.012
    results = build_results(
        {
            "probe": {42: 0.640, 43: 0.650, 44: 0.660},
            "per_layer": {42: 0.683, 43: 0.667, 44: 0.675},
            "per_layer_shuffled": {42: 0.648, 43: 0.672, 44: 0.660},
        }
    )
    for name, sd in (("probe", 0.010), ("per_layer", 0.008), ("per_layer_shuffled", 0.012)):
        assert np.std(results.variants[name].accuracy.values, ddof=1) == pytest.approx(sd, abs=5e-4)
    analysis = analyze(results, HYP)
    assert analysis.verdict.label == "inconclusive"
    assert any("underpowered" in r and "seeds needed" in r for r in analysis.verdict.reasons)
    mechanism = analysis.contrasts["per_layer_vs_per_layer_shuffled"]
    assert mechanism.seeds_for_80pct_power > 3


def test_noisy_scenario_draws_never_claim_what_their_statistics_do_not_show():
    labels = []
    for draw in range(30):
        rng = np.random.default_rng(draw)
        noisy = {
            v: {s: m + rng.normal(0, sd) for s in (42, 43, 44)}
            for v, m, sd in (
                ("probe", 0.650, 0.010),
                ("per_layer", 0.675, 0.008),
                ("per_layer_shuffled", 0.660, 0.012),
            )
        }
        analysis = analyze(build_results(noisy, n_items=500, rng_seed=draw), HYP)
        e = analysis.contrasts["per_layer_vs_probe"]
        m = analysis.contrasts["per_layer_vs_per_layer_shuffled"]
        label = analysis.verdict.label
        labels.append(label)
        if label in ("real_mechanism", "heterogeneity_only"):
            assert e.holm_p < HYP.alpha and e.mean_diff > HYP.compression_threshold
            assert e.cohens_d > HYP.min_effect_size
        if label == "real_mechanism":
            assert m.holm_p < HYP.alpha and m.mean_diff > HYP.mechanism_threshold
        if label == "heterogeneity_only":
            assert m.ci95[1] < HYP.mechanism_threshold
        assert label != "no_benefit" or e.ci95[1] < HYP.compression_threshold
    assert labels.count("inconclusive") >= len(labels) // 2  # n = 3 is mostly not enough here


def test_a_small_mechanism_diff_with_a_wide_ci_is_not_heterogeneity_only():
    # efficacy is clear, per_layer ≈ shuffled on average, but seeds disagree wildly
    results = build_results(
        {
            "probe": {42: 0.650, 43: 0.651, 44: 0.649},
            "per_layer": {42: 0.690, 43: 0.693, 44: 0.688},
            "per_layer_shuffled": {42: 0.650, 43: 0.720, 44: 0.690},
        }
    )
    analysis = analyze(results, HYP)
    assert analysis.contrasts["per_layer_vs_probe"].holm_p < HYP.alpha
    assert analysis.verdict.label == "inconclusive"
    assert any("not ruled out" in r for r in analysis.verdict.reasons)


def test_placement_that_matters_without_beating_the_probe_fits_no_scenario():
    results = build_results(
        {
            "probe": {42: 0.700, 43: 0.702, 44: 0.698},
            "per_layer": {42: 0.701, 43: 0.703, 44: 0.700},
            "per_layer_shuffled": {42: 0.650, 43: 0.651, 44: 0.649},
        }
    )
    analysis = analyze(results, HYP)
    assert analysis.verdict.label == "inconclusive"
    assert "no seed scenario fits" in analysis.verdict.reasons[0]


def test_thresholds_come_from_the_hypothesis_config():
    results = scenario("real_mechanism", seed_sd=0.001)
    strict = HypothesisConfig(mechanism_threshold=0.05)
    analysis = analyze(results, strict)
    # placement's 0.015 is now clearly below 0.05, and so is per_layer - uniform_matched (0.02)
    assert analysis.verdict.label == "compression_only"
    assert analysis.contrasts["per_layer_vs_per_layer_shuffled_within_type"].threshold == 0.05
    assert analysis.contrasts["per_layer_vs_per_layer_shuffled"].threshold == 0.05


def test_item_level_disagreement_is_explained():
    analysis = analyze(scenario("heterogeneity_only", seed_sd=0.001), HYP)
    m = analysis.contrasts["per_layer_vs_per_layer_shuffled_within_type"]
    assert (m.holm_p < HYP.alpha) != (m.item_level.pooled.p < HYP.alpha)
    assert any("disagree" in r and "seed-level test decides" in r for r in analysis.verdict.reasons)


def test_missing_contrasts_are_inconclusive():
    verdict = decide(None, PlacementContrasts(), HYP)
    assert verdict.label == "inconclusive"
    assert any("neither per_layer_shuffled_within_type nor" in r for r in verdict.reasons)


def test_per_layer_clearly_worse_than_the_probe_is_no_benefit_and_says_so():
    results = build_results(
        {
            "probe": {42: 0.700, 43: 0.702, 44: 0.698},
            "per_layer": {42: 0.650, 43: 0.655, 44: 0.651},
            "per_layer_shuffled": {42: 0.649, 43: 0.656, 44: 0.650},
        }
    )
    verdict = analyze(results, HYP).verdict
    assert verdict.label == "no_benefit"
    assert any("worse than the probe" in r for r in verdict.reasons)
