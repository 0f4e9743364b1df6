"""``gradience mechanism power``: the power plan of a config, before any training.

Thin: read the config (and a pilot run's aggregated results), call gradience.stats.plan,
print. Never imports torch: experiments/run_mechanism_test.sh runs it before every experiment.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gradience.commands import paths
from gradience.errors import GradienceError

#: Items per split of the hub's openai/gsm8k (config "main"), to plan without downloading it.
GSM8K_SPLIT_SIZES = {"train": 7473, "test": 1319}
#: Exit code of --require-detectable when a primary threshold is not detectable.
UNDERPOWERED_EXIT_CODE = 3


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``power`` to the ``mechanism`` command group."""
    power = commands.add_parser(
        "power",
        help="before training: the smallest effect the config's seeds can detect, and the seeds "
        "each threshold needs",
        description="For each primary contrast of the verdict (per_layer vs probe at "
        "hypothesis.compression_threshold; per_layer vs per_layer_shuffled_within_type, or "
        "per_layer_shuffled standing in, at hypothesis.mechanism_threshold), at len(train.seeds) (a sequential config: hypothesis.max_seeds) "
        "seeds and the config's eval items: the smallest difference the one-sided paired t at "
        "the family-wise level alpha/m detects with hypothesis.power, and the seeds needed to "
        "detect the threshold (the definitions of the analysis's min_detectable_effect). The sd "
        "of the paired differences comes from --pilot, else from hypothesis.assumed_diff_sd; "
        "either is rescaled to the config's number of eval items. Exit code 2 for bad input.",
    )
    power.add_argument("--config", required=True, help="experiment YAML (see gradience/config.py)")
    power.add_argument(
        "--pilot",
        metavar="RUN",
        help="a finished run (its folder or aggregated_results.json): take each contrast's sd of "
        "the paired differences and the items' discordant fraction from it",
    )
    power.add_argument("--json", action="store_true", help="print the plan as JSON")
    power.add_argument(
        "--require-detectable",
        action="store_true",
        help=f"exit {UNDERPOWERED_EXIT_CODE} when a threshold is not detectable at the configured "
        "seeds, unless hypothesis.accept_underpowered is true (run_mechanism_test.sh uses it)",
    )
    power.set_defaults(handler=power_command)


def planned_seeds(cfg: Any) -> int:
    """The seeds the run can reach: its last sequential look, else every seed it lists."""
    if cfg.hypothesis.until_decided and cfg.hypothesis.max_seeds is not None:
        return min(cfg.hypothesis.max_seeds, len(cfg.train.seeds))
    return len(cfg.train.seeds)


def planned_eval_items(cfg: Any, config_path: str | Path) -> int:
    """How many eval items the config's run will score, without loading the data.

    The eval split's size (generated_eval_size for offline profiles, the hub's GSM8K test split,
    or the lines of task.eval_file), cut to task.eval_samples as ``seeded_subset`` does.
    """
    task = cfg.task
    split: int | None = None
    if task.name in ("arithmetic", "gsm_symbolic"):
        split = task.generated_eval_size
    elif task.eval_file is not None:
        path = Path(task.eval_file)
        if path.is_file():
            with path.open(encoding="utf-8") as handle:
                split = sum(1 for line in handle if line.strip())
    elif (task.dataset, task.dataset_config) == ("openai/gsm8k", "main"):
        split = GSM8K_SPLIT_SIZES.get(task.eval_split)
    if task.eval_samples is None and split is None:
        raise GradienceError(
            f"the size of eval split {task.eval_split!r} of {task.dataset} is not known "
            "without loading it: set task.eval_samples",
            path=config_path,
            field="task.eval_samples",
        )
    if task.eval_samples is None:
        return int(split)  # type: ignore[arg-type]
    return task.eval_samples if split is None else min(task.eval_samples, split)


def build_plan(cfg: Any, config_path: str, pilot: str | None) -> dict[str, Any]:
    """The plan as the JSON document ``--json`` prints."""
    from gradience.stats.plan import pilot_variance, plan_contrast, prior_variance
    from gradience.stats.registered import primary_contrasts

    hyp = cfg.hypothesis
    variants = cfg.compression.variants
    if "per_layer" not in variants:
        raise GradienceError(
            "lists no per_layer: the verdict's contrasts (and so the plan) need it",
            path=config_path,
            field="compression.variants",
        )
    family = primary_contrasts(variants)
    level = hyp.alpha / len(family)
    n_seeds, n_items = planned_seeds(cfg), planned_eval_items(cfg, config_path)
    results = results_path = None
    if pilot is not None:
        results_path, results = _load_pilot(pilot, hyp.primary_metric)
    plans = []
    for contrast in family:
        if results is None:
            variance = prior_variance(
                hyp.assumed_diff_sd, hyp.assumed_diff_sd_items, hyp.assumed_discordant_fraction
            )
        else:
            try:
                variance = pilot_variance(results, contrast, hyp.primary_metric, str(results_path))
            except ValueError as exc:
                raise GradienceError(str(exc), path=results_path) from None
        plans.append(
            plan_contrast(
                contrast,
                getattr(hyp, contrast.threshold_key),
                variance,
                n_seeds=n_seeds,
                n_eval_items=n_items,
                level=level,
                power=hyp.power,
            )
        )
    from gradience.results import SCHEMA_VERSION

    return {
        "schema_version": SCHEMA_VERSION,
        "config": str(config_path),
        "pilot": None if results_path is None else str(results_path),
        "alpha": hyp.alpha,
        "family_size": len(family),
        "n_seeds": n_seeds,
        "n_eval_items": n_items,
        "primary_metric": hyp.primary_metric,
        "accept_underpowered": hyp.accept_underpowered,
        "all_detectable": all(p.detectable for p in plans),
        "contrasts": [
            {
                "name": p.name,
                "role": p.role,
                "threshold": p.threshold,
                "sd": p.sd,
                "detectable_effect": p.detectable_effect,
                "seeds_needed": p.seeds_needed,
                "seeds_needed_reason": p.seeds_needed_reason,
                "power_at_threshold": p.power_at_threshold,
                "variance_source": p.variance_source,
                "variance_detail": p.variance_detail,
                "n_seeds": p.n_seeds,
                "n_eval_items": p.n_eval_items,
                "level": p.level,
                "power": p.power,
                "detectable": p.detectable,
            }
            for p in plans
        ],
    }


def _load_pilot(pilot: str, metric: str) -> tuple[Path, Any]:
    from gradience.io import read_model
    from gradience.report.files import checked_results, resolve_results_path
    from gradience.results import AggregatedResults

    path = resolve_results_path(paths.results_file(pilot, field="--pilot"))
    return path, checked_results(read_model(path, AggregatedResults), path, metric)


def _num(value: float | None, spec: str) -> str:
    return "undefined" if value is None else format(value, spec)


def verdict_line(c: dict[str, Any]) -> str:
    """One line: is this contrast's threshold detectable at the configured seeds?"""
    n, tau = c["n_seeds"], c["threshold"]
    needed = (
        f"{c['seeds_needed']} seeds would detect it"
        if c["seeds_needed"] is not None
        else f"no feasible number of seeds detects it ({c['seeds_needed_reason']})"
    )
    smallest = _num(c["detectable_effect"], ".4f")
    if c["detectable"]:
        return (
            f"{c['role']}: threshold {tau:g} is detectable at {n} seeds (smallest detectable "
            f"effect {smallest}; {needed})"
        )
    return (
        f"{c['role']}: threshold {tau:g} is NOT detectable at {n} seeds (smallest detectable "
        f"effect {smallest} > {tau:g}): underpowered; {needed}"
    )


def format_plan(plan: dict[str, Any]) -> str:
    first = plan["contrasts"][0]
    lines = [
        f"power plan of {plan['config']}: {plan['n_seeds']} seeds, {plan['n_eval_items']} eval "
        f"items, {plan['primary_metric']}; m = {plan['family_size']} primary contrast(s), "
        f"one-sided paired t at alpha/m = {first['level']:g}, target power {first['power']:g}",
    ]
    details = [c["variance_detail"] for c in plan["contrasts"]]
    if len(set(details)) == 1:
        lines.append(f"  variance: {details[0]}")
    else:
        lines += [f"  variance ({c['role']}): {c['variance_detail']}" for c in plan["contrasts"]]
    header = (
        "contrast",
        "threshold",
        "sd",
        "source",
        f"detectable at {plan['n_seeds']} seeds",
        "seeds needed",
    )
    rows = [
        (
            f"{c['name']} ({c['role']})",
            f"{c['threshold']:g}",
            f"{c['sd']:.4f}",
            c["variance_source"],
            _num(c["detectable_effect"], ".4f"),
            "-" if c["seeds_needed"] is None else str(c["seeds_needed"]),
        )
        for c in plan["contrasts"]
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    lines += [verdict_line(c) for c in plan["contrasts"]]
    return "\n".join(lines)


def power_command(args: argparse.Namespace) -> int:
    from gradience.config import load_config

    cfg = load_config(paths.config_file(args.config))
    plan = build_plan(cfg, args.config, args.pilot)
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        print(format_plan(plan))
    if args.require_detectable and not plan["all_detectable"]:
        if plan["accept_underpowered"]:
            if not args.json:
                print("underpowered, accepted by hypothesis.accept_underpowered: true")
            return 0
        return UNDERPOWERED_EXIT_CODE
    return 0
