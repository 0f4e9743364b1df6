"""What does RankAuditCallback cost a training run at its default interval?

The same PEFT + Trainer training (embedded model, uniform LoRA on the 7 projections, the same
encoded examples, batch, steps, seed and optimizer) runs with and without the callback,
attached at its default interval (``gradience.integrations.DEFAULT_EVERY`` steps). Only
``trainer.train()`` is timed. The two alternate for ``--repeats`` rounds after one warm-up
round, in ABBA order (which goes first flips every round) so that a busy machine and any
drift slow both alike; the reported ratio is the median over rounds of the paired per-round
ratios. The callback also times its own audits, printed as a share of its loop for reference.

Target: training with the callback ≤ 1.02× the time without it. The last line is a one-line
summary with PASS/FAIL; the exit code is non-zero on a miss.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.02
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def encoded_examples(model_name: str, size: int):
    """The arithmetic task's training examples, encoded as gradience trains on them."""
    from gradience.config import TaskConfig
    from gradience.models.embedded import random_model
    from gradience.tasks import load_task
    from gradience.train.data import encode_examples

    if model_name != "embedded:tiny-mistral-random":
        raise SystemExit("this benchmark runs on embedded:tiny-mistral-random")
    task = TaskConfig(name="arithmetic", generated_train_size=size, max_seq_length=96)
    _, tokenizer = random_model()
    return encode_examples(tokenizer, task, load_task(task).train).features, tokenizer


def train_seconds(args, features, tokenizer, workdir: Path, with_callback: bool):
    """(seconds in trainer.train(), seconds the callback spent auditing, audits run)."""
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

    from gradience.integrations import RankAuditCallback
    from gradience.models.embedded import random_model
    from gradience.train.data import CompletionCollator, FeatureDataset

    model, _ = random_model()
    set_seed(42)
    model = get_peft_model(
        model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS)
    )
    training = TrainingArguments(
        output_dir=str(workdir),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-3,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=42,
        data_seed=42,
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=FeatureDataset(features),
        data_collator=CompletionCollator(pad_token_id=tokenizer.pad_token_id),
    )
    trainer.remove_callback(PrinterCallback)
    callback = RankAuditCallback().attach(trainer) if with_callback else None
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return seconds, (callback.seconds if callback else 0.0), (callback.audits if callback else 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded:tiny-mistral-random")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    import torch
    import transformers

    from gradience.integrations import DEFAULT_EVERY

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    features, tokenizer = encoded_examples(args.model, 400)
    times: dict[str, list[float]] = {"with": [], "without": []}
    audit_seconds, audits = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.repeats + 1):  # round 0 warms up
            order = ("with", "without") if round_index % 2 else ("without", "with")
            for arm in order:
                workdir = Path(tmp) / f"{arm}{round_index}"
                seconds, own, count = train_seconds(
                    args, features, tokenizer, workdir, arm == "with"
                )
                if round_index > 0:
                    times[arm].append(seconds)
                    if arm == "with":
                        audit_seconds.append(own / seconds)
                        audits = count
    ratio = statistics.median(w / o for w, o in zip(times["with"], times["without"], strict=True))
    step = {arm: 1000 * statistics.median(values) / args.steps for arm, values in times.items()}
    print(
        f"model {args.model}, {args.steps} steps x batch {args.batch_size}, LoRA r={args.rank} on "
        f"{len(TARGETS)} projections, {args.threads} thread(s); callback every {DEFAULT_EVERY} "
        f"steps ({audits} audits per run)"
    )
    for arm, values in times.items():
        runs = ", ".join(f"{1000 * v / args.steps:.1f}" for v in values)
        print(f"{arm:>8} callback: {step[arm]:7.1f} ms/step (runs: {runs})")
    print(f"the callback's own audits: {100 * statistics.median(audit_seconds):.2f}% of its runs")
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(
        f"callback_overhead: with RankAuditCallback (every {DEFAULT_EVERY} steps) "
        f"{step['with']:.1f} ms/step vs without {step['without']:.1f} ms/step, median paired "
        f"ratio {ratio:.3f}x (target <= {TARGET:g}x) {verdict}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
