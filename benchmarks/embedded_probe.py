"""Probe accuracy of the embedded CPU default, measured with plain PEFT and a simple loop.

Independent of gradience.train / gradience.evaluate: LoRA r=16, alpha=32 on all 7
projections of the cached ``embedded:tiny-mistral`` model, trained on the ``arithmetic``
profile (batch 32, lr 3e-3, cosine), then greedy exact match on the eval items. Prints the
base model's and the probe's accuracy; the embedded default is fit for the mechanism test
when the probe lands well inside 10-90%.

    .venv/bin/python benchmarks/embedded_probe.py [--steps 150] [--seeds 42] [--eval 200]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from peft import LoraConfig, get_peft_model

from gradience.config import TaskConfig
from gradience.models.embedded import pretrained_model
from gradience.tasks import build_completion, build_prompt, encode_example, load_task
from gradience.tasks.gsm8k import answers_match

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(row["input_ids"]) for row in rows)

    def pad(key: str, value: int) -> torch.Tensor:
        return torch.tensor([row[key] + [value] * (width - len(row[key])) for row in rows])

    return {
        "input_ids": pad("input_ids", pad_id),
        "attention_mask": pad("attention_mask", 0),
        "labels": pad("labels", -100),
    }


def train_lora(model, rows, *, steps: int, batch: int, lr: float, seed: int):
    torch.manual_seed(seed)
    config = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=PROJECTIONS, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))
        ),
    )
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    peft_model.train()
    for step in range(steps):
        if len(order) < batch:
            order += torch.randperm(len(rows), generator=generator).tolist()
        picked, order = order[:batch], order[batch:]
        loss = peft_model(**collate([rows[i] for i in picked], pad_id=0)).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(peft_model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"  step {step:4d} loss {loss.item():.3f}", flush=True)
    peft_model.eval()
    return peft_model


@torch.no_grad()
def exact_match(
    model, tokenizer, prompts: list[str], golds: list[str], batch: int = 50, show_errors: int = 0
) -> float:
    tokenizer.padding_side = "left"
    correct = 0
    by_op: dict[str, list[int]] = {}
    for start in range(0, len(prompts), batch):
        encoded = tokenizer(prompts[start : start + batch], return_tensors="pt", padding=True)
        out = model.generate(
            **encoded,
            max_new_tokens=24,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row, gold in zip(
            out[:, encoded["input_ids"].shape[1] :], golds[start : start + batch], strict=True
        ):
            completion = tokenizer.decode(row, skip_special_tokens=True)
            hit = answers_match(completion, gold)
            correct += hit
            if not hit and show_errors > 0:
                show_errors -= 1
                print(f"  wrong: {completion!r} (gold {gold!r})")
            op = next(op for op in "+-*" if op in gold.split("=")[0])
            by_op.setdefault(op, []).append(hit)
    print(
        "  per operation:", {op: f"{sum(h) / len(h):.2f} (n={len(h)})" for op, h in by_op.items()}
    )
    return correct / len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[150])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--eval", type=int, default=200)
    parser.add_argument(
        "--show-errors", type=int, default=0, help="print this many wrong completions"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    task = TaskConfig(name="arithmetic", generated_eval_size=args.eval)
    data = load_task(task)
    model, tokenizer = pretrained_model()
    rows = [
        encode_example(tokenizer, build_prompt(task, e), build_completion(e), 256)
        for e in data.train
    ]
    prompts = [build_prompt(task, e) for e in data.eval]
    golds = [e.answer for e in data.eval]
    print(f"base model exact match: {exact_match(model, tokenizer, prompts, golds):.3f}")
    for steps in args.steps:
        for seed in args.seeds:
            model, tokenizer = pretrained_model()
            started = time.perf_counter()
            peft_model = train_lora(
                model, rows, steps=steps, batch=args.batch, lr=args.lr, seed=seed
            )
            train_s = time.perf_counter() - started
            accuracy = exact_match(
                peft_model, tokenizer, prompts, golds, show_errors=args.show_errors
            )
            print(
                f"steps {steps} seed {seed}: probe exact match {accuracy:.3f} on {len(prompts)} items "
                f"(train {train_s:.0f} s, {train_s / steps:.2f} s/step)"
            )


if __name__ == "__main__":
    main()
