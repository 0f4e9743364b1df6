"""``gradience train`` and ``gradience eval``: one LoRA variant, trained or evaluated.

Heavy libraries (torch, transformers, peft) are imported inside the handlers so that
``gradience --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gradience.commands import paths


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``eval`` to ``commands``."""
    train = commands.add_parser(
        "train",
        help="train one LoRA variant (a rank pattern or a uniform rank)",
        description="Train one LoRA adapter on the config's task with the Hugging Face Trainer. "
        "Every module gets the rank the pattern names (checked after building: a rank that did "
        "not apply is an error). Writes OUTPUT/adapter/ (PEFT, safetensors) and "
        "OUTPUT/train_result.json; resumes from OUTPUT/checkpoints when env.resume_from_checkpoint.",
    )
    train.add_argument(
        "--config", required=True, type=Path, help="experiment YAML (see gradience/config.py)"
    )
    ranks = train.add_mutually_exclusive_group(required=True)
    ranks.add_argument(
        "--ranks", type=Path, help="rank pattern JSON written by `gradience suggest`"
    )
    ranks.add_argument(
        "--uniform", type=int, metavar="R", help="the same rank R on every target module"
    )
    train.add_argument("--seed", type=int, help="training seed (default: the first of train.seeds)")
    train.add_argument(
        "--output",
        required=True,
        type=Path,
        help="output folder (adapter/, train_result.json, checkpoints/)" + paths.CREATED,
    )
    train.add_argument("--variant", help="variant name recorded in train_result.json")
    train.add_argument(
        "--audit-every",
        type=int,
        metavar="N",
        help="audit the LoRA modules in memory every N steps: rank metrics per module type go "
        "to the Trainer's loggers (train.report_to), the final audit to OUTPUT/audit.json",
    )
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a LoRA adapter (or the base model) on the fixed eval subset",
        description="Batched greedy generation on the config's eval items, GSM8K-style answer "
        "extraction, exact match. Writes OUTPUT/eval.json and OUTPUT/predictions.jsonl.",
    )
    evaluate.add_argument("--config", required=True, type=Path, help="experiment YAML")
    evaluate.add_argument(
        "--adapter",
        type=Path,
        help="adapter folder, or a `gradience train` output; omit for the base model",
    )
    evaluate.add_argument(
        "--output",
        required=True,
        type=Path,
        help="output folder (eval.json, predictions.jsonl)" + paths.CREATED,
    )
    evaluate.set_defaults(handler=run_eval)


class LazyBar:
    """A tqdm bar opened at the first progress event, so a setup error prints only itself."""

    def __init__(self, **options: object):
        self.options = options
        self.bar = None

    def advance_to(self, done: int, total: int, **postfix: str) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, **self.options)
        self.bar.update(done - self.bar.n)
        if postfix:
            self.bar.set_postfix(**postfix)

    def __enter__(self) -> LazyBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def run_train(args: argparse.Namespace) -> int:
    from gradience.config import RUN_REQUIRED, load_config
    from gradience.io import output_dir
    from gradience.train.run import train_variant

    cfg = load_config(paths.config_file(args.config), required=RUN_REQUIRED)
    output_dir(args.output, "the trained adapter", field="--output")
    ranks, source = _read_ranks(args, cfg.lora.probe_r)
    seed = args.seed if args.seed is not None else cfg.train.seeds[0]
    hook = _rank_audit_hook(args.audit_every, cfg, args.output)
    with LazyBar(desc=f"train seed {seed}", unit="step") as bar:

        def progress(event: dict) -> None:
            bar.advance_to(event["step"], event["max_steps"], loss=f"{event['loss']:.4f}")

        result = train_variant(
            cfg,
            ranks,
            seed,
            args.output,
            variant=args.variant,
            progress=progress,
            ranks_source=source,
            trainer_hook=hook,
        )
    loss = (
        f"loss {result.loss_first:.4f} -> {result.loss_last:.4f}"
        if result.loss_first is not None
        else "no loss logged"
    )
    print(
        f"trained seed {seed}: {result.steps} steps, {loss}, {result.trainable_params:,} trainable params, "
        f"{result.wall_time_s:.1f} s -> {args.output / 'adapter'}"
        + (
            f" ({result.dropped_examples} over-long examples dropped)"
            if result.dropped_examples
            else ""
        )
    )
    return 0


def _rank_audit_hook(every: int | None, cfg: Any, output: Path) -> Any:
    """``RankAuditCallback.attach`` for ``--audit-every``, the final audit under the config's
    policy, allowed ranks and margin (as the mechanism test's audit); None when not asked for."""
    if every is None:
        return None
    from gradience.errors import GradienceError
    from gradience.integrations import RankAuditCallback
    from gradience.ranks import DEFAULT_POLICIES

    if every <= 0:
        raise GradienceError(
            f"must be a positive number of steps, got {every}", field="--audit-every"
        )
    c = cfg.compression
    return RankAuditCallback(
        every,
        output=output / "audit.json",
        policies=tuple(dict.fromkeys([*DEFAULT_POLICIES, c.policy])),
        allowed_ranks=c.allowed_ranks,
        margin=c.margin,
    ).attach


def _read_ranks(args: argparse.Namespace, probe_r: int) -> tuple[dict[str, int] | int, str | None]:
    from gradience.errors import GradienceError
    from gradience.io import read_model
    from gradience.results import RankPattern

    if args.ranks is None:
        if args.uniform <= 0:
            raise GradienceError(f"--uniform must be a positive rank, got {args.uniform}")
        return args.uniform, None
    pattern = read_model(paths.ranks_file(args.ranks), RankPattern)
    if pattern.probe_r != probe_r:
        raise GradienceError(
            f"probe_r={pattern.probe_r} but the config's lora.probe_r={probe_r}: the alpha policy "
            "scales every module relative to the probe the ranks came from; use the same config",
            path=args.ranks,
            field="probe_r",
        )
    return pattern.ranks, str(args.ranks)


def run_eval(args: argparse.Namespace) -> int:
    from gradience.config import RUN_REQUIRED, load_config
    from gradience.evaluate.run import evaluate_adapter
    from gradience.io import output_dir

    cfg = load_config(paths.config_file(args.config), required=RUN_REQUIRED)
    if args.adapter is not None:
        _check_adapter(args.adapter)
    output_dir(args.output, "the evaluation", field="--output")
    with LazyBar(desc="eval", unit="item") as bar:

        def progress(event: dict) -> None:
            bar.advance_to(event["done"], event["total"])

        result = evaluate_adapter(cfg, args.adapter, args.output, progress=progress)
    correct = round(result.exact_match * result.n_items)
    print(
        f"exact_match {result.exact_match:.3f} ({correct}/{result.n_items}), strict_match "
        f"{result.strict_match:.3f}, {result.wall_time_s:.1f} s, {result.tokens_per_s:.0f} tokens/s "
        f"-> {args.output / 'eval.json'}"
    )
    return 0


def _check_adapter(path: Path) -> None:
    """``--adapter``: a folder with adapter_config.json in it or in its adapter/ (a train output).

    The weights inside are ``evaluate.run.resolve_adapter_dir``'s to check.
    """
    from gradience.errors import GradienceError
    from gradience.io import require_dir

    require_dir(path, paths.TRAINED_ADAPTER, noun="adapter directory", field="--adapter")
    if not any((folder / "adapter_config.json").is_file() for folder in (path, path / "adapter")):
        raise GradienceError(
            "not a PEFT adapter folder (no adapter_config.json here or in adapter/); give "
            + paths.TRAINED_ADAPTER,
            path=path,
            field="--adapter",
        )
