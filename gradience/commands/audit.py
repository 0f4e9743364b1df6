"""``gradience audit`` and ``gradience suggest``: the spectral audit and rank suggestions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradience.commands import paths, suggest_budget
from gradience.errors import GradienceError

_DEFAULT_POLICIES = "energy@0.90,energy@0.95,erank,stable_rank,knee,oht"


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise GradienceError(
            f"expected comma-separated integers, got {text!r}", field=flag
        ) from None
    if not values or any(v <= 0 for v in values):
        raise GradienceError(f"expected positive integers, got {text!r}", field=flag)
    return values


def _checked_policy(name: str, flag: str) -> str:
    from gradience.ranks import parse_policy

    try:
        parse_policy(name)
    except ValueError as exc:
        raise GradienceError(str(exc), field=flag) from None
    return name


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``audit`` and ``suggest``."""
    audit = commands.add_parser(
        "audit",
        help="spectral audit of a LoRA adapter: how much rank each module really uses",
        description="Singular spectrum of every module's B·A (never forming the dense matrix), "
        "its stable/effective/energy rank and utilization, and the rank each policy suggests. "
        "Reads adapter_config.json + adapter_model.safetensors one module at a time.",
    )
    audit.add_argument(
        "adapter_dir",
        metavar="ADAPTER_DIR",
        help="PEFT adapter folder (save_pretrained output, the one with adapter_config.json)",
    )
    audit.add_argument(
        "--json", action="store_true", help="print the full audit JSON instead of the table"
    )
    audit.add_argument(
        "--output", metavar="FILE", help="also write the full audit JSON to FILE" + paths.CREATED
    )
    audit.add_argument(
        "--policies",
        default=_DEFAULT_POLICIES,
        help=f"comma-separated rank policies: energy@TAU, erank, stable_rank, knee, oht (default {_DEFAULT_POLICIES})",
    )
    audit.add_argument(
        "--allowed-ranks",
        help="comma-separated ranks a suggestion is rounded up to, e.g. 1,2,4,8,16,32,64 "
        "(default: powers of two up to the adapter's r, so a large module is never rounded down)",
    )
    audit.add_argument(
        "--margin",
        type=float,
        default=1.0,
        help="multiply each policy rank by this before rounding up",
    )
    audit.add_argument(
        "--top",
        type=int,
        default=5,
        metavar="N",
        help="list the N modules using the most/least rank",
    )
    audit.add_argument(
        "--plot",
        metavar="FILE.png",
        help="save spectra, energy curves and a heatmap of the first policy's ranks (with "
        "--base, the intruder figure too, as FILE.intruders.png)" + paths.CREATED,
    )
    audit.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept adapter_model.bin (loaded with torch.load(weights_only=True)); off by default",
    )
    audit.add_argument(
        "--base",
        metavar="MODEL",
        help="also count intruder dimensions against this base model (a folder with "
        "*.safetensors, a hub id, package:<module> or embedded:tiny-mistral): top singular "
        "vectors of W0 + s·B·A unlike every one of W0's (PEFT's definition); W0's SVDs are cached",
    )
    audit.add_argument(
        "--intruder-top-k",
        type=int,
        metavar="K",
        help="with --base: vectors tested (default 10, PEFT's)",
    )
    audit.add_argument(
        "--intruder-epsilon",
        type=float,
        metavar="EPS",
        help="with --base: an intruder when its max |cos| with W0's vectors is below this "
        "(default 0.5, PEFT's)",
    )
    audit.set_defaults(handler=run_audit)

    suggest = commands.add_parser(
        "suggest",
        help="turn an audit JSON into a per-module rank pattern (every audited module named)",
        description="Apply one rank policy to every module of an audit: policy rank × margin, "
        "rounded up to the allowed ranks, capped at the module's r. With --budget, place rank "
        "at an exact parameter budget instead, and give it in PEFT's rank_pattern and "
        "axolotl's lora_rank_pattern form (the output's peft and axolotl keys).",
    )
    suggest.add_argument(
        "audit_json", metavar="AUDIT_JSON", help="output of gradience audit --output"
    )
    suggest.add_argument(
        "--policy", default="energy@0.90", help="energy@TAU, erank, stable_rank, knee or oht"
    )
    suggest.add_argument(
        "--allowed-ranks", help="comma-separated ranks (default: those the audit used)"
    )
    suggest.add_argument(
        "--margin",
        type=float,
        default=None,
        help="multiply each policy rank by this before rounding up (default 1)",
    )
    suggest.add_argument("--budget", metavar="SPEC", help=suggest_budget.BUDGET_HELP)
    suggest.add_argument("--allocator", metavar="NAME", help=suggest_budget.ALLOCATOR_HELP)
    suggest.add_argument(
        "--allow-zero",
        action="store_true",
        help="with --budget: let the allocator leave a module out (rank 0, not targeted) where "
        "its preference is 0 (a zero update, or no component above global_energy's threshold)",
    )
    suggest.add_argument(
        "--output",
        metavar="FILE",
        help="write the rank pattern JSON here (default: print it)" + paths.CREATED,
    )
    suggest.set_defaults(handler=run_suggest)


def run_audit(args: argparse.Namespace) -> int:
    from gradience.audit import audit_adapter
    from gradience.audit.table import render_audit
    from gradience.io import output_file, write_model

    paths.adapter_dir(args.adapter_dir)
    policies = [
        _checked_policy(p.strip(), "--policies") for p in args.policies.split(",") if p.strip()
    ]
    if not policies:
        raise GradienceError("name at least one policy", field="--policies")
    if not args.margin > 0:
        raise GradienceError(f"must be positive, got {args.margin}", field="--margin")
    if args.top < 0:
        raise GradienceError(f"must be >= 0, got {args.top}", field="--top")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise GradienceError("the plot is written as PNG; give a .png file name", field="--plot")
    if args.output:
        output_file(args.output, "the audit JSON", field="--output", example="audit.json")
    if args.plot:
        output_file(args.plot, "the plot", field="--plot", example="audit.png")
        if args.base:  # intruder_plot_path's name, without importing the plotting module
            plot = Path(args.plot)
            intruders = plot.with_name(f"{plot.stem}.intruders{plot.suffix}")
            output_file(intruders, "the intruder plot", field="--plot")
    for flag, given in (
        ("--intruder-top-k", args.intruder_top_k),
        ("--intruder-epsilon", args.intruder_epsilon),
    ):
        if given is not None and not args.base:
            raise GradienceError("only applies with --base", field=flag)
    result = audit_adapter(
        args.adapter_dir,
        policies=policies,
        allowed_ranks=_int_list(args.allowed_ranks, "--allowed-ranks")
        if args.allowed_ranks
        else None,
        margin=args.margin,
        allow_pickle=args.allow_pickle,
        progress=sys.stderr.isatty(),
    )
    if args.base:
        from gradience.audit.intruder import EPSILON, TOP_K
        from gradience.audit.intruder_scan import add_intruder_dimensions

        result = add_intruder_dimensions(
            result,
            args.adapter_dir,
            args.base,
            top_k=TOP_K if args.intruder_top_k is None else args.intruder_top_k,
            epsilon=EPSILON if args.intruder_epsilon is None else args.intruder_epsilon,
            allow_pickle=args.allow_pickle,
            progress=sys.stderr.isatty(),
        )
    if args.output:
        write_model(args.output, result)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(render_audit(result, top=args.top))
    if args.plot:
        from gradience.audit.plots import plot_audit

        plot_audit(result, policies[0], args.plot)
    intruder_plot = None
    if args.plot and result.intruders is not None:
        from gradience.audit.intruder_plots import intruder_plot_path, plot_intruders

        intruder_plot = plot_intruders(result, intruder_plot_path(args.plot))
    for path, what in (
        (args.output, "audit JSON"),
        (args.plot, "plot"),
        (intruder_plot, "intruder plot"),
    ):
        if path:
            print(f"wrote {what} to {path}", file=sys.stderr)
    return 0


def run_suggest(args: argparse.Namespace) -> int:
    from gradience.audit.table import render_pattern
    from gradience.io import output_file, read_model, require_file, write_model
    from gradience.ranks import default_allowed_ranks, suggest_ranks
    from gradience.results import AuditResult

    require_file(args.audit_json, paths.AUDIT_JSON)
    if args.output:
        output_file(args.output, "the rank pattern JSON", field="--output", example="ranks.json")
        if Path(args.output).resolve() == Path(args.audit_json).resolve():
            raise GradienceError(
                "is the audit being read; give another file for the rank pattern JSON",
                path=args.output,
                field="--output",
            )
    _checked_policy(args.policy, "--policy")
    if args.margin is not None and not args.margin > 0:
        raise GradienceError(f"must be positive, got {args.margin}", field="--margin")
    for flag, given in (("--allocator", args.allocator), ("--allow-zero", args.allow_zero)):
        if given and args.budget is None:
            raise GradienceError("only applies with --budget", field=flag)
    allowed_ranks = _int_list(args.allowed_ranks, "--allowed-ranks") if args.allowed_ranks else None
    audit = read_model(args.audit_json, AuditResult)
    if not audit.modules:
        raise GradienceError("the audit has no modules", path=args.audit_json, field="modules")
    if args.budget is not None:
        return suggest_budget.run_budget(args, audit, allowed_ranks)
    allowed = allowed_ranks or default_allowed_ranks(audit)
    margin = 1.0 if args.margin is None else args.margin
    pattern = suggest_ranks(audit, args.policy, allowed, margin)
    if args.output:
        write_model(args.output, pattern)
        print(render_pattern(pattern, audit.summary.total_params))
        print(f"wrote rank pattern to {args.output}", file=sys.stderr)
    else:
        print(pattern.model_dump_json(indent=2))
    return 0
