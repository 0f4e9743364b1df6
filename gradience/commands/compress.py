"""``gradience compress``: truncate a LoRA adapter to the ranks its audit supports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradience.commands import paths
from gradience.commands.audit import _checked_policy, _int_list
from gradience.errors import GradienceError

_DEFAULT_POLICY = "energy@0.90"


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``compress``."""
    compress = commands.add_parser(
        "compress",
        help="truncate a LoRA adapter to per-module ranks by exact SVD; write a PEFT adapter",
        description="Replace every module's B·A by its best rank-k approximation (SVD from the "
        "audit's thin-QR factors, never the dense matrix), k chosen by a rank policy or given "
        "in a rank file. Writes OUTPUT/ as a PEFT adapter (each module's scaling kept through "
        "rank_pattern/alpha_pattern, or one rank for the whole adapter with --uniform) and "
        "OUTPUT/compress.json (parameters before/after, kept energy and error per module).",
    )
    compress.add_argument(
        "adapter_dir",
        metavar="ADAPTER_DIR",
        help="PEFT LoRA adapter folder (the one with adapter_config.json)",
    )
    compress.add_argument(
        "--output",
        required=True,
        type=Path,
        metavar="DIR",
        help="folder to write: new, empty, or an earlier compress output" + paths.CREATED,
    )
    ranks = compress.add_mutually_exclusive_group()
    ranks.add_argument(
        "--policy",
        help=f"energy@TAU, erank, stable_rank, knee or oht (default {_DEFAULT_POLICY})",
    )
    ranks.add_argument(
        "--ranks",
        type=Path,
        metavar="RANKS_JSON",
        help="rank pattern written by `gradience suggest` (every module named)",
    )
    compress.add_argument(
        "--allowed-ranks",
        help="comma-separated ranks a policy rank is rounded up to (default: powers of two up "
        "to the adapter's r)",
    )
    compress.add_argument(
        "--margin", type=float, help="multiply each policy rank by this before rounding up"
    )
    compress.add_argument(
        "--uniform",
        action="store_true",
        help="one rank for every module (zero-padded to the largest kept rank, scaling folded "
        "into lora_B): for servers that apply one rank and alpha per adapter (vLLM, TGI)",
    )
    compress.add_argument(
        "--json", action="store_true", help="print compress.json instead of the table"
    )
    compress.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept adapter_model.bin (loaded with torch.load(weights_only=True))",
    )
    compress.set_defaults(handler=run_compress)


def run_compress(args: argparse.Namespace) -> int:
    from gradience.compress import compress_adapter
    from gradience.compress.table import render_compress
    from gradience.io import output_dir, read_model
    from gradience.results import RankPattern

    paths.adapter_dir(args.adapter_dir)
    output_dir(args.output, "the compressed adapter", field="--output")
    ranks, source = None, None
    if args.ranks is not None:
        for flag, value in (("--allowed-ranks", args.allowed_ranks), ("--margin", args.margin)):
            if value is not None:
                raise GradienceError("applies to --policy, not to given --ranks", field=flag)
        paths.ranks_file(args.ranks)
        ranks, source = read_model(args.ranks, RankPattern).ranks, str(args.ranks)
    margin = 1.0 if args.margin is None else args.margin
    if not margin > 0:
        raise GradienceError(f"must be positive, got {margin}", field="--margin")
    result = compress_adapter(
        args.adapter_dir,
        args.output,
        policy=_checked_policy(args.policy or _DEFAULT_POLICY, "--policy"),
        allowed_ranks=_int_list(args.allowed_ranks, "--allowed-ranks")
        if args.allowed_ranks
        else None,
        margin=margin,
        ranks=ranks,
        ranks_source=source,
        uniform=args.uniform,
        allow_pickle=args.allow_pickle,
        progress=sys.stderr.isatty(),
    )
    print(result.model_dump_json(indent=2) if args.json else render_compress(result))
    return 0
