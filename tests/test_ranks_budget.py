"""Ranks at an exact parameter budget (gradience.ranks.budget) and the data-free allocators."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from helpers_audit import synthetic_audit

from gradience.ranks import BudgetError, budget_from, fit_to_budget, lora_params
from gradience.ranks.allocators import (
    ALLOCATORS,
    allocate,
    allocator_name,
    depth_preference,
    global_energy_allocation,
    policy_allocation,
)
from gradience.ranks.budget import feasible_range
from gradience.ranks.policies import policy_rank

MISTRAL_7B = {
    "self_attn.q_proj": (4096, 4096),
    "self_attn.k_proj": (4096, 1024),
    "self_attn.v_proj": (4096, 1024),
    "self_attn.o_proj": (4096, 4096),
    "mlp.gate_proj": (4096, 14336),
    "mlp.up_proj": (4096, 14336),
    "mlp.down_proj": (14336, 4096),
}
#: The embedded CPU model (hidden 128, MLP 256, 2 of 4 heads for k/v), 4 layers.
EMBEDDED = {
    "self_attn.q_proj": (128, 128),
    "self_attn.k_proj": (128, 64),
    "self_attn.v_proj": (128, 64),
    "self_attn.o_proj": (128, 128),
    "mlp.gate_proj": (128, 256),
    "mlp.up_proj": (128, 256),
    "mlp.down_proj": (256, 128),
}


def model_shapes(types: dict[str, tuple[int, int]], layers: int) -> dict[str, tuple[int, int]]:
    return {
        f"model.layers.{layer}.{t}": shape for layer in range(layers) for t, shape in types.items()
    }


def costs_of(shapes):
    return {name: d_in + d_out for name, (d_in, d_out) in shapes.items()}


def assert_within_guarantee(result, shapes, caps, preference=None):
    """|P − B| ≤ half the cheapest module that can still grow (those that could before the last
    unit are a superset, so their cheapest is no dearer); ≤ half the dearest one in any case."""
    costs = costs_of(shapes)
    assert result.params == lora_params(result.ranks, shapes)
    growable = [
        costs[n]
        for n, r in result.ranks.items()
        if r < caps and (preference is None or preference[n] > 0)
    ]
    if growable:
        assert abs(result.params - result.budget) <= min(growable) / 2
    assert abs(result.params - result.budget) <= max(costs.values()) / 2


# ---------------------------------------------------------------- budget.py


@pytest.mark.parametrize("fraction", [0.03, 0.1, 0.25, 0.5, 0.8, 0.97])
def test_mistral_7b_budgets_within_half_the_smallest_module(fraction):
    shapes = model_shapes(MISTRAL_7B, 32)
    probe = 64 * sum(costs_of(shapes).values())
    rng = random.Random(fraction)
    patterns = [
        {n: rng.choice([1, 2, 4, 8, 16, 32, 64]) for n in shapes},
        {n: rng.uniform(0.1, 5.0) for n in shapes},
        {n: 1 + int(n.split(".")[2]) for n in shapes},
    ]
    budget = round(fraction * probe)
    for pattern in patterns:
        result = fit_to_budget(pattern, shapes, budget, 64)
        assert abs(result.params - budget) <= 5120  # one rank step of the smallest module
        assert abs(result.ratio - 1) <= 0.01
        assert all(1 <= r <= 64 for r in result.ranks.values())
        assert list(result.ranks) == list(shapes)
        assert_within_guarantee(result, shapes, 64)


def test_tiny_model_every_budget_meets_the_guarantee():
    shapes = model_shapes(EMBEDDED, 4)
    rng = random.Random(1)
    pattern = {n: rng.choice([0.5, 1, 2, 3, 8]) for n in shapes}
    low, high = feasible_range(pattern, shapes, 8)
    assert (low, high) == (8192, 8 * 8192)
    for budget in range(low, high + 1, 61):
        assert_within_guarantee(fit_to_budget(pattern, shapes, budget, 8), shapes, 8)


def test_an_exact_multiple_of_a_pattern_comes_back_exactly():
    shapes = model_shapes(EMBEDDED, 4)
    rng = random.Random(2)
    pattern = {n: rng.choice([1, 2, 4, 8]) for n in shapes}
    for factor in (2, 3, 8):
        budget = factor * lora_params(pattern, shapes)
        result = fit_to_budget(pattern, shapes, budget, 64)
        assert result.ranks == {n: factor * r for n, r in pattern.items()}
        assert result.params == budget and result.ratio == 1.0


def test_larger_preference_never_gets_a_smaller_rank_within_a_type():
    shapes = model_shapes(MISTRAL_7B, 8)
    rng = random.Random(3)
    for trial in range(20):
        pattern = {n: rng.random() for n in shapes}
        budget = rng.randint(*feasible_range(pattern, shapes, 16))
        ranks = fit_to_budget(pattern, shapes, budget, 16).ranks
        for a, b in itertools.combinations(shapes, 2):
            if a.rsplit(".", 1)[1] == b.rsplit(".", 1)[1] and pattern[a] > pattern[b]:
                assert ranks[a] >= ranks[b], (trial, a, b)


def test_the_ranks_do_not_depend_on_the_module_order():
    shapes = model_shapes(EMBEDDED, 4)
    pattern = {n: 1 + (i % 3) for i, n in enumerate(shapes)}  # many exact ties
    reordered = dict(reversed(list(pattern.items())))
    for budget in (9000, 20000, 33333):
        first = fit_to_budget(pattern, shapes, budget, 8)
        second = fit_to_budget(reordered, shapes, budget, 8)
        assert first.ranks == second.ranks and list(second.ranks) == list(reordered)


def test_extreme_budgets_and_per_module_caps():
    shapes = model_shapes(EMBEDDED, 2)
    pattern = dict.fromkeys(shapes, 1.0)
    caps = {n: 2 if "mlp" in n else 8 for n in shapes}
    low, high = feasible_range(pattern, shapes, caps)
    assert fit_to_budget(pattern, shapes, low, caps).ranks == dict.fromkeys(shapes, 1)
    assert fit_to_budget(pattern, shapes, high, caps).ranks == caps
    middle = fit_to_budget(pattern, shapes, (low + high) // 2, caps)
    assert all(middle.ranks[n] <= caps[n] for n in shapes)


def test_unreachable_budgets_raise_with_the_reachable_range():
    shapes = model_shapes(EMBEDDED, 1)
    pattern = dict.fromkeys(shapes, 1.0)
    with pytest.raises(BudgetError, match="below the least") as low:
        fit_to_budget(pattern, shapes, 2047, 4)
    assert (low.value.minimum, low.value.maximum) == (2048, 4 * 2048)
    with pytest.raises(BudgetError, match="above the most"):
        fit_to_budget(pattern, shapes, 4 * 2048 + 1, 4)
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="positive whole number"):
            fit_to_budget(pattern, shapes, bad, 4)
    with pytest.raises(ValueError, match="non-negative"):
        fit_to_budget({**pattern, "model.layers.0.mlp.up_proj": -1.0}, shapes, 4000, 4)
    with pytest.raises(ValueError, match="no shape"):
        fit_to_budget({"lm_head": 1.0}, shapes, 4000, 4)


def test_zero_preference_removes_a_module_only_when_allowed():
    shapes = model_shapes(EMBEDDED, 2)
    pattern = {n: 0.0 if "k_proj" in n else 2.0 for n in shapes}
    kept = fit_to_budget(pattern, shapes, 12000, 8)
    assert all(kept.ranks[n] == 1 for n in shapes if "k_proj" in n)
    removed = fit_to_budget(pattern, shapes, 12000, 8, allow_zero=True)
    assert removed.removed == [n for n in shapes if "k_proj" in n]
    assert all(removed.ranks[n] >= 1 for n in shapes if "k_proj" not in n)
    assert_within_guarantee(removed, shapes, 8, pattern)
    # a zero-preference module is never grown to fill a budget: the most is smaller
    _, high = feasible_range(pattern, shapes, 8, allow_zero=True)
    assert high == 8 * lora_params(dict.fromkeys(shapes, 1), shapes) - 8 * 2 * 192
    with pytest.raises(BudgetError):
        fit_to_budget(pattern, shapes, high + 1, 8, allow_zero=True)
    with pytest.raises(ValueError, match="nothing to scale"):
        fit_to_budget(dict.fromkeys(shapes, 0.0), shapes, 5000, 8)


def test_budget_from_per_layer_or_a_fraction_of_the_probe():
    shapes = model_shapes(EMBEDDED, 1)
    probe = dict.fromkeys(shapes, 8)
    per_layer = {n: 1 + i for i, n in enumerate(shapes)}
    assert budget_from("per_layer", per_layer, probe, shapes) == lora_params(per_layer, shapes)
    assert budget_from(0.25, per_layer, probe, shapes) == 4096
    assert budget_from("0.25", per_layer, probe, shapes) == 4096
    assert budget_from(1, per_layer, probe, shapes) == 8 * 2048
    assert budget_from(1 / 3, per_layer, probe, shapes) == 5461  # ⌊16384/3 + ½⌋
    for bad in ("0", "1.5", "-0.1", "half", "nan", True, None):
        with pytest.raises(ValueError):
            budget_from(bad, per_layer, probe, shapes)


# ---------------------------------------------------------------- allocators.py


def random_audit(types, layers, r, seed):
    """A synthetic audit with decaying random spectra of length r (and a zero module)."""
    rng = np.random.default_rng(seed)
    spectra = {}
    for name, (d_in, d_out) in model_shapes(types, layers).items():
        decay = rng.uniform(0.05, 0.6)
        sv = np.sort(rng.uniform(0.5, 1.0, r) * np.exp(-decay * np.arange(r)))[::-1]
        spectra[name] = (sv.tolist(), d_in, d_out)
    return synthetic_audit(spectra)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.6])
def test_every_allocator_meets_the_budget_on_mistral_7b_shapes(fraction):
    audit = random_audit(MISTRAL_7B, 32, 64, seed=4)
    shapes = {m.name: (m.d_in, m.d_out) for m in audit.modules}
    budget = round(fraction * audit.summary.total_params)
    for allocator in ALLOCATORS:
        result = allocate(audit, allocator, budget)
        assert abs(result.params - budget) <= 5120, allocator
        assert abs(result.ratio - 1) <= 0.01, allocator
        assert all(1 <= r <= 64 for r in result.ranks.values()), allocator
        assert list(result.ranks) == [m.name for m in audit.modules]
        assert_within_guarantee(result, shapes, 64)


def test_policy_allocators_rescale_the_raw_policy_ranks():
    audit = random_audit(EMBEDDED, 4, 16, seed=5)
    shapes = {m.name: (m.d_in, m.d_out) for m in audit.modules}
    for policy in ("energy@0.9", "erank", "stable_rank", "knee", "oht"):
        # at the raw pattern's own parameters the pattern comes back (a raw 0 at the floor, 1)
        raw = {m.name: max(1, policy_rank(m.singular_values, policy)) for m in audit.modules}
        assert len(set(raw.values())) > 1, policy
        same = allocate(audit, policy, lora_params(raw, shapes))
        assert same.ranks == raw and same.ratio == 1.0, policy
        smaller = allocate(audit, policy, lora_params(raw, shapes) // 2)
        assert_within_guarantee(smaller, shapes, 16)
    assert allocator_name("energy", tau=0.95) == "energy@0.95"
    assert allocate(audit, "energy", 30000, tau=0.95) == allocate(audit, "energy@0.95", 30000)
    with pytest.raises(ValueError, match="unknown allocator"):
        allocator_name("median")


def prefix_and_optimum(spectra, costs, caps, k):
    """Independent check: the top-k components by σ²/c, and the best energy any rank vector
    with at most that many parameters keeps (brute force over every rank vector)."""
    components = sorted(
        (-(sv[j] ** 2) / costs[n], n, j) for n, sv in spectra.items() for j in range(caps[n])
    )
    counts = {n: 0 for n in spectra}
    for _, n, _ in components[:k]:
        counts[n] += 1
    budget = sum(counts[n] * costs[n] for n in spectra)
    names = list(spectra)
    best = 0.0
    for ranks in itertools.product(*(range(caps[n] + 1) for n in names)):
        if sum(r * costs[n] for r, n in zip(ranks, names, strict=True)) <= budget:
            kept = sum(
                float(np.sum(np.square(spectra[n][:r]))) for r, n in zip(ranks, names, strict=True)
            )
            best = max(best, kept)
    return counts, budget, best


def test_global_energy_equals_a_brute_force_sort_of_all_components():
    rng = np.random.default_rng(6)
    for _ in range(4):
        shapes = {f"m{i}": tuple(int(x) for x in rng.integers(2, 12, 2)) for i in range(3)}
        costs = costs_of(shapes)
        spectra = {n: np.sort(rng.exponential(1.0, 4))[::-1] for n in shapes}
        caps = dict.fromkeys(shapes, 4)
        for k in range(1, 13):
            counts, budget, best = prefix_and_optimum(spectra, costs, caps, k)
            result = global_energy_allocation(spectra, shapes, budget, 4, allow_zero=True)
            assert result.ranks == counts and result.params == budget
            kept = sum(float(np.sum(np.square(spectra[n][:r]))) for n, r in counts.items())
            assert kept == pytest.approx(best)


def test_global_energy_keeps_every_module_unless_zero_is_allowed():
    spectra = {"a": [10.0, 9.0, 8.0, 7.0], "b": [0.1, 0.0, 0.0, 0.0]}
    shapes = {"a": (8, 8), "b": (8, 8)}
    assert global_energy_allocation(spectra, shapes, 64, 4).ranks == {"a": 3, "b": 1}
    dropped = global_energy_allocation(spectra, shapes, 64, 4, allow_zero=True)
    assert dropped.ranks == {"a": 4, "b": 0} and dropped.removed == ["b"]


def test_global_energy_compares_scaled_spectra():
    # two identical unscaled spectra: the module at r=4 has scaling 16/4, the one at r=8 16/8
    sv = [4.0, 3.0, 2.0, 1.0]
    audit = synthetic_audit({"x.q_proj": (sv, 8, 8), "y.q_proj": (sv + [0.5] * 4, 8, 8)})
    result = allocate(audit, "global_energy", 4 * 16)
    assert result.ranks == {"x.q_proj": 3, "y.q_proj": 1}


def test_depth_ranks_rise_with_layer_and_agree_within_a_layer():
    audit = random_audit(MISTRAL_7B, 32, 64, seed=7)
    result = allocate(audit, "depth", round(0.25 * audit.summary.total_params))
    by_layer = {}
    for m in audit.modules:
        by_layer.setdefault(m.layer, []).append(result.ranks[m.name])
    for kind in MISTRAL_7B:
        ranks = [result.ranks[f"model.layers.{layer}.{kind}"] for layer in range(32)]
        assert ranks == sorted(ranks), kind
    for ranks in by_layer.values():
        assert max(ranks) - min(ranks) <= 1
    assert by_layer[31][0] >= 2 * by_layer[0][0]
    prefs = depth_preference({"a.0.q": 0, "a.2.q": 2, "a.4.q": 4, "lm_head": None}, ratio=3)
    assert prefs == {"a.0.q": 1.0, "a.2.q": 2.0, "a.4.q": 3.0, "lm_head": 2.0}
    with pytest.raises(ValueError, match="ratio"):
        depth_preference({"a.0.q": 0}, ratio=0.5)


def test_policy_allocation_of_a_zero_update():
    spectra = {"a": [3.0, 2.0, 1.0, 0.5], "b": [0.0, 0.0, 0.0, 0.0]}
    shapes = {"a": (8, 8), "b": (8, 8)}
    kept = policy_allocation(spectra, shapes, 64, 4, "energy@0.9")
    assert kept.ranks == {"a": 3, "b": 1}
    dropped = policy_allocation(spectra, shapes, 64, 4, "energy@0.9", allow_zero=True)
    assert dropped.ranks == {"a": 4, "b": 0}
