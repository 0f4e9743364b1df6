"""Rank patterns of every variant, built from one seed's probe audit (pure: no I/O).

``per_layer`` is the audit's suggestion (``compression.policy`` rounded up to
``compression.allowed_ranks``, capped at ``lora.probe_r``); every control is derived from it
by :mod:`gradience.ranks.controls`; ``probe`` is the probe's own uniform pattern. Each
pattern records its trainable parameter count and rank histogram.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gradience.config import ExperimentConfig
from gradience.experiment.plan import PROBE, SHUFFLED_K, trained_variants
from gradience.ranks import controls, lora_params, suggest_ranks
from gradience.results import AuditResult, RankPattern


def module_shapes(audit: AuditResult) -> dict[str, tuple[int, int]]:
    return {m.name: (m.d_in, m.d_out) for m in audit.modules}


def module_types(audit: AuditResult) -> dict[str, str]:
    return {m.name: m.type for m in audit.modules}


def per_layer_ranks(audit: AuditResult, cfg: ExperimentConfig) -> dict[str, int]:
    """The audit-guided ranks: every audited module named, none above the probe's rank."""
    c = cfg.compression
    pattern = suggest_ranks(audit, c.policy, c.allowed_ranks, margin=c.margin)
    return {name: min(rank, cfg.lora.probe_r) for name, rank in pattern.ranks.items()}


def module_need(audit: AuditResult, per_layer: Mapping[str, int]) -> dict[str, float]:
    """The audit's per-module need: the per_layer rank, ties broken by the effective rank.

    A single float that orders modules like (per_layer rank, effective rank): ranks are
    integers and effective_rank / (largest effective rank + 1) lies in [0, 1), so it only breaks
    ties between equal per_layer ranks.
    """
    scale = max(m.effective_rank for m in audit.modules) + 1.0
    return {m.name: per_layer[m.name] + m.effective_rank / scale for m in audit.modules}


def control_rules(
    audit: AuditResult, cfg: ExperimentConfig, seed: int
) -> dict[str, tuple[str, Callable[[dict[str, int]], dict[str, int]]]]:
    """Variant name -> (rule recorded in its RankPattern, function of the per_layer ranks)."""
    allowed = cfg.compression.allowed_ranks
    return {
        "per_layer_shuffled": (
            f"per_layer shuffled: random.Random({seed} + 10000).shuffle",
            lambda p: controls.shuffled_pattern(p, seed),
        ),
        "per_layer_shuffled_within_type": (
            f"per_layer shuffled within module type: random.Random({seed} + 10000)",
            lambda p: controls.shuffled_within_type(p, module_types(audit), seed),
        ),
        "uniform_matched": (
            "uniform rank with the parameter count closest to per_layer's (ties: smaller rank)",
            lambda p: controls.uniform_matched(p, module_shapes(audit), allowed),
        ),
        "per_layer_reversed": (
            "per_layer ranks reversed within module type: the neediest module (per_layer rank, "
            "then effective rank) gets the smallest rank",
            lambda p: controls.reversed_within_type(p, module_types(audit), module_need(audit, p)),
        ),
        "per_layer_truncated": (
            "the probe truncated by SVD to per_layer's ranks, not retrained",
            dict,
        ),
        "probe_truncated_shuffled": (
            "the probe truncated by SVD to per_layer_shuffled_within_type's ranks "
            f"(random.Random({seed} + 10000)), not retrained",
            lambda p: controls.shuffled_within_type(p, module_types(audit), seed),
        ),
        "uniform_median": ("uniform at the median per_layer rank", controls.uniform_median),
        "uniform_p90": ("uniform at the 90th-percentile per_layer rank", controls.uniform_p90),
    }


def rank_patterns(audit: AuditResult, cfg: ExperimentConfig, seed: int) -> dict[str, RankPattern]:
    """One RankPattern per trained variant of ``cfg`` (probe and per_layer always included)."""
    shapes = module_shapes(audit)
    per_layer = per_layer_ranks(audit, cfg)
    ranks: dict[str, tuple[str, dict[str, int]]] = {
        PROBE: (f"uniform probe_r={cfg.lora.probe_r}", {m.name: m.r for m in audit.modules}),
        "per_layer": (cfg.compression.policy, per_layer),
    }
    rules = control_rules(audit, cfg, seed)
    for variant in cfg.compression.variants:
        if variant in rules:
            rule, build = rules[variant]
            ranks[variant] = (rule, build(per_layer))
    if SHUFFLED_K in cfg.compression.variants:
        shuffles = controls.shuffled_k(per_layer, seed, cfg.compression.shuffle_k)
        for index, (name, pattern) in enumerate(shuffles.items()):
            seed_text = controls.shuffled_k_seed(seed, index)
            ranks[name] = (f"per_layer shuffled: random.Random({seed_text!r}).shuffle", pattern)
    wanted = set(trained_variants(cfg)) | {PROBE, "per_layer"}
    return {
        name: make_pattern(name, rule, pattern, shapes, cfg)
        for name, (rule, pattern) in ranks.items()
        if name in wanted
    }


def make_pattern(
    variant: str,
    rule: str,
    ranks: Mapping[str, int],
    shapes: Mapping[str, tuple[int, int]],
    cfg: ExperimentConfig,
) -> RankPattern:
    return RankPattern(
        policy=rule,
        allowed_ranks=cfg.compression.allowed_ranks,
        probe_r=cfg.lora.probe_r,
        ranks=dict(ranks),
        trainable_params=lora_params(ranks, shapes),
        variant=variant,
        rank_histogram=controls.rank_histogram(ranks),
    )
