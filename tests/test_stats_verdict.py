"""The verdict: the seed's three scenarios, honest 'inconclusive', and the rule's consistency."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.mechanism import build_results, scenario
from scipy import stats

from gradience.config import HypothesisConfig
from gradience.report.headline import headline
from gradience.stats import analyze
from gradience.stats.contrast import holm_adjust
from gradience.stats.verdict import Outcome, PlacementContrasts, decide, label_of

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
    assert any("could detect" in r and "seeds would detect" in r for r in analysis.verdict.reasons)
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


# ---------------------------------------------------------------- the decision table, cell by cell

P, F, U = Outcome.PASS, Outcome.FAIL, Outcome.UNDETERMINED
#: Written out independently of verdict.label_of: (E, M, H or None) -> label.
TABLE = {
    **{(P, P, h): "real_mechanism" for h in (P, F, U, None)},
    (P, F, P): "heterogeneity_only",
    (P, F, F): "compression_only",
    (P, F, None): "compression_only",
    (P, F, U): "inconclusive",
    **{(F, F, h): "no_benefit" for h in (P, F, U, None)},
    **{(F, P, h): "inconclusive" for h in (P, F, U, None)},
    **{(F, U, h): "inconclusive" for h in (P, F, U, None)},
    **{(P, U, h): "inconclusive" for h in (P, F, U, None)},
    **{(U, m, h): "inconclusive" for m in (P, F, U) for h in (P, F, U, None)},
}


@pytest.mark.parametrize(("e", "m", "h"), sorted(TABLE, key=str))
def test_every_cell_of_the_decision_table(e, m, h):
    assert len(TABLE) == 3 * 3 * 4
    assert label_of(e, m, h) == TABLE[(e, m, h)]


def _seeds(values):
    return dict(zip((42, 43, 44, 45, 46), values, strict=True))


def test_efficacy_fail_with_placement_undetermined_is_inconclusive_not_no_benefit():
    probe = [0.650, 0.660, 0.655, 0.645, 0.650]
    results = build_results(
        {
            "probe": _seeds(probe),
            "per_layer": _seeds(
                [p + d for p, d in zip(probe, [0.0, 0.002, -0.002, 0.001, 0.0], strict=True)]
            ),
            # placement: wide, straddling both 0 and the 0.01 threshold
            "per_layer_shuffled_within_type": _seeds(
                [p + d for p, d in zip(probe, [0.030, -0.030, 0.020, -0.025, 0.000], strict=True)]
            ),
        }
    )
    analysis = analyze(results, HYP)
    e = analysis.contrasts["per_layer_vs_probe"]
    m = analysis.contrasts["per_layer_vs_per_layer_shuffled_within_type"]
    assert (e.outcome, m.outcome) == ("fail", "undetermined")
    assert analysis.verdict.label == "inconclusive"
    lead = analysis.verdict.reasons[0]
    assert "compression efficacy fails" in lead and "placement undetermined" in lead
    assert any(
        f"could detect {m.min_detectable_effect:.3g}" in r and "threshold is 0.01" in r
        for r in analysis.verdict.reasons
    )
    sentence = headline(analysis, results)
    assert "Not decided" in sentence and "with the same ranks shuffled" not in sentence


def test_a_wide_placement_interval_is_never_called_level():
    base = [0.650, 0.700, 0.620, 0.680, 0.660]
    results = build_results(
        {
            "probe": _seeds(base),
            "per_layer": _seeds([b + 0.001 for b in base]),
            "per_layer_shuffled_within_type": _seeds(
                [b + d for b, d in zip(base, [0.110, -0.070, 0.090, -0.100, 0.020], strict=True)]
            ),
        }
    )
    analysis = analyze(results, HYP)
    m = analysis.contrasts["per_layer_vs_per_layer_shuffled_within_type"]
    assert m.ci95[0] < -0.05 and m.ci95[1] > 0.05
    sentence = headline(analysis, results)
    assert "with the same ranks shuffled" not in sentence
    assert "not distinguishable from the same ranks shuffled within each module type" in sentence
    # a narrow interval inside ±threshold is "level"
    narrow = build_results(
        {
            "probe": _seeds(base),
            "per_layer": _seeds([b + 0.001 for b in base]),
            "per_layer_shuffled_within_type": _seeds(
                [b + d for b, d in zip(base, [0.002, 0.001, 0.0, 0.002, 0.001], strict=True)]
            ),
        }
    )
    assert "with the same ranks shuffled" in headline(analyze(narrow, HYP), narrow)


def test_a_ruled_out_gain_is_named_when_a_loss_is_not_ruled_out():
    """One-sided FAIL: the upper end lies below the threshold, the lower end beyond -threshold;
    the sentence says the gain is ruled out without calling the two level."""
    base = [0.650, 0.700, 0.620, 0.680, 0.660]
    diffs = [-0.012, 0.006, -0.014, 0.004, -0.006]
    results = build_results(
        {
            "probe": _seeds(base),
            "per_layer": _seeds([b + 0.03 for b in base]),
            "per_layer_shuffled_within_type": _seeds(
                [b + 0.03 - d for b, d in zip(base, diffs, strict=True)]
            ),
        }
    )
    analysis = analyze(results, HYP)
    m = analysis.contrasts["per_layer_vs_per_layer_shuffled_within_type"]
    low, high = m.decision_ci
    assert m.outcome == "fail" and low < -0.01 < high < 0.01
    sentence = headline(analysis, results)
    assert "less than 0.01 above the same ranks shuffled within each module type" in sentence
    assert f"[{low:+.4f}, {high:+.4f}]" in sentence


def test_extra_contrasts_add_and_never_change_the_verdict():
    results = scenario("heterogeneity_only", seed_sd=0.002)
    plain = analyze(results, HYP)
    extra = analyze(results, HYP, extra_contrasts=[("per_layer_shuffled", "probe")])
    assert plain.verdict == extra.verdict
    assert set(plain.contrasts) < set(extra.contrasts)
    assert "per_layer_vs_uniform_matched" in extra.contrasts  # H is still computed
    assert extra.contrasts["per_layer_shuffled_vs_probe"].outcome is None


def test_the_seed_shuffle_beside_the_within_type_one_does_not_dilute_holm():
    probe = [0.650, 0.660, 0.655, 0.645, 0.650]
    per_layer = [p + d for p, d in zip(probe, [0.055, 0.0, 0.05, 0.005, 0.05], strict=True)]
    results = build_results(
        {
            "probe": _seeds(probe),
            "per_layer": _seeds(per_layer),
            "per_layer_shuffled_within_type": _seeds(
                [p - d for p, d in zip(per_layer, [0.030, 0.031, 0.029, 0.030, 0.032], strict=True)]
            ),
            "per_layer_shuffled": _seeds(
                [p + d for p, d in zip(per_layer, [0.01, -0.02, 0.015, -0.01, 0.0], strict=True)]
            ),
        }
    )
    analysis = analyze(results, HYP)
    e = analysis.contrasts["per_layer_vs_probe"]
    m = analysis.contrasts["per_layer_vs_per_layer_shuffled_within_type"]
    s = analysis.contrasts["per_layer_vs_per_layer_shuffled"]
    # the fixture: efficacy passes Holm over two primary contrasts and would not over three
    raw = [e.paired_t.p, m.paired_t.p, s.paired_t.p]
    assert holm_adjust(raw[:2])[0] < HYP.alpha <= holm_adjust(raw)[0]
    assert e.primary and m.primary and not s.primary
    assert e.holm_p == pytest.approx(holm_adjust(raw[:2])[0])
    assert e.outcome == "pass" and m.outcome == "pass"
    assert analysis.verdict.label == "real_mechanism"


def test_fail_reads_the_one_sided_bound_at_alpha_over_m():
    results = scenario("no_benefit", seed_sd=0.004)
    analysis = analyze(results, HYP)
    for name in ("per_layer_vs_probe", "per_layer_vs_per_layer_shuffled_within_type"):
        c = analysis.contrasts[name]
        assert c.primary and c.decision_confidence == pytest.approx(1 - 2 * HYP.alpha / 2)
        diffs = np.subtract(c.values_a, c.values_b)
        n = diffs.size
        upper = diffs.mean() + stats.t.ppf(1 - HYP.alpha / 2, n - 1) * diffs.std(ddof=1) / n**0.5
        assert c.decision_ci[1] == pytest.approx(upper)
        assert (c.outcome == "fail") == (upper < c.threshold)


def test_a_shuffle_that_moves_almost_nothing_cannot_fail_placement():
    results = scenario("no_benefit", seed_sd=0.002)
    analysis = analyze(results, HYP)
    assert analysis.contrasts["per_layer_vs_per_layer_shuffled_within_type"].outcome == "fail"
    matched = analysis.contrasts["per_layer_vs_per_layer_shuffled_within_type"]
    stuck = decide(
        analysis.contrasts["per_layer_vs_probe"],
        PlacementContrasts(matched=matched, moved_fraction=0.02),
        HYP,
    )
    assert stuck.label == "inconclusive"
    assert any("moved only 2.0%" in r for r in stuck.reasons)
    moved = decide(
        analysis.contrasts["per_layer_vs_probe"],
        PlacementContrasts(matched=matched, moved_fraction=0.4),
        HYP,
    )
    assert moved.label == "no_benefit"


def test_heterogeneity_outside_the_parameter_band_is_undetermined():
    means = {"probe": 0.650, "per_layer": 0.690, "per_layer_shuffled_within_type": 0.690}
    acc = {v: _seeds([m + 0.001 * i for i in range(5)]) for v, m in means.items()}
    acc["uniform_matched"] = _seeds([0.660 + 0.001 * i for i in range(5)])
    params = {"probe": 200_000, "per_layer": 100_000, "uniform_matched": 80_000}
    analysis = analyze(build_results(acc, params=params), HYP)
    assert analysis.contrasts["per_layer_vs_uniform_matched"].outcome == "undetermined"
    assert analysis.verdict.label == "inconclusive"
    assert any("could be capacity" in r for r in analysis.verdict.reasons)
