"""``gradience mechanism run`` and ``gradience mechanism status`` (analyze/report: commands.analysis)."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from gradience.commands import paths, power
from gradience.commands.interrupts import INTERRUPTED_EXIT_CODE, second_interrupt_exits
from gradience.errors import GradienceError


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``run``, ``status`` and ``power`` (commands.power) to the ``mechanism`` group."""
    run = commands.add_parser(
        "run",
        help="run (or resume) the mechanism test: probe, audit, variants, eval, for every seed",
        description="Run the controlled experiment of a config: per seed, train and evaluate the "
        "probe, stop the seed if the probe scores below compression.probe_gate on training items, audit the probe, "
        "then train and evaluate every variant of compression.variants. Rerunning the same "
        "command skips finished jobs and restarts unfinished ones. Writes RUN/seed_<s>/... and "
        "RUN/aggregated_results.json. Exit code 1 if any job failed or any seed was gated "
        "(everything else is still written and aggregated), 2 for a bad config.",
    )
    run.add_argument("--config", required=True, help="experiment YAML (see gradience/config.py)")
    run.add_argument(
        "--output",
        metavar="DIR",
        help="run folder (default: env.output_base_dir)" + paths.CREATED,
    )
    run.add_argument("--seeds", help="comma-separated seeds, e.g. 42,43,44 (default: train.seeds)")
    run.add_argument("--executor", choices=["local", "ray"], help="default: env.executor")
    run.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="ray.init(address=ADDR), e.g. 'auto' (default: env.ray_address)",
    )
    run.add_argument(
        "--no-estimate",
        action="store_true",
        help="skip the memory and disk estimate (and its stop) before training: for callers "
        "that have just made it, as experiments/run_mechanism_test.sh does in its checks",
    )
    run.add_argument(
        "--until-decided",
        action="store_true",
        help="sequential seeds: run the first hypothesis.min_seeds (3) seeds of train.seeds, then "
        "add seeds (env.workers at a time on the local executor, one on Ray; a look after every "
        "seed) until every primary contrast is decided or --max-seeds is reached "
        "(group-sequential boundaries keep the family-wise error at hypothesis.alpha across the "
        "looks; gradience.stats.sequential). Rerun the same command to resume",
    )
    run.add_argument(
        "--max-seeds",
        type=int,
        metavar="N",
        help="with --until-decided: the last look (default: hypothesis.max_seeds, else all of "
        "train.seeds); the boundaries depend on it, so keep it when resuming",
    )
    run.add_argument(
        "--fresh",
        action="store_true",
        help="start afresh when DIR holds an earlier run: move it aside to DIR.replaced-<time> "
        "(nothing is deleted). Without it, a config that differs from DIR/config.yaml in "
        "anything that shaped its results is refused",
    )
    run.add_argument(
        "--reuse-jobs-from",
        metavar="RUN",
        help="before training, copy RUN's finished train+eval jobs that this run also has (e.g. "
        "a tournament on a finished mechanism test's setting: its probe, per_layer and "
        "within-type shuffle); each is reused only where its inputs (training settings, data, "
        "library versions, seed, ranks) match this run's, else retrained. RUN is never modified",
    )
    run.set_defaults(handler=run_command)

    status = commands.add_parser(
        "status",
        help="show a run's jobs, their status and failures",
        description="One row per job of a run folder (done, running with its step and loss, "
        "failed with its error, pending, gated, skipped), then the results so far.",
    )
    status.add_argument("run_dir", metavar="DIR", help="a run folder written by 'mechanism run'")
    status.set_defaults(handler=status_command)

    power.register(commands)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise GradienceError(
            f"expected comma-separated integers, got {text!r}", field="--seeds"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise GradienceError(f"expected distinct seeds, got {text!r}", field="--seeds")
    return seeds


def configured(args: argparse.Namespace) -> Any:
    """The config file with the command line's overrides applied (and validated)."""
    from gradience.config import RUN_REQUIRED, load_config

    cfg = load_config(paths.config_file(args.config), required=RUN_REQUIRED).model_copy(deep=True)
    if args.seeds:
        cfg.train.seeds = parse_seeds(args.seeds)
    if getattr(args, "until_decided", False) or cfg.hypothesis.until_decided:
        from gradience.experiment.sequential import sequential_config

        cfg = sequential_config(cfg, getattr(args, "max_seeds", None))  # the cap, fixed once
    elif getattr(args, "max_seeds", None) is not None:
        raise GradienceError(
            "only means something with --until-decided (or hypothesis.until_decided)",
            field="--max-seeds",
        )
    if args.output:
        cfg.env.output_base_dir = args.output
    if args.executor:
        cfg.env.executor = args.executor
    if args.ray_address:
        cfg.env.ray_address = args.ray_address
    return cfg


def run_command(args: argparse.Namespace) -> int:
    from gradience.experiment import run_mechanism_test
    from gradience.experiment.plan import job_ids
    from gradience.experiment.preflight import resource_report
    from gradience.experiment.progress import progress_view

    cfg = configured(args)
    # before any training: the estimated memory and disk (stdout: stderr keeps errors to one
    # line), and a stop when they do not fit
    if not args.no_estimate:
        resource_report(cfg, cfg.env.output_base_dir, config_path=args.config, emit=print)
    with second_interrupt_exits():
        try:
            if cfg.hypothesis.until_decided:
                from gradience.experiment.sequential import run_until_decided

                planned = cfg.model_copy(deep=True)  # every seed the run may reach
                planned.train.seeds = planned.train.seeds[: cfg.hypothesis.max_seeds]
                with progress_view(job_ids(planned)) as view:
                    run = run_until_decided(
                        cfg,
                        cfg.env.output_base_dir,
                        sink=view,
                        fresh=args.fresh,
                        reuse_from=args.reuse_jobs_from,
                    )
            else:
                with progress_view(job_ids(cfg)) as view:
                    run = run_mechanism_test(
                        cfg,
                        cfg.env.output_base_dir,
                        sink=view,
                        fresh=args.fresh,
                        reuse_from=args.reuse_jobs_from,
                    )
        except KeyboardInterrupt:
            print(
                "gradience: interrupted; finished jobs are kept and an unfinished one restarts "
                f"from its last checkpoint. Resume with: {resume_command(args, cfg)}",
                file=sys.stderr,
            )
            return INTERRUPTED_EXIT_CODE
    print_results(run.results)
    print(f"results: {run.run_dir / 'aggregated_results.json'}")
    if not run.complete:
        print(
            f"incomplete: {len(run.failed)} job(s) failed, {len(run.gated)} seed(s) gated; "
            f"see 'gradience mechanism status {run.run_dir}'",
            file=sys.stderr,
        )
        return 1
    return 0


def resume_command(args: argparse.Namespace, cfg: Any) -> str:
    """The command that resumes this run (never with --fresh: that would move it aside)."""
    words = ["gradience", "mechanism", "run", "--config", str(args.config)]
    words += ["--output", str(cfg.env.output_base_dir)]
    if getattr(args, "until_decided", False):
        words.append("--until-decided")
    for flag, value in (
        ("--max-seeds", getattr(args, "max_seeds", None)),
        ("--seeds", args.seeds),
        ("--executor", args.executor),
        ("--ray-address", args.ray_address),
        ("--reuse-jobs-from", getattr(args, "reuse_jobs_from", None)),
    ):
        if value:
            words += [flag, str(value)]
    return shlex.join(words)


def console() -> Any:
    """A rich console on stdout; piped output gets a wide fixed width so rows are not folded."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def status_command(args: argparse.Namespace) -> int:
    from rich.table import Table

    from gradience.experiment import job_table, load_run
    from gradience.experiment.aggregate import AGGREGATED_FILE
    from gradience.io import read_model, require_dir
    from gradience.results import AggregatedResults

    ctx = load_run(
        require_dir(args.run_dir, paths.RUN_DIR, noun="run folder", contains="config.yaml")
    )
    table = Table(title=f"jobs in {ctx.run_dir}", show_lines=False)
    for column in ("job", "status", "attempts", "wall s", "progress", "error"):
        table.add_column(column, overflow="fold")
    for row in job_table(ctx):
        wall = f"{row.wall_time_s:.1f}" if row.wall_time_s is not None else ""
        error = row.error if row.status not in ("done", "running") else ""
        table.add_row(row.job, row.status, str(row.attempts or ""), wall, row.progress, error or "")
    console().print(table)
    aggregated = ctx.run_dir / AGGREGATED_FILE
    if aggregated.is_file():
        print_results(read_model(aggregated, AggregatedResults))
    return 0


def print_results(results: Any) -> None:  # results: AggregatedResults
    """Per variant: mean ± sd of the primary metric over seeds, seeds done, mean parameters."""
    from rich.table import Table

    table = Table(title=f"{results.primary_metric} over seeds {results.seeds}")
    for column in ("variant", "mean", "sd", "seeds", "trainable params"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, variant in results.variants.items():
        acc, params = variant.accuracy, variant.trainable_params
        table.add_row(
            name,
            f"{acc.mean:.4f}" if acc.mean is not None else "-",
            f"{acc.std:.4f}" if acc.std is not None else "-",
            str(len(acc.values)),
            f"{params.mean:,.0f}" if params.mean is not None else "-",
        )
    out = console()
    out.print(table)
    for failure in results.failures:
        out.print(
            f"seed {failure.seed} {failure.variant}: {failure.error}",
            style="red",
            markup=False,
            highlight=False,
        )
