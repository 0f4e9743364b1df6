"""gradience's training step time against a plain PEFT + Trainer loop, in the same process.

Both train the same embedded model (uniform LoRA rank on the same modules) on the same
encoded examples with the same batch size, steps, seed and optimizer. The plain loop is what
one would write by hand: ``get_peft_model`` + ``Trainer``, fed by the same padding collator
(so that a slower collator in the baseline cannot hide gradience's own overhead). gradience
adds its verified build, loss guard, loss recorder, non-padding token count and progress
callback. Only the training loop (``trainer.train()``) is timed; model loading, the final
held-out loss and saving are outside it in both. The two alternate for ``--repeats`` rounds
(after one warm-up round) so that a busy machine slows both alike; the reported ratio is the
median over rounds of the paired per-round ratios.

Target: gradience step time ≤ 1.05× the plain loop's. The last line is a one-line summary
with PASS/FAIL.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.05


def experiment_config(args: argparse.Namespace):
    from gradience.config import ExperimentConfig

    return ExperimentConfig.model_validate(
        {
            "model": {"name": args.model},
            "task": {"name": "arithmetic", "generated_train_size": 400, "max_seq_length": 96},
            "train": {
                "max_steps": args.steps,
                "per_device_train_batch_size": args.batch_size,
                "learning_rate": 1e-3,
                "warmup_steps": 0,
                "logging_steps": 10,
                "save_steps": None,
                # the same padding collator as the plain loop (as the docstring promises):
                # what flattening saves is mfu.py's measurement, not overhead
                "padding_free": False,
            },
            "lora": {"probe_r": args.rank, "lora_alpha": 2 * args.rank},
            "compression": {"allowed_ranks": [args.rank]},
            "env": {"device": "cpu", "torch_dtype": "float32", "num_threads": args.threads},
        }
    )


def gradience_loop_seconds(cfg, task_data, seed: int, workdir: Path) -> float:
    from gradience.train.run import train_variant

    result = train_variant(
        cfg, None, seed, workdir, task_data=task_data, progress=lambda event: None
    )
    return result.train_loop_s


def plain_loop_seconds(cfg, task_data, seed: int, workdir: Path) -> float:
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

    from gradience.models import load_model_and_tokenizer
    from gradience.tasks import build_completion, build_prompt, encode_example
    from gradience.train.data import CompletionCollator

    model, tokenizer = load_model_and_tokenizer(cfg)
    features = [
        encode_example(
            tokenizer, build_prompt(cfg.task, e), build_completion(e), cfg.task.max_seq_length
        )
        for e in task_data.train
    ]
    set_seed(seed)
    lora = cfg.lora
    model = get_peft_model(
        model,
        LoraConfig(
            r=lora.probe_r,
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    t = cfg.train
    args = TrainingArguments(
        output_dir=str(workdir),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        learning_rate=t.learning_rate,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        logging_steps=t.logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
    )
    collator = CompletionCollator(pad_token_id=tokenizer.pad_token_id)
    trainer = Trainer(
        model=model, args=args, train_dataset=[f for f in features if f], data_collator=collator
    )
    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded:tiny-mistral-random")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    import torch
    import transformers

    from gradience.tasks import load_task

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    cfg = experiment_config(args)
    task_data = load_task(cfg.task)
    loops = {"gradience": gradience_loop_seconds, "plain": plain_loop_seconds}
    times: dict[str, list[float]] = {name: [] for name in loops}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.repeats + 1):  # round 0 warms up
            for name, loop in loops.items():
                seconds = loop(cfg, task_data, 42, Path(tmp) / f"{name}{round_index}")
                if round_index > 0:
                    times[name].append(seconds / args.steps)
    step = {name: statistics.median(values) for name, values in times.items()}
    ratio = statistics.median(
        g / p for g, p in zip(times["gradience"], times["plain"], strict=True)
    )
    print(
        f"model {args.model}, {args.steps} steps x batch {args.batch_size}, LoRA r={args.rank}, {args.threads} thread(s)"
    )
    for name, values in times.items():
        print(
            f"{name:>9}: {1000 * step[name]:7.1f} ms/step (runs: {', '.join(f'{1000 * v:.1f}' for v in values)})"
        )
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(
        f"train_overhead: gradience {1000 * step['gradience']:.1f} ms/step vs plain PEFT+Trainer "
        f"{1000 * step['plain']:.1f} ms/step, median paired ratio {ratio:.3f}x (target <= {TARGET:g}x) {verdict}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
