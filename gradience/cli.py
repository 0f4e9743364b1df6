"""``gradience <command>``: parse arguments, call one stage, print. Nothing else lives here.

Each command module in ``gradience.commands`` registers its sub-commands and imports its
stage lazily, so ``gradience --help`` stays fast and never imports torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gradience import __version__
from gradience.commands import analysis, audit, check, compress, mechanism, train
from gradience.errors import GradienceError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradience",
        description="How much LoRA rank does each module really use? Audit adapters, suggest "
        "ranks, and test whether audit-guided rank placement beats random placement.",
    )
    parser.add_argument("--version", action="version", version=f"gradience {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    audit.register(commands)
    compress.register(commands)
    check.register(commands)
    train.register(commands)
    group = commands.add_parser(
        "mechanism",
        help="the controlled experiment: run it, watch it, analyse it",
        description="probe vs per_layer vs per_layer_shuffled over several seeds.",
    )
    mechanism_commands = group.add_subparsers(
        dest="mechanism_command", metavar="COMMAND", required=True
    )
    mechanism.register(mechanism_commands)
    analysis.register(mechanism_commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except GradienceError as exc:
        print(f"gradience: error: {config_file_of(exc, args)}{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("gradience: interrupted; finished results are kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error. Point stdout at devnull so
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def config_file_of(exc: GradienceError, args: argparse.Namespace) -> str:
    """'CONFIG: ' when an error names a config field but no file (found deep in a stage)."""
    config = getattr(args, "config", None)
    if exc.path is not None or not exc.field or config is None:
        return ""
    from gradience.config import ExperimentConfig

    return f"{config}: " if exc.field.split(".")[0] in ExperimentConfig.model_fields else ""


if __name__ == "__main__":
    sys.exit(main())
