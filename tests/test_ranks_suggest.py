"""Rank patterns from an audit: every module named in order, parameter counts, summaries."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_audit import synthetic_audit

from gradience.ranks import lora_params, nearest_rank_percentile, suggest_ranks, summarize_ranks
from gradience.ranks.suggest import default_allowed_ranks

SPECTRA = {
    "model.layers.0.self_attn.q_proj": ([5.0, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0], 32, 32),
    "model.layers.0.mlp.down_proj": ([1.0] * 8, 96, 32),
    "model.layers.1.self_attn.q_proj": ([3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], 32, 32),
    "lm_head": ([1.0, 1.0, 1.0, 0.0], 32, 64),
}


def test_suggest_names_every_module_in_audit_order():
    audit = synthetic_audit(SPECTRA)
    pattern = suggest_ranks(audit, "energy@0.90", [1, 2, 4, 8])
    assert list(pattern.ranks) == list(SPECTRA)
    # energy@0.9: 1, 8 (flat: 7.2 of 8 → 8), 2 (93% after two), 3 → 4 but capped at r=4
    assert pattern.ranks == {
        "model.layers.0.self_attn.q_proj": 1,
        "model.layers.0.mlp.down_proj": 8,
        "model.layers.1.self_attn.q_proj": 2,
        "lm_head": 4,
    }
    assert pattern.probe_r == 8
    assert pattern.trainable_params == 1 * 64 + 8 * 128 + 2 * 64 + 4 * 96
    assert pattern.policy == "energy@0.90" and pattern.schema_version == 3


def test_suggest_applies_margin_and_allowed_ranks():
    audit = synthetic_audit(SPECTRA)
    pattern = suggest_ranks(audit, "energy@0.90", [3, 6], margin=2.0)
    # 1×2 → 3; 8×2 = 16 → 6 (the largest allowed); 2×2 → 6; lm_head 3×2 → 6, capped at its r=4
    assert list(pattern.ranks.values()) == [3, 6, 6, 4]
    assert pattern.allowed_ranks == [3, 6]


def test_suggest_can_use_a_policy_the_audit_did_not_evaluate():
    pattern = suggest_ranks(synthetic_audit(SPECTRA), "knee", [1, 2, 4, 8])
    assert pattern.ranks["model.layers.1.self_attn.q_proj"] == 2  # energies 9,4,1 vs mean 14/8
    with pytest.raises(ValueError):
        suggest_ranks(synthetic_audit(SPECTRA), "median", [1, 2])


def test_lora_params_counts_r_times_in_plus_out():
    shapes = {"a": (4096, 4096), "b": (4096, 1024)}
    assert lora_params({"a": 8, "b": 2}, shapes) == 8 * 8192 + 2 * 5120
    with pytest.raises(ValueError, match="no shape"):
        lora_params({"c": 1}, shapes)


def test_nearest_rank_percentile_matches_numpy_inverted_cdf():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 10, 224):
        values = rng.choice([1, 2, 4, 8, 16, 32, 64], size=n).tolist()
        for p in (50, 90, 100):
            assert nearest_rank_percentile(values, p) == int(
                np.percentile(values, p, method="inverted_cdf")
            )


def test_summary_is_lower_median_p90_and_max():
    summary = summarize_ranks([8, 1, 4, 2])
    assert (summary.median, summary.p90, summary.max) == (2, 8, 8)
    summary = summarize_ranks(list(range(1, 11)))
    assert (summary.median, summary.p90, summary.max) == (5, 9, 10)


def test_default_allowed_ranks_come_from_the_audit():
    assert default_allowed_ranks(synthetic_audit(SPECTRA, allowed=(2, 8))) == [2, 8]
    audit = synthetic_audit(SPECTRA).model_copy(update={"allowed_ranks": []})
    assert default_allowed_ranks(audit) == [1, 2, 4, 8]
