#!/usr/bin/env python
"""Rerun one job of a committed result folder and compare it with the committed numbers.

    python experiments/reproduce.py experiments/results/smollm2 --seed 42
    python experiments/reproduce.py experiments/results/smollm2 --seed 43 --variant per_layer

Reads RESULTS/config.yaml and RESULTS/aggregated_results.json, runs that config for one seed
with only the probe (and, for --variant V, the probe's audit and V) into --output (default: a
new temporary folder, removed afterwards unless --keep), and compares the job's exact match and
its per-item correctness with the committed run's. Prints both; exit code 0 when they are
identical, 1 when they differ, 2 for bad input. On CPU with the same library versions
(RESULTS/aggregated_results.json does not pin them; the installed ones are printed) a rerun is
bit-identical: the config pins the thread count and every seed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from gradience.config import load_config
from gradience.errors import GradienceError
from gradience.experiment.pipeline import run_mechanism_test
from gradience.io import read_model
from gradience.results import AggregatedResults
from gradience.train.identity import library_versions


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "results", help="a result folder with config.yaml and aggregated_results.json"
    )
    parser.add_argument("--seed", type=int, required=True, help="the seed to rerun")
    parser.add_argument("--variant", default="probe", help="the variant to rerun (default: probe)")
    parser.add_argument("--output", help="run folder (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary run folder")
    return parser.parse_args(argv)


def committed_run(results: Path, seed: int, variant: str):
    """The committed config and that seed's run of the variant (a clear error when absent)."""
    config_path, aggregated_path = results / "config.yaml", results / "aggregated_results.json"
    for path in (config_path, aggregated_path):
        if not path.is_file():
            raise GradienceError("not found (expected a committed result folder)", path=path)
    aggregated = read_model(aggregated_path, AggregatedResults)
    if variant not in aggregated.variants:
        raise GradienceError(
            f"no variant {variant!r}; it has {sorted(aggregated.variants)}",
            path=aggregated_path,
            field="variants",
        )
    run = aggregated.variants[variant].runs.get(str(seed))
    if run is None:
        raise GradienceError(
            f"no run of {variant} at seed {seed}; its seeds are {aggregated.seeds}",
            path=aggregated_path,
            field=f"variants.{variant}.runs",
        )
    return load_config(config_path), run


def rerun(cfg, seed: int, variant: str, folder: Path):
    one = cfg.model_copy(deep=True)
    one.train.seeds = [seed]
    one.compression.variants = ["probe"] if variant == "probe" else ["probe", variant]
    one.hypothesis.until_decided = False
    one.env.executor = "local"
    results = run_mechanism_test(one, folder).results
    if variant not in results.variants or str(seed) not in results.variants[variant].runs:
        raise GradienceError(f"the rerun of {variant} at seed {seed} did not finish", path=folder)
    return results.variants[variant].runs[str(seed)]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        cfg, committed = committed_run(Path(args.results), args.seed, args.variant)
        folder = Path(args.output or tempfile.mkdtemp(prefix="gradience-reproduce-"))
        print(f"rerunning {args.variant} at seed {args.seed} into {folder}", flush=True)
        try:
            fresh = rerun(cfg, args.seed, args.variant, folder)
        finally:
            if args.output is None and not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    except GradienceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    versions = ", ".join(f"{k} {v}" for k, v in library_versions().items())
    same_items = fresh.item_correct == committed.item_correct
    print(f"installed: {versions}")
    print(f"committed exact_match {committed.exact_match!r}")
    print(f"rerun     exact_match {fresh.exact_match!r}")
    if fresh.exact_match == committed.exact_match and same_items:
        print(f"reproduced exactly: the same score and the same {len(fresh.item_correct)} items")
        return 0
    if len(fresh.item_correct) != len(committed.item_correct):
        print(
            f"NOT reproduced: {len(fresh.item_correct)} items scored, "
            f"{len(committed.item_correct)} committed"
        )
        return 1
    differing = sum(a != b for a, b in zip(fresh.item_correct, committed.item_correct, strict=True))
    print(f"NOT reproduced: {differing} item(s) differ")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
