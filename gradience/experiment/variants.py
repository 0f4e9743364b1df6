"""Rank patterns of every variant, built from one seed's probe audit (pure: no I/O).

``per_layer`` is the audit's suggestion (``compression.policy`` rounded up to
``compression.allowed_ranks``, capped at ``lora.probe_r``); every control is derived from it
by :mod:`gradience.ranks.controls`; ``probe`` is the probe's own uniform pattern. Each
pattern records its trainable parameter count and rank histogram.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gradience.config import ExperimentConfig
from gradience.errors import GradienceError
from gradience.experiment import allocation
from gradience.experiment.plan import PROBE, SHUFFLED_K, trained_variants
from gradience.ranks import controls, lora_params, suggest_ranks
from gradience.results import AuditResult, RankPattern


def module_shapes(audit: AuditResult) -> dict[str, tuple[int, int]]:
    return {m.name: (m.d_in, m.d_out) for m in audit.modules}


def module_types(audit: AuditResult) -> dict[str, str]:
    """Each module's type for the within-type controls: its name suffix and its shape."""
    return {m.name: controls.module_type_key(m.type, m.d_in, m.d_out) for m in audit.modules}


#: Controls whose parameter count must equal per_layer's exactly (they only move rank); the
#: truncation arm's shuffle must equal the cross-seed ranks it shuffles (EXACT_REFERENCE).
PARAMETER_EXACT = (
    "per_layer_shuffled_within_type",
    "per_layer_reversed",
    "probe_truncated_shuffled",
)
#: The pattern a parameter-exact control is compared with, where it is not per_layer.
EXACT_REFERENCE = {"probe_truncated_shuffled": "per_layer_truncated_crossseed"}


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
            "uniform rank (any integer up to the probe's) with the parameter count closest to "
            "per_layer's (ties: smaller rank)",
            lambda p: controls.uniform_matched(p, module_shapes(audit)),
        ),
        "per_layer_reversed": (
            "per_layer ranks reversed within module type: the neediest module (per_layer rank, "
            "then effective rank) gets the smallest rank",
            lambda p: controls.reversed_within_type(p, module_types(audit), module_need(audit, p)),
        ),
        "per_layer_truncated": (
            "the probe truncated by SVD to per_layer's ranks, not retrained (what compression "
            "costs before retraining; not a placement test: the ranks were read off this very "
            "probe's spectrum)",
            dict,
        ),
        "uniform_median": ("uniform at the median per_layer rank", controls.uniform_median),
        "uniform_p90": ("uniform at the 90th-percentile per_layer rank", controls.uniform_p90),
    }


def rank_patterns(audit: AuditResult, cfg: ExperimentConfig, seed: int) -> dict[str, RankPattern]:
    """One RankPattern per trained variant of ``cfg`` (probe and per_layer always included),
    but the cross-seed truncations: their ranks come from another seed's audit
    (:func:`crossseed_patterns`, built by their own jobs)."""
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
    shuffle_target = None
    if SHUFFLED_K in cfg.compression.variants:
        source, moved = allocation.shuffle_source(audit, cfg, per_layer)
        shuffle_target = lora_params(moved, shapes)
        shuffles = controls.shuffled_k(moved, module_types(audit), seed, cfg.compression.shuffle_k)
        for index, (name, pattern) in enumerate(shuffles.items()):
            seed_text = controls.shuffled_k_seed(seed, index)
            ranks[name] = (
                f"{source} shuffled within module type: random.Random({seed_text!r})",
                pattern,
            )
    wanted = set(trained_variants(cfg)) | {PROBE, "per_layer"}
    patterns = {
        name: make_pattern(name, rule, pattern, shapes, cfg)
        for name, (rule, pattern) in ranks.items()
        if name in wanted
    }
    for name, fitted in allocation.data_free_allocations(audit, cfg, per_layer).items():
        allocation.check_budget(name, fitted)
        rule = f"{name.removeprefix(allocation.PREFIX)} allocation at {fitted.budget:,} parameters"
        patterns[name] = make_pattern(name, rule, fitted.ranks, shapes, cfg, fitted.budget)
    check_parameter_exact(patterns, shuffle_target)
    return patterns


def check_parameter_exact(
    patterns: Mapping[str, RankPattern], shuffle_target: int | None = None
) -> None:
    """Every control that only moves rank trains exactly its reference's parameters (per_layer's;
    per_layer_truncated_crossseed's for probe_truncated_shuffled; ``shuffle_target`` for the
    k shuffles when given: the parameters of the pattern they move), or the run stops.

    Grouping by (suffix, shape) makes this hold by construction; the check keeps a future
    control, or a model whose shapes the audit misreports, from silently comparing capacities.
    """
    for name, pattern in patterns.items():
        if not (name in PARAMETER_EXACT or name.startswith(SHUFFLED_K)):
            continue
        reference = EXACT_REFERENCE.get(name, "per_layer")
        if name.startswith(SHUFFLED_K) and shuffle_target is not None:
            reference, target = "the pattern it shuffles", shuffle_target
        elif reference not in patterns:
            raise GradienceError(
                f"{name} must be checked against {reference}'s parameter count, which is missing",
                field="compression.variants",
            )
        else:
            target = patterns[reference].trainable_params
        if pattern.trainable_params != target:
            raise GradienceError(
                f"{name} trains {pattern.trainable_params:,} LoRA parameters, {reference} "
                f"{target:,}: a within-type control must move rank without changing capacity",
                field="compression.variants",
            )


def crossseed_patterns(
    audit: AuditResult,
    source_ranks: Mapping[str, int],
    cfg: ExperimentConfig,
    seed: int,
    source_seed: int,
) -> dict[str, RankPattern]:
    """The truncation arm's placement pair for ``seed``, both cut from its probe (``audit``):

    * ``per_layer_truncated_crossseed``: the per_layer ranks ``source_seed``'s audit chose
      (``source_ranks``), in that pattern's module order;
    * ``probe_truncated_shuffled``: those very ranks shuffled within module type
      (:func:`gradience.ranks.controls.shuffled_within_type`, ``random.Random(seed + 10000)``).

    Neither is read off this probe's spectrum, and both have exactly the same parameter count,
    so the pair asks whether an independent run's audit places rank better than a random
    placement of the same ranks. The tournament's ``per_layer_crossfit`` trains at
    ``source_ranks`` (is per_layer's advantage this adapter's own audit, or a pattern that
    replicates?). Raises GradienceError when the other audit names other modules.
    """
    own = [m.name for m in audit.modules]
    if set(own) != set(source_ranks):
        missing = sorted(set(own) - set(source_ranks))[:3]
        extra = sorted(set(source_ranks) - set(own))[:3]
        raise GradienceError(
            f"seed {source_seed}'s per_layer ranks do not name seed {seed}'s modules (missing "
            f"{missing}, unknown {extra}): a cross-seed truncation needs one model for all seeds",
            field="compression.variants",
        )
    ranks = dict(source_ranks)
    rules = {
        "per_layer_truncated_crossseed": (
            f"the probe truncated by SVD to seed {source_seed}'s per_layer ranks (another run's "
            "audit, not this probe's spectrum), not retrained",
            ranks,
        ),
        "probe_truncated_shuffled": (
            f"the probe truncated by SVD to seed {source_seed}'s per_layer ranks shuffled within "
            f"module type: random.Random({seed} + 10000), not retrained",
            controls.shuffled_within_type(ranks, module_types(audit), seed),
        ),
        "per_layer_crossfit": (
            f"trained at seed {source_seed}'s per_layer ranks (its probe's audit, not this "
            "seed's): does the audit's placement replicate across runs?",
            ranks,
        ),
    }
    shapes = module_shapes(audit)
    patterns = {
        name: make_pattern(name, rule, pattern, shapes, cfg)
        for name, (rule, pattern) in rules.items()
    }
    check_parameter_exact(patterns)
    return patterns


def make_pattern(
    variant: str,
    rule: str,
    ranks: Mapping[str, int],
    shapes: Mapping[str, tuple[int, int]],
    cfg: ExperimentConfig,
    budget: int | None = None,
) -> RankPattern:
    """``budget``: the parameter budget an alloc_* pattern was fitted to (recorded with the ratio)."""
    params = lora_params(ranks, shapes)
    return RankPattern(
        policy=rule,
        allowed_ranks=cfg.compression.allowed_ranks,
        probe_r=cfg.lora.probe_r,
        ranks=dict(ranks),
        trainable_params=params,
        budget=budget,
        param_ratio=None if budget is None else params / budget,
        variant=variant,
        rank_histogram=controls.rank_histogram(ranks),
    )
