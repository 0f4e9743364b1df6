"""``gradience mechanism analyze`` and ``gradience mechanism report`` (registered by gradience.cli).

Thin: parse, call gradience.report.files, print. scipy/matplotlib load inside the handlers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gradience.commands import paths
from gradience.errors import GradienceError


def _contrast(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"expected A:B (two variant names), got {text!r}")
    return a, b


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``analyze`` and ``report`` to the ``mechanism`` command group."""
    analyze = commands.add_parser(
        "analyze",
        help="statistics, verdict, report.md and figures from a run's aggregated results",
        description="Seed-level paired t-tests over the primary family (per_layer vs probe, and "
        "per_layer vs per_layer_shuffled_within_type, parameter-matched, which decides placement): "
        "PASS at Holm p < alpha with the estimate above its threshold, FAIL when the one-sided "
        "bound at alpha/m lies below it; a sequential run (hypothesis.until_decided) is judged "
        "by the boundaries it stopped by, every look recorded. Secondary contrasts (the seed's "
        "shuffle with its parameter ratio, every other control), Cohen's d and d_z, exact McNemar "
        "per seed, a hierarchical seeds-then-items bootstrap, power at the family-wise level, a "
        "placement section (how much placement this run could see), update size vs rank, and a "
        "verdict that is a scenario label only when every contrast it speaks about is decided. "
        "Writes mechanism_analysis.json, report.md and PNG figures next to the results (or "
        "--output); quotes the hash of the run's registered analysis plan.",
    )
    analyze.add_argument("results", help="aggregated_results.json, or the run folder holding it")
    analyze.add_argument(
        "--output",
        metavar="DIR",
        help="write the analysis and report here (default: beside the results)" + paths.CREATED,
    )
    analyze.add_argument(
        "--config",
        metavar="YAML",
        help="take the hypothesis settings from this config (default: the run "
        "folder's config.yaml if present, else the built-in defaults)",
    )
    analyze.add_argument(
        "--contrast",
        metavar="A:B",
        type=_contrast,
        action="append",
        default=[],
        help="an extra, exploratory contrast A vs B, added to the defaults (per_layer vs "
        "every control in the results); repeatable; never changes the verdict",
    )
    analyze.add_argument(
        "--json", action="store_true", help="print mechanism_analysis.json instead of the summary"
    )
    analyze.add_argument(
        "--no-report", action="store_true", help="write only mechanism_analysis.json"
    )
    analyze.set_defaults(handler=_analyze)

    report = commands.add_parser(
        "report",
        help="re-render report.md and the figures from a folder's mechanism_analysis.json",
        description="Re-render report.md and the PNG figures in DIR from DIR/mechanism_analysis.json "
        "and the aggregated results it was computed from (DIR/aggregated_results.json, or the file "
        "recorded in the analysis).",
    )
    report.add_argument("dir", metavar="DIR", help="folder holding mechanism_analysis.json")
    report.set_defaults(handler=_report)


def _analyze(args: argparse.Namespace) -> int:
    from gradience.io import output_dir
    from gradience.report.files import analyze_results
    from gradience.report.summary import format_closing, format_summary

    results = paths.results_file(args.results)
    if args.output is not None:
        output_dir(args.output, "the analysis and report", field="--output")
    if args.config is not None:
        paths.config_file(args.config)
    output = analyze_results(
        results,
        output_dir=args.output,
        config_path=args.config,
        contrasts=args.contrast,
        report=not args.no_report,
    )
    if args.json:
        print(json.dumps(output.analysis.model_dump(mode="json"), indent=2))
    else:
        print(format_summary(output.analysis, output.results))
        print("\nwritten:\n" + "\n".join(f"  {path}" for path in output.written))
        print("\n" + format_closing(output.analysis, output.results))
        report = next((path for path in output.written if Path(path).name == "report.md"), None)
        if report is not None:
            print(f"\nreport: {report}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from gradience.io import require_dir
    from gradience.report.files import rerender

    require_dir(args.dir, paths.ANALYSIS_DIR, contains="mechanism_analysis.json")
    output = rerender(args.dir)
    if not output.written:
        raise GradienceError("nothing was written", path=args.dir)
    print("written:\n" + "\n".join(f"  {path}" for path in output.written))
    return 0
