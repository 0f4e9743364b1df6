#!/usr/bin/env python
"""Copy a finished run's small result files into a folder fit to commit, and analyse them there.

    python experiments/publish_results.py /work/smollm2_run experiments/results/smollm2

Copies RUN's config.yaml, analysis_plan.json and aggregated_results.json, every seed's rank
patterns of the heatmap variants (seed_<s>/ranks/per_layer*.json; every variant's ranks are
in aggregated_results.json too) and the first seed's probe audit
(seed_<s>/probe/audit.json, for the spectra figure) into DEST, never an adapter, a checkpoint
or a prediction file; then runs ``gradience mechanism analyze DEST/aggregated_results.json`` in
DEST, so mechanism_analysis.json, report.md and the figures name DEST's files (run it from the
repository root for repository-relative paths). Anyone can rerun that analysis on the committed
folder and get the same mechanism_analysis.json. Exit code 1 when DEST ends up larger than
--max-mb (default 5), 2 for bad input (a RUN without aggregated_results.json, a DEST that holds
something else than a published copy).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from gradience.cli import main as gradience_main
from gradience.errors import GradienceError
from gradience.io import read_model
from gradience.report.files import HEATMAP_VARIANTS
from gradience.results import AggregatedResults

TOP_FILES = ("config.yaml", "analysis_plan.json", "aggregated_results.json")
#: What DEST may already hold (an earlier published copy of a run, replaced file by file).
PUBLISHED_SUFFIXES = (".json", ".yaml", ".md", ".png")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished run folder (with aggregated_results.json)")
    parser.add_argument("dest", help="the folder to publish into (created)")
    parser.add_argument("--max-mb", type=float, default=5.0, help="size limit of DEST in MB")
    return parser.parse_args(argv)


def check_dest(dest: Path) -> None:
    if dest.is_file():
        raise GradienceError("is a file; give a folder to publish into", path=dest)
    if not dest.is_dir():
        return
    foreign = [p for p in dest.rglob("*") if p.is_file() and p.suffix not in PUBLISHED_SUFFIXES]
    if foreign:
        raise GradienceError(
            f"holds files a published run never has (e.g. {foreign[0].name}); "
            "publish into an empty folder or an earlier published copy",
            path=dest,
        )


def copy_files(run: Path, dest: Path) -> list[Path]:
    """The copied files, DEST-relative; raises when RUN has no aggregated results."""
    results_path = run / "aggregated_results.json"
    if not results_path.is_file():
        raise GradienceError("not found: is this a finished run folder?", path=results_path)
    results = read_model(results_path, AggregatedResults)
    wanted = [Path(name) for name in TOP_FILES if (run / name).is_file()]
    for seed in results.seeds:
        ranks = (Path(f"seed_{seed}") / "ranks" / f"{v}.json" for v in HEATMAP_VARIANTS)
        wanted += [r for r in ranks if (run / r).is_file()]
    audits = (Path(f"seed_{seed}") / "probe" / "audit.json" for seed in results.seeds)
    first_audit = next((a for a in audits if (run / a).is_file()), None)
    if first_audit is not None:
        wanted.append(first_audit)
    copied = []
    for relative in wanted:
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / relative, target)
        copied.append(relative)
    return copied


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    run, dest = Path(args.run), Path(args.dest)
    try:
        check_dest(dest)
        copied = copy_files(run, dest)
    except GradienceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"copied {len(copied)} files from {run} to {dest}", flush=True)
    status = gradience_main(["mechanism", "analyze", str(dest / "aggregated_results.json")])
    if status != 0:
        print(f"error: the analysis of {dest} failed (exit code {status})", file=sys.stderr)
        return status
    size = folder_mb(dest)
    print(f"{dest}: {size:.2f} MB in all (limit {args.max_mb:g} MB)")
    return 0 if size <= args.max_mb else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
