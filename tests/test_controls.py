"""The control rank patterns: exact permutations, parameter matching, uniform summaries."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gradience.ranks import lora_params, summarize_ranks
from gradience.ranks.controls import (
    module_type_key,
    moved_fraction,
    rank_histogram,
    reversed_within_type,
    shuffled_k,
    shuffled_pattern,
    shuffled_within_type,
    uniform_matched,
    uniform_median,
    uniform_p90,
)

TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Mistral-7B's shapes (d_in, d_out): GQA k/v are narrow, the MLP is wide.
SHAPES_BY_TYPE = {
    "q_proj": (4096, 4096),
    "k_proj": (4096, 1024),
    "v_proj": (4096, 1024),
    "o_proj": (4096, 4096),
    "gate_proj": (4096, 14336),
    "up_proj": (4096, 14336),
    "down_proj": (14336, 4096),
}


def module_name(layer: int, kind: str) -> str:
    block = "self_attn" if kind in TYPES[:4] else "mlp"
    return f"model.layers.{layer}.{block}.{kind}"


def mistral_like_pattern(layers: int = 6, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    return {
        module_name(i, t): rng.choice([1, 2, 4, 8, 16, 32, 64])
        for i in range(layers)
        for t in TYPES
    }


def shapes_of(pattern: dict[str, int]) -> dict[str, tuple[int, int]]:
    return {name: SHAPES_BY_TYPE[name.rsplit(".", 1)[1]] for name in pattern}


def types_of(pattern: dict[str, int]) -> dict[str, str]:
    return {name: name.rsplit(".", 1)[1] for name in pattern}


def fisher_yates(values: list[int], rng: random.Random) -> list[int]:
    """CPython's Random.shuffle, written out: swap i with randbelow(i + 1) from the end."""
    values = list(values)
    for i in reversed(range(1, len(values))):
        j = rng._randbelow(i + 1)
        values[i], values[j] = values[j], values[i]
    return values


@pytest.mark.parametrize("seed", [42, 43, 44, 0, 7])
def test_shuffled_pattern_is_the_seed_rule_permutation(seed: int) -> None:
    pattern = mistral_like_pattern()
    expected_ranks = fisher_yates(list(pattern.values()), random.Random(seed + 10000))
    shuffled = shuffled_pattern(pattern, seed)
    assert list(shuffled) == list(pattern)  # same keys, same order
    assert list(shuffled.values()) == expected_ranks
    assert Counter(shuffled.values()) == Counter(pattern.values())


def test_shuffled_pattern_differs_between_seeds_and_moves_parameters() -> None:
    pattern = mistral_like_pattern()
    a, b = shuffled_pattern(pattern, 42), shuffled_pattern(pattern, 43)
    assert a != b and a != pattern
    # The seed's rule keeps the multiset but not the parameter count (shapes differ).
    shapes = shapes_of(pattern)
    assert lora_params(a, shapes) != lora_params(pattern, shapes)


@pytest.mark.parametrize("seed", [42, 43])
def test_within_type_shuffle_is_parameter_matched_and_follows_its_rule(seed: int) -> None:
    pattern = mistral_like_pattern()
    types = types_of(pattern)
    shuffled = shuffled_within_type(pattern, types, seed)
    shapes = shapes_of(pattern)
    assert lora_params(shuffled, shapes) == lora_params(pattern, shapes)
    for kind in TYPES:
        names = [n for n in pattern if types[n] == kind]
        assert Counter(shuffled[n] for n in names) == Counter(pattern[n] for n in names)
    # The documented rule, computed independently: one RNG, types in order of first appearance.
    rng = random.Random(seed + 10000)
    expected = {}
    for kind in TYPES:
        names = [n for n in pattern if types[n] == kind]
        expected.update(zip(names, fisher_yates([pattern[n] for n in names], rng), strict=True))
    assert shuffled == expected
    assert list(shuffled) == list(pattern)
    assert shuffled != pattern


def test_within_type_shuffle_rejects_a_module_without_type() -> None:
    with pytest.raises(ValueError, match="no module type"):
        shuffled_within_type({"a": 1, "b": 2}, {"a": "q_proj"}, 42)


def test_uniform_matched_takes_any_integer_rank_and_lands_within_five_percent() -> None:
    pattern = mistral_like_pattern()
    shapes = shapes_of(pattern)
    target = sum(r * sum(shapes[n]) for n, r in pattern.items())
    per_rank = sum(sum(shapes[n]) for n in pattern)
    # closest uniform count by direct search over every integer rank up to the cap
    best = min(range(1, max(pattern.values()) + 1), key=lambda r: (abs(r * per_rank - target), r))
    matched = uniform_matched(pattern, shapes)
    assert set(matched.values()) == {best} and list(matched) == list(pattern)
    assert abs(best * per_rank / target - 1) <= 0.05


def test_uniform_matched_breaks_ties_towards_the_smaller_rank_and_respects_the_cap() -> None:
    shapes = {"a": (10, 10), "b": (10, 10)}
    # target 12 * 20 = 240: uniform 6 matches exactly (no power of two could)
    assert uniform_matched({"a": 4, "b": 8}, shapes) == {"a": 6, "b": 6}
    # target 3 * 20 = 60: uniform 1 -> 40 and uniform 2 -> 80 are equally far
    assert uniform_matched({"a": 1, "b": 2}, shapes) == {"a": 1, "b": 1}
    assert max(uniform_matched({"a": 8, "b": 8}, shapes).values()) == 8


def test_uniform_median_and_p90_agree_with_the_audit_summaries() -> None:
    pattern = {f"m{i}": r for i, r in enumerate([1, 2, 2, 4, 4, 4, 8, 8, 16, 64])}
    summary = summarize_ranks(list(pattern.values()))
    assert set(uniform_median(pattern).values()) == {summary.median} == {4}
    # nearest rank: ceil(0.9 * 10) = 9th smallest value = 16
    assert set(uniform_p90(pattern).values()) == {summary.p90} == {16}
    assert set(uniform_median({"a": 1, "b": 2, "c": 4, "d": 8}).values()) == {2}


def test_shuffled_k_gives_k_distinct_reproducible_within_type_permutations() -> None:
    pattern = mistral_like_pattern()
    shapes = shapes_of(pattern)
    types = {n: module_type_key(n.rsplit(".", 1)[-1], *shapes[n]) for n in pattern}
    shuffles = shuffled_k(pattern, types, 42, 19)
    assert list(shuffles) == [f"per_layer_shuffled_k{i}" for i in range(19)]
    target = sum(r * sum(shapes[n]) for n, r in pattern.items())
    for index, shuffled in enumerate(shuffles.values()):
        rng = random.Random(f"per_layer_shuffled_k:42:{index}")
        for kind in dict.fromkeys(types.values()):  # types in first-appearance order
            names = [n for n in pattern if types[n] == kind]
            expected = fisher_yates([pattern[n] for n in names], rng)
            assert [shuffled[n] for n in names] == expected
        assert list(shuffled) == list(pattern)
        assert sum(r * sum(shapes[n]) for n, r in shuffled.items()) == target
    assert len({tuple(s.values()) for s in shuffles.values()}) == 19
    assert shuffled_k(pattern, types, 42, 19) == shuffles
    with pytest.raises(ValueError):
        shuffled_k(pattern, types, 42, 0)


def test_moved_fraction_counts_each_moved_parameter_once() -> None:
    costs = {"a": 10, "b": 10, "c": 30}
    pattern = {"a": 4, "b": 2, "c": 1}  # 40 + 20 + 30 = 90 parameters
    assert moved_fraction(pattern, pattern, costs) == 0.0
    swapped = {"a": 2, "b": 4, "c": 1}  # 20 parameters left a for b
    assert moved_fraction(pattern, swapped, costs) == pytest.approx(20 / 90)
    assert moved_fraction(pattern, swapped, {"a": 10}) is None


def test_rank_histogram_counts_modules_per_rank_in_rank_order() -> None:
    assert rank_histogram({"a": 8, "b": 2, "c": 8, "d": 16}) == {"2": 1, "8": 2, "16": 1}
    assert list(rank_histogram({"a": 16, "b": 2})) == ["2", "16"]


def test_reversed_within_type_gives_the_largest_rank_to_the_least_needy_module():
    pattern = {"l0.q": 8, "l1.q": 2, "l2.q": 4, "l0.k": 1, "l1.k": 4}
    types = {"l0.q": "q", "l1.q": "q", "l2.q": "q", "l0.k": "k", "l1.k": "k"}
    need = {"l0.q": 9.0, "l1.q": 1.0, "l2.q": 5.0, "l0.k": 0.5, "l1.k": 3.0}
    flipped = reversed_within_type(pattern, types, need)
    assert list(flipped) == list(pattern)
    assert flipped == {"l0.q": 2, "l1.q": 8, "l2.q": 4, "l0.k": 4, "l1.k": 1}
    for kind in ("q", "k"):
        names = [n for n in pattern if types[n] == kind]
        assert Counter(flipped[n] for n in names) == Counter(pattern[n] for n in names)
    with pytest.raises(ValueError, match="no module type or need"):
        reversed_within_type(pattern, types, {"l0.q": 1.0})


def test_same_named_modules_of_another_shape_keep_every_within_type_control_parameter_exact():
    import numpy as np
    from fixtures.mechanism import audit_result

    from gradience.config import ExperimentConfig
    from gradience.errors import GradienceError
    from gradience.experiment.variants import check_parameter_exact, module_types, rank_patterns

    audit = audit_result(4, np.random.default_rng(3))
    for module in audit.modules:  # a second stack whose q_proj is half as wide (a vision tower)
        if module.type == "q_proj" and module.layer >= 2:
            module.d_in //= 2
            module.params = module.r * (module.d_in + module.d_out)
    cfg = ExperimentConfig.model_validate(
        {
            "lora": {"probe_r": 16},
            "compression": {
                "policy": "energy@0.90",
                "allowed_ranks": [1, 2, 4, 8, 16],
                "variants": [
                    "probe",
                    "per_layer",
                    "per_layer_shuffled_within_type",
                    "per_layer_reversed",
                    "per_layer_shuffled_k",
                    "uniform_matched",
                ],
            },
        }
    )
    patterns = rank_patterns(audit, cfg, seed=42)
    target = patterns["per_layer"].trainable_params
    exact = [n for n in patterns if n.startswith("per_layer_") and n != "per_layer"]
    assert len([n for n in exact if n.startswith("per_layer_shuffled_k")]) == 19
    types = module_types(audit)
    assert len({types[m.name] for m in audit.modules if m.type == "q_proj"}) == 2
    for name in exact:
        assert patterns[name].trainable_params == target, name
        for kind in set(types.values()):  # rank moves only within (suffix, shape)
            names = [n for n in types if types[n] == kind]
            assert sorted(patterns[name].ranks[n] for n in names) == sorted(
                patterns["per_layer"].ranks[n] for n in names
            )
    assert abs(patterns["uniform_matched"].trainable_params / target - 1) <= 0.05
    broken = dict(patterns)
    broken["per_layer_reversed"] = patterns["per_layer_reversed"].model_copy(
        update={"trainable_params": target + 1}
    )
    with pytest.raises(GradienceError) as error:
        check_parameter_exact(broken)
    assert error.value.field == "compression.variants"
