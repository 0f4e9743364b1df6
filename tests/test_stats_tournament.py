"""The allocation tournament's statistics: the exact rank-sum null, Holm, the leaderboard and the
outcome, each checked against an independent computation (enumeration, scipy, statsmodels)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from fixtures.tournament import MODULE_SHAPES, per_layer_pattern, tournament_results
from scipy import stats
from statsmodels.stats.multitest import multipletests

from gradience.ranks import lora_params
from gradience.results_tournament import Tournament
from gradience.stats.tournament import (
    min_p,
    rank_sum_counts,
    rank_sum_p,
    seed_rank,
    tournament_section,
)

ALPHA = 0.05
#: alloc_best is far above every shuffle; the others sit among them or below.
OFFSETS = {
    "alloc_best": 0.05,
    "alloc_depth": 0.0,
    "alloc_zero": -0.03,
    "alloc_energy": 0.0,
    "per_layer": 0.0,
}


def _brute_p(ranks: list[int], sizes: list[int]) -> float:
    """P(sum <= observed) by listing every rank tuple."""
    tuples = list(itertools.product(*(range(1, n + 1) for n in sizes)))
    return sum(sum(t) <= sum(ranks) for t in tuples) / len(tuples)


@pytest.mark.parametrize("sizes", [[2], [5], [3, 3], [4, 2, 5], [6, 6, 6], [11, 11], [2, 7, 3, 4]])
def test_the_rank_sum_null_equals_a_brute_force_enumeration(sizes):
    counts = rank_sum_counts(sizes)
    listed = np.bincount(
        [sum(t) - len(sizes) for t in itertools.product(*(range(1, n + 1) for n in sizes))]
    )
    assert counts == listed.tolist()
    assert sum(counts) == math.prod(sizes)
    for ranks in itertools.product(*(range(1, n + 1) for n in sizes)):
        assert rank_sum_p(list(ranks), sizes) == pytest.approx(_brute_p(list(ranks), sizes))


@pytest.mark.parametrize("k", [1, 4, 9, 19])
def test_with_one_seed_p_is_the_permutation_p_and_the_uniform_cdf(k):
    for rank in range(1, k + 2):
        p = rank_sum_p([rank], [k + 1])
        assert p == pytest.approx(stats.randint(1, k + 2).cdf(rank))
        assert p == pytest.approx(rank / (k + 1))  # (1 + #shuffles >= entry) / (k + 1)


def test_the_null_is_the_convolution_of_scipys_discrete_uniforms():
    sizes = [10, 10, 10, 10, 10]
    pmf = np.array([1.0])
    for n in sizes:
        pmf = np.convolve(pmf, stats.randint(1, n + 1).pmf(np.arange(1, n + 1)))
    assert np.asarray(rank_sum_counts(sizes)) / math.prod(sizes) == pytest.approx(pmf)


@pytest.mark.parametrize(("k", "n_seeds"), [(4, 1), (9, 3), (19, 4), (49, 5)])
def test_the_smallest_reachable_p_is_one_over_k_plus_1_to_the_seeds(k, n_seeds):
    sizes = [k + 1] * n_seeds
    assert min_p(sizes) == pytest.approx((1 / (k + 1)) ** n_seeds)
    assert rank_sum_p([1] * n_seeds, sizes) == pytest.approx(min_p(sizes))
    assert rank_sum_p([2] + [1] * (n_seeds - 1), sizes) > min_p(sizes)
    assert rank_sum_p([k + 1] * n_seeds, sizes) == 1.0


def test_a_rank_counts_ties_against_the_entry():
    assert seed_rank(0.5, [0.4, 0.6, 0.5]) == 3
    assert seed_rank(0.7, [0.4, 0.6, 0.5]) == 1
    assert seed_rank(0.5, [0.5, 0.5]) == 3  # a tie with every shuffle is the worst rank


def _null_p_values(draw, k: int = 9, n_seeds: int = 3, reps: int = 3000) -> np.ndarray:
    """p of an entry exchangeable with its k shuffles, ``reps`` times (scores from ``draw``)."""
    rng = np.random.default_rng(3)
    p_values = []
    for _ in range(reps):
        scores = draw(rng, (n_seeds, k + 1))
        ranks = [seed_rank(row[0], row[1:]) for row in scores]
        p_values.append(rank_sum_p(ranks, [k + 1] * n_seeds))
    return np.asarray(p_values)


def test_the_test_is_exact_with_continuous_scores():
    p_values = _null_p_values(lambda rng, size: rng.normal(size=size))
    null = {rank_sum_p(list(t), [10] * 3) for t in itertools.product(range(1, 11), repeat=3)}
    for level in (ALPHA, 0.2):
        exact = max(p for p in null if p <= level)  # P(p <= level) under H0, no ties
        error = 3 * math.sqrt(exact * (1 - exact) / p_values.size)
        assert abs(np.mean(p_values <= level) - exact) < error


def test_the_test_keeps_its_level_with_tied_discrete_scores():
    # Accuracies on 10 items: ties are everywhere. Counting them against the entry keeps the
    # rejection rate at or below alpha (counting them in its favour would reach about 0.09).
    p_values = _null_p_values(lambda rng, size: rng.binomial(10, 0.6, size=size))
    assert np.mean(p_values <= ALPHA) <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / 3000)


@pytest.fixture(scope="module")
def contest():
    results = tournament_results(OFFSETS)
    return results, tournament_section(results, "exact_match", ALPHA)


def test_every_p_matches_an_independent_rank_and_enumeration(contest):
    results, section = contest
    shuffles = [v for v in results.variants if v.startswith("per_layer_shuffled_k")]
    assert section.k == len(shuffles) == 19
    for entry in section.entries:
        ranks = []
        for seed in section.seeds:
            own = results.variants[entry.variant].runs[seed].exact_match
            others = np.array([results.variants[v].runs[seed].exact_match for v in shuffles])
            ranks.append(int((others >= own).sum()) + 1)
        assert list(entry.seed_ranks.values()) == ranks
        # the null by numpy broadcasting: every 20^4 rank tuple's sum
        sums = sum(np.ix_(*[np.arange(1, 21)] * len(ranks)))
        assert entry.p == pytest.approx(float(np.mean(sums <= sum(ranks))))


def test_holm_over_the_entries_matches_statsmodels(contest):
    _, section = contest
    raw = [e.p for e in section.entries]
    expected = multipletests(raw, alpha=ALPHA, method="holm")[1]
    assert [e.p_holm for e in section.entries] == pytest.approx(list(expected))
    assert [e.passes for e in section.entries] == [p < ALPHA for p in expected]


def test_the_clearly_best_allocator_leads_and_alone_beats_random_placement(contest):
    _, section = contest
    best = section.entries[0]
    assert best.variant == "alloc_best" and best.allocator == "best"
    assert list(best.seed_ranks.values()) == [1, 1, 1, 1]
    assert best.p == pytest.approx(section.min_p) and section.min_p == pytest.approx(20**-4)
    assert best.percentile == 100.0 and best.passes
    assert section.outcome == "allocators_beat_random" and section.winners == ["alloc_best"]
    assert "alloc_best" in section.summary and "6.25e-06" in section.summary
    diffs = [e.mean_diff_vs_shuffles for e in section.entries]
    assert diffs == sorted(diffs, reverse=True)
    assert section.entries[-1].variant == "alloc_zero"


def test_the_description_matches_scipy_and_the_parameter_counts(contest):
    results, section = contest
    shuffles = [v for v in results.variants if v.startswith("per_layer_shuffled_k")]
    depth = next(e for e in section.entries if e.variant == "alloc_depth")
    runs = results.variants["alloc_depth"].runs
    shuffle_mean = {
        s: np.mean([results.variants[v].runs[s].exact_match for v in shuffles])
        for s in section.seeds
    }
    diffs = np.array([runs[s].exact_match - shuffle_mean[s] for s in section.seeds])
    assert depth.diffs == pytest.approx(diffs.tolist())
    assert depth.mean_diff_vs_shuffles == pytest.approx(diffs.mean())
    assert depth.ci95 == pytest.approx(
        stats.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=stats.sem(diffs))
    )
    budgets = {s: lora_params(per_layer_pattern(int(s)), MODULE_SHAPES) for s in section.seeds}
    assert section.budget_params == budgets
    assert depth.param_ratio == pytest.approx(
        np.mean([runs[s].trainable_params / budgets[s] for s in section.seeds])
    )
    assert depth.param_ratio != pytest.approx(1.0)  # a depth prior is not budget-exact here
    per_layer = next(e for e in section.entries if e.variant == "per_layer")
    assert per_layer.param_ratio == pytest.approx(1.0)
    assert sum(section.shuffle_diffs.values()) == pytest.approx(0.0, abs=1e-12)


def test_the_section_survives_a_json_round_trip(contest):
    _, section = contest
    assert Tournament.model_validate_json(section.model_dump_json()) == section


def test_entries_that_score_like_shuffles_give_no_allocator_beats_random():
    offsets = {"alloc_depth": 0.0, "alloc_energy": -0.01, "per_layer": 0.0}
    section = tournament_section(tournament_results(offsets, rng_seed=4), "exact_match", ALPHA)
    assert not any(e.passes for e in section.entries)
    assert section.outcome == "no_allocator_beats_random" and section.winners == []
    assert section.summary.startswith("no allocator beats random placement")


def test_a_design_that_cannot_reach_alpha_is_undetermined_even_for_the_best():
    # k = 4 shuffles, one seed: min_p = 0.2, so no entry can pass whatever it scores
    section = tournament_section(
        tournament_results({"alloc_best": 0.1, "per_layer": 0.0}, k=4, seeds=(42,)),
        "exact_match",
        ALPHA,
    )
    assert section.min_p == pytest.approx(0.2)
    assert section.entries[0].seed_ranks == {"42": 1}
    assert section.outcome == "undetermined" and "add shuffles or seeds" in section.summary
    assert section.entries[0].ci95 is None and "one seed" in section.entries[0].reason


def test_without_shuffles_every_entry_is_undefined_with_a_reason():
    results = tournament_results({"alloc_best": 0.05, "per_layer": 0.0}, k=3)
    for name in [v for v in results.variants if v.startswith("per_layer_shuffled_k")]:
        del results.variants[name]
    section = tournament_section(results, "exact_match", ALPHA)
    assert section.outcome == "undetermined" and section.min_p is None and section.k == 0
    for entry in section.entries:
        assert entry.p is None and entry.p_holm is None and entry.passes is None
        assert entry.mean_diff_vs_shuffles is None and "shuffle" in entry.reason


def test_a_run_without_allocators_has_no_tournament():
    results = tournament_results({"per_layer": 0.0}, k=3)
    assert tournament_section(results, "exact_match", ALPHA) is None


def test_a_shuffle_missing_at_one_seed_shrinks_that_seeds_null():
    results = tournament_results({"alloc_best": 0.05, "per_layer": 0.0}, k=9, seeds=(42, 43))
    del results.variants["per_layer_shuffled_k3"].runs["43"]
    section = tournament_section(results, "exact_match", ALPHA)
    assert section.k_per_seed == {"42": 9, "43": 8}
    assert section.min_p == pytest.approx(1 / (10 * 9))
    best = section.entries[0]
    assert best.p == pytest.approx(_brute_p(list(best.seed_ranks.values()), [10, 9]))


def test_update_size_ratio_and_slope_read_the_recorded_norms():
    offsets = {"alloc_big": 0.0, "alloc_depth": 0.0, "per_layer": 0.0}
    results = tournament_results(
        offsets, k=5, norm_scale={"alloc_big": 2.0}, norm_exponent={"alloc_depth": 0.5}
    )
    entries = {e.variant: e for e in tournament_section(results, "exact_match", ALPHA).entries}
    assert entries["alloc_big"].update_size_ratio == pytest.approx(2.0)  # same modules, 2x each
    assert entries["alloc_big"].update_size_slope == pytest.approx(0.0)
    assert entries["alloc_depth"].update_size_slope == pytest.approx(0.5)
    assert entries["per_layer"].update_size_ratio == pytest.approx(1.0)
    without = tournament_results(offsets, k=5, with_norms=False)
    entry = tournament_section(without, "exact_match", ALPHA).entries[0]
    assert entry.update_size_ratio is None and entry.update_size_slope is None
    assert "update size" in entry.reason and "slope" in entry.reason


def test_the_metric_chosen_is_the_one_scored():
    results = tournament_results({"alloc_best": 0.05, "per_layer": 0.0}, k=5)
    for run in results.variants["alloc_best"].runs.values():
        run.strict_match = 0.0  # strictly the worst: ranks last on strict_match
    strict = tournament_section(results, "strict_match", ALPHA)
    best = next(e for e in strict.entries if e.variant == "alloc_best")
    assert set(best.seed_ranks.values()) == {6} and best.p == 1.0
    assert strict.metric == "strict_match"
