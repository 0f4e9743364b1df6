"""Placement isolated: parameter ratios, the matched contrast deciding, heterogeneity gating,
the placement section and the update-size dependence on rank (checked independently)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from fixtures.mechanism import build_results, scenario
from scipy import stats
from statsmodels.stats.power import TTestPower

from gradience.config import HypothesisConfig
from gradience.results import AggregatedResults
from gradience.stats import analyze
from gradience.stats.power import min_detectable_effect
from gradience.stats.step_size import rank_slope

HYP = HypothesisConfig()
SEEDS = (42, 43, 44, 45, 46)


def _accuracies(means: dict[str, float], sd: float = 0.003, seed: int = 5) -> dict:
    rng = np.random.default_rng(seed)
    out: dict[str, dict[int, float]] = {v: {} for v in means}
    for s in SEEDS:
        shift = rng.normal(0, sd)
        for variant, mean in means.items():
            out[variant][s] = mean + shift + rng.normal(0, sd / 3)
    return out


def test_beating_a_smaller_seed_rule_shuffle_but_tying_the_matched_one_is_no_real_mechanism():
    # per_layer beats the seed's shuffle by 1.5 points, but that shuffle trains 40% fewer
    # parameters; against the parameter-matched shuffle per_layer only ties.
    means = {
        "probe": 0.650,
        "per_layer": 0.690,
        "per_layer_shuffled_within_type": 0.690,
        "per_layer_shuffled": 0.675,
        "uniform_matched": 0.690,
    }
    params = {
        "probe": 200_000,
        "per_layer": 100_000,
        "per_layer_shuffled_within_type": 100_000,
        "per_layer_shuffled": 60_000,
        "uniform_matched": 100_000,
    }
    analysis = analyze(build_results(_accuracies(means), params=params), HYP)
    seed_rule = analysis.contrasts["per_layer_vs_per_layer_shuffled"]
    matched = analysis.contrasts["per_layer_vs_per_layer_shuffled_within_type"]
    assert seed_rule.param_ratio == pytest.approx(100_000 / 60_000)
    assert matched.param_ratio == pytest.approx(1.0)
    assert seed_rule.mean_diff == pytest.approx(0.015, abs=0.003)
    assert seed_rule.paired_t.p < HYP.alpha  # taken alone, the seed's rule would "pass"
    assert not seed_rule.primary and seed_rule.outcome is None  # secondary: decides nothing
    assert analysis.verdict.label != "real_mechanism"
    assert any("secondary" in r and "capacity" in r for r in analysis.verdict.reasons)
    for contrast in analysis.contrasts.values():
        assert contrast.param_ratio is not None


def _seed_rule_only(shuffled_params: int) -> AggregatedResults:
    means = {"probe": 0.650, "per_layer": 0.690, "per_layer_shuffled": 0.660}
    params = {"probe": 200_000, "per_layer": 100_000, "per_layer_shuffled": shuffled_params}
    return build_results(_accuracies(means), params=params)


def test_the_seed_rule_stands_in_only_within_the_parameter_band():
    inside = analyze(_seed_rule_only(98_000), HYP)
    assert inside.verdict.label == "real_mechanism"
    assert any("stands in" in r for r in inside.verdict.reasons)
    outside = analyze(_seed_rule_only(60_000), HYP)
    assert outside.verdict.label == "inconclusive"
    assert any("could be capacity" in r for r in outside.verdict.reasons)


def test_heterogeneity_only_needs_per_layer_to_beat_uniform_matched():
    means = {
        "probe": 0.650,
        "per_layer": 0.690,
        "per_layer_shuffled_within_type": 0.690,
        "per_layer_shuffled": 0.690,
    }
    with_uniform = analyze(build_results(_accuracies({**means, "uniform_matched": 0.660})), HYP)
    assert with_uniform.verdict.label == "heterogeneity_only"
    tied_uniform = analyze(build_results(_accuracies({**means, "uniform_matched": 0.690})), HYP)
    assert tied_uniform.verdict.label == "compression_only"
    no_uniform = analyze(build_results(_accuracies(means)), HYP)
    assert no_uniform.verdict.label == "compression_only"
    assert "not tested" in no_uniform.verdict.reasons[0]


def test_every_verdict_names_its_alpha_policy():
    analysis = analyze(scenario("real_mechanism", seed_sd=0.002), HYP)
    assert analysis.verdict.alpha_policy == "constant_scale"
    assert "constant_scale" in analysis.verdict.reasons[0]


def _with_ranks(results: AggregatedResults, patterns: dict[str, dict[str, dict[str, int]]]):
    for variant, per_seed in patterns.items():
        for seed, ranks in per_seed.items():
            results.variants[variant].runs[seed].ranks = ranks
    return results


def test_placement_section_against_direct_computation():
    names = [f"model.layers.{i}.self_attn.{t}" for i in range(6) for t in ("q_proj", "k_proj")]
    rng = random.Random(0)
    per_layer = {s: {n: rng.choice([1, 2, 4, 8]) for n in names} for s in ("42", "43", "44")}
    seed_rule, within = {}, {}
    for seed, pattern in per_layer.items():
        ranks = list(pattern.values())
        random.Random(int(seed) + 10000).shuffle(ranks)
        seed_rule[seed] = dict(zip(pattern, ranks, strict=True))
        within[seed] = dict(pattern)
        first, second = names[0], names[2]  # two q_proj modules swap
        within[seed][first], within[seed][second] = pattern[second], pattern[first]
    means = {
        "probe": 0.65,
        "per_layer": 0.70,
        "per_layer_shuffled": 0.69,
        "per_layer_shuffled_within_type": 0.69,
        **{f"per_layer_shuffled_k{i}": 0.70 - 0.01 * (i + 1) for i in range(4)},
    }
    acc = {v: {s: m + 0.001 * (s - 42) for s in (42, 43, 44)} for v, m in means.items()}
    results = _with_ranks(
        build_results(acc),
        {
            "per_layer": per_layer,
            "per_layer_shuffled": seed_rule,
            "per_layer_shuffled_within_type": within,
        },
    )
    placement = analyze(results, HYP).placement
    expected_seed_rule = np.mean(
        [np.mean([per_layer[s][n] != seed_rule[s][n] for n in names]) for s in per_layer]
    )
    expected_within = np.mean(
        [np.mean([per_layer[s][n] != within[s][n] for n in names]) for s in per_layer]
    )
    assert placement.seed_rule_changed_fraction == pytest.approx(expected_seed_rule)
    assert placement.within_type_changed_fraction == pytest.approx(expected_within)
    rhos = [
        stats.spearmanr([per_layer[a][n] for n in names], [per_layer[b][n] for n in names])[0]
        for a, b in (("42", "43"), ("42", "44"), ("43", "44"))
    ]
    assert placement.rank_agreement_across_seeds == pytest.approx(np.mean(rhos))
    # per_layer's seed mean beats all four shuffles (up to item rounding)
    assert placement.shuffle_percentile == pytest.approx(100.0)
    assert placement.shuffle_permutation_p == pytest.approx(1 / 5)
    assert placement.decision_contrast == "per_layer_vs_per_layer_shuffled_within_type"
    assert placement.threshold == HYP.mechanism_threshold
    assert placement.shuffle_permutation_significant is False  # 4 shuffles: p >= 1/5
    assert placement.within_type_moved_fraction is None  # no module costs recorded
    # with each module's parameters per rank: the share of per_layer's parameters moved
    results.module_costs = {n: (96 if n.endswith("q_proj") else 48) for n in names}
    moved = analyze(results, HYP).placement.within_type_moved_fraction
    expected_moved = np.mean(
        [
            sum(abs(per_layer[s][n] - within[s][n]) * results.module_costs[n] for n in names)
            / (2 * sum(per_layer[s][n] * results.module_costs[n] for n in names))
            for s in per_layer
        ]
    )
    assert moved == pytest.approx(expected_moved) and moved > 0


def test_placement_fields_are_null_with_reasons_when_not_computable():
    results = build_results({"probe": {42: 0.6, 43: 0.61}, "per_layer": {42: 0.65, 43: 0.66}})
    placement = analyze(results, HYP).placement
    assert placement.seed_rule_changed_fraction is None
    assert placement.shuffle_percentile is None and placement.rank_agreement_across_seeds is None
    assert any("per_layer_shuffled_k did not run" in note for note in placement.notes)


@pytest.mark.parametrize(("n", "sd"), [(3, 0.01), (5, 0.004), (10, 0.02)])
def test_min_detectable_effect_matches_statsmodels(n, sd):
    dz = TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8, alternative="larger")
    assert min_detectable_effect(sd, n, 0.05, 0.8) == pytest.approx(dz * sd, rel=1e-4)
    assert min_detectable_effect(sd, 1, 0.05, 0.8) is None
    assert min_detectable_effect(0.0, n, 0.05, 0.8) is None


def test_rank_slope_recovers_a_planted_power_law_with_type_intercepts():
    rng = np.random.default_rng(0)
    points, rows = [], []
    for kind, scale in (("q_proj", 0.3), ("down_proj", 2.0)):
        for rank in (1, 2, 4, 8, 16, 2, 8):
            norm = scale * rank**0.5 * math.exp(rng.normal(0, 0.05))
            points.append((kind, rank, norm))
            rows.append((kind, math.log(rank), math.log(norm)))
    # independent: least squares with one dummy per type
    design = np.array([[r[1], r[0] == "q_proj", r[0] == "down_proj"] for r in rows], dtype=float)
    target = np.array([r[2] for r in rows])
    expected = np.linalg.lstsq(design, target, rcond=None)[0][0]
    result = rank_slope(points)
    assert result.slope == pytest.approx(expected) and abs(result.slope - 0.5) < 0.05
    assert result.n_modules == len(points)
    flat = rank_slope([("q_proj", 4, 1.0), ("q_proj", 4, 2.0)])
    assert flat.slope is None and "no rank variation" in flat.reason


def test_update_norm_dependence_is_reported_per_variant():
    names = [f"model.layers.{i}.mlp.up_proj" for i in range(4)]
    acc = {"probe": {42: 0.6, 43: 0.61}, "per_layer": {42: 0.65, 43: 0.66}}
    results = build_results(acc)
    for variant, ranks in (("probe", [8, 8, 8, 8]), ("per_layer", [1, 2, 4, 8])):
        for run in results.variants[variant].runs.values():
            run.ranks = dict(zip(names, ranks, strict=True))
            run.update_norms = {n: 0.1 * r for n, r in zip(names, ranks, strict=True)}
    dependence = analyze(results, HYP).update_norm_vs_rank
    assert dependence["per_layer"].slope == pytest.approx(1.0)
    assert dependence["probe"].slope is None  # one rank: nothing to regress on
    assert dependence["all_variants"].slope == pytest.approx(1.0)


def test_results_written_before_schema_2_still_analyse():
    results = scenario("real_mechanism", seed_sd=0.002)
    data = results.model_dump(mode="json")
    data["schema_version"] = 1
    for key in ("gated_seeds", "paired_init"):
        data.pop(key)
    for aggregate in data["variants"].values():
        for run in aggregate["runs"].values():
            run.pop("ranks"), run.pop("update_norms")
    old = AggregatedResults.model_validate(data)
    analysis = analyze(old, HYP)
    assert analysis.verdict.label == "real_mechanism"
    assert analysis.placement.seed_rule_changed_fraction is None
    assert analysis.update_norm_vs_rank == {}
