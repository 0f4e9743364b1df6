"""Batched vs one-by-one greedy generation on the embedded model (what ``gradience eval`` does).

Settings default to those ``make demo`` evaluates with (``experiments/configs/cpu_demo.yaml``:
the embedded model, 200 arithmetic items, ``max_new_tokens`` 16, ``eval_batch_size`` 100),
on one CPU thread.
Both modes run the same prompts through the same code (:func:`generate_completions`); only
the batch size differs (``--batch-size`` vs 1), and the two must give token-identical
completions, which is checked. Timings alternate between the modes (``--repeats`` rounds)
so that a busy machine slows both alike; the medians give each mode's tokens/s.

Target: batched throughput ≥ 5× one-by-one on CPU. The last line is a one-line summary
with PASS/FAIL.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

TARGET = 5.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="embedded:tiny-mistral", help="model name (embedded or hub/local)"
    )
    parser.add_argument("--items", type=int, default=200, help="eval items")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: on a busy machine more threads slow one-by-one decoding far more than batches, inflating the ratio)",
    )
    args = parser.parse_args()

    import torch

    from gradience.config import ExperimentConfig
    from gradience.evaluate.generate import generate_completions
    from gradience.models import load_model_and_tokenizer
    from gradience.tasks import build_prompt, load_task

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ExperimentConfig.model_validate(
        {
            "model": {"name": args.model},
            "task": {
                "name": "arithmetic",
                "eval_samples": args.items,
                "generated_eval_size": max(args.items, 200),
            },
            "lora": {"probe_r": 16},
            "compression": {"allowed_ranks": [16]},
            "env": {"device": "cpu", "torch_dtype": "float32"},
        }
    )
    model, tokenizer = load_model_and_tokenizer(cfg)
    model.eval()
    prompts = [build_prompt(cfg.task, example) for example in load_task(cfg.task).eval]

    def run(batch_size: int) -> tuple[float, list]:
        started = time.perf_counter()
        out = generate_completions(
            model,
            tokenizer,
            prompts,
            batch_size=batch_size,
            max_new_tokens=args.max_new_tokens,
            stop_strings=cfg.task.stop_strings,
        )
        return time.perf_counter() - started, out

    run(args.batch_size)  # warm-up (first-call allocations, lazy init)
    times: dict[int, list[float]] = {args.batch_size: [], 1: []}
    outputs = {}
    for _ in range(args.repeats):
        for batch_size in (args.batch_size, 1):
            seconds, outputs[batch_size] = run(batch_size)
            times[batch_size].append(seconds)
    identical = [g.token_ids for g in outputs[args.batch_size]] == [g.token_ids for g in outputs[1]]
    tokens = sum(len(g.token_ids) for g in outputs[1])
    rate = {bs: tokens / statistics.median(t) for bs, t in times.items()}
    ratio = rate[args.batch_size] / rate[1]
    print(
        f"model {args.model}, {len(prompts)} prompts, {tokens} generated tokens, {torch.get_num_threads()} thread(s)"
    )
    for bs, t in times.items():
        print(
            f"batch size {bs:>3}: {rate[bs]:9.1f} tokens/s (runs: {', '.join(f'{x:.2f}s' for x in t)})"
        )
    print(f"batched and one-by-one completions token-identical: {identical}")
    verdict = "PASS" if ratio >= TARGET and identical else "FAIL"
    print(
        f"eval_speed: batched (bs={args.batch_size}) {rate[args.batch_size]:.0f} tok/s vs one-by-one "
        f"{rate[1]:.0f} tok/s = {ratio:.1f}x (target >= {TARGET:g}x, identical={identical}) {verdict}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
