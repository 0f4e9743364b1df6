"""``gradience check``: will a server apply this adapter's update as PEFT trained it?"""

from __future__ import annotations

import argparse

from gradience.commands import paths

#: The servers ``gradience.serving.check.SERVERS`` knows (kept here so that registering the
#: command imports nothing of the stage).
SERVERS = ("peft", "vllm", "sglang", "lorax")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``check``."""
    check = commands.add_parser(
        "check",
        help="will vLLM/SGLang/LoRAX serve this adapter as trained? scaling, ranks, padding",
        description="Reads adapter_config.json and the tensor shapes of "
        "adapter_model.safetensors (no weights are loaded) and says, module by module, whether "
        "the config describes the tensors (ranks, alphas, rsLoRA, target modules), what "
        "scaling each server applies (its rule read from its source), the relative error of "
        "the served update, the max_lora_rank it needs, the parameters it holds after padding, "
        "and the command that fixes it. Exit 0: served exactly; 1: mis-served; 2: bad input.",
    )
    check.add_argument(
        "adapter_dir", metavar="ADAPTER_DIR", help="PEFT adapter folder (with adapter_config.json)"
    )
    check.add_argument(
        "--server",
        action="append",
        choices=SERVERS,
        help="server to check (repeat for several; default: all of them)",
    )
    check.add_argument(
        "--vllm-version",
        metavar="X.Y.Z",
        help="the vLLM you serve with: up to 0.31 one lora_alpha/r for every module, from "
        "0.32.0 PEFT's per-module rank_pattern/alpha_pattern (default: the older rule)",
    )
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept adapter_model.bin (loaded with torch.load(weights_only=True))",
    )
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    from gradience.errors import GradienceError
    from gradience.serving import check_serving
    from gradience.serving.table import render_check
    from gradience.serving.vllm_loader import parse_version

    paths.adapter_dir(args.adapter_dir)
    version = None
    if args.vllm_version is not None:
        try:
            version = parse_version(args.vllm_version)
        except ValueError as exc:
            raise GradienceError(str(exc), field="--vllm-version") from None
    result = check_serving(
        args.adapter_dir,
        servers=args.server or SERVERS,
        vllm_version=version,
        allow_pickle=args.allow_pickle,
    )
    print(result.model_dump_json(indent=2) if args.json else render_check(result))
    return 0 if result.served_exactly else 1
