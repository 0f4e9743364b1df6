"""Decoding throughput of the flagship's evaluation, at the batch sizes it would use.

Through gradience's own ``generate_completions`` (greedy, left padding, the evaluation's stop
rules: ``\\nQuestion:`` and the end of a ``#### N`` line), on lora_model.py's model with LoRA
r=64 attached *unmerged*, as gradience evaluates the model it trained. On a GPU the model is
Mistral-7B-shaped with **all 32 layers** in bf16: a decoding step's time is mostly per-layer
kernel launches and weight reads, which fewer layers would not scale simply. Its vocabulary
is a WordLevel tokenizer of ~32,000 made-up words (:mod:`synthetic`). Prompts have
GSM8K-question-like lengths (mean ≈ 75 tokens). A random model never meets a stop rule, so
every row decodes all ``--new-tokens``: the worst case, which a batch with one long answer
also pays.

Measured, most important first (so that the time box drops the least important):

1. one batch at the size ``task.eval_batch_size: auto`` chooses for the flagship's 500 items
   (:func:`gradience.evaluate.batch_size.choose_eval_batch_size` on this model, on this GPU's
   free memory: the flagship's own decision);
2. one batch each at 32 (the size the flagship used to pin) and 128: with 1., the curve of
   time per decoding step against batch size that ``experiment_cost.py`` interpolates;
3. one prompt alone: the baseline of the batched/one-by-one ratio.

**Time box**: ``--budget-s``; a measurement is not started when the time so far plus twice
the longest measurement yet would pass it (recorded in ``skipped_batches``). The JSON is
rewritten after every measurement, so a step cut short keeps what it measured.

Goal on a GPU: at the auto batch, ≥ (12·500 + 3·64)·256 / 900 s ≈ 1,761 new tokens/s, i.e.
the flagship's 12 evaluations of 500 items and 3 probe gates of 64, at up to 256 new tokens,
within 15 minutes. On CPU (``--device cpu``, a small shape, NOT a GPU figure) the same keys
are written and the goal does not apply.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import lora_model
import synthetic
from step_io import StepOutput, run_step

FLAGSHIP_NEW_TOKENS = (12 * 500 + 3 * 64) * 256
EVAL_BUDGET_S = 15 * 60
TARGET_TOKENS_PER_S = FLAGSHIP_NEW_TOKENS / EVAL_BUDGET_S
FLAGSHIP_EVAL_ITEMS = 500
PROMPT_MEAN, PROMPT_SD = 75.0, 25.0
STOP_STRINGS = ["\nQuestion:"]
#: The time box counts from here: the imports are part of the step's time.
STARTED = time.perf_counter()


def prompts(n: int, words: list[str], seed: int = 0) -> list[str]:
    """``n`` GSM8K-question-length prompts of random words, in the task's template."""
    sigma2 = math.log(1 + (PROMPT_SD / PROMPT_MEAN) ** 2)
    mu = math.log(PROMPT_MEAN) - sigma2 / 2
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = max(8, round(rng.lognormvariate(mu, math.sqrt(sigma2))))
        out.append("Question: " + " ".join(rng.choice(words) for _ in range(length)) + "\nAnswer:")
    return out


def timed_generation(model, tokenizer, items: list[str], batch_size: int, new_tokens: int, cuda):
    """(seconds, new tokens) for greedy completions of ``items`` as gradience evaluates."""
    import torch

    from gradience.evaluate.generate import generate_completions

    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    generations = generate_completions(
        model,
        tokenizer,
        items,
        batch_size=batch_size,
        max_new_tokens=new_tokens,
        stop_strings=STOP_STRINGS,
        stop_at_answer=True,
    )
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started, sum(len(g.token_ids) for g in generations)


def auto_batch(
    model, tokenizer, items: list[str], new_tokens: int
) -> tuple[int, str, float | None]:
    """(size, source, free GiB) that ``eval_batch_size: auto`` picks for ``items`` here."""
    import torch

    from gradience.evaluate.batch_size import choose_eval_batch_size
    from gradience.evaluate.generate import prompt_token_ids

    lengths = [len(prompt_token_ids(tokenizer, p)) for p in items]
    chosen = choose_eval_batch_size("auto", model, lengths, new_tokens)
    cuda = next(model.parameters()).device.type == "cuda"
    free = torch.cuda.mem_get_info()[0] / 2**30 if cuda else None
    return chosen.size, chosen.source, free


def measure(args: argparse.Namespace, out: StepOutput) -> tuple[str, str | None]:
    import torch

    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = dict(lora_model.MISTRAL_7B if cuda else lora_model.CPU_SHAPE)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    tokenizer, words = synthetic.synthetic_tokenizer(shape["vocab_size"])
    shape["vocab_size"] = len(tokenizer)
    rank = args.rank or (64 if cuda else 16)
    setup = lora_model.build(shape, rank, device, dtype, "sdpa")
    model = setup.model.eval()
    model.config.use_cache = True
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    items = prompts(FLAGSHIP_EVAL_ITEMS, words)
    auto, source, free_gib = auto_batch(model, tokenizer, items, args.new_tokens)
    out.update(
        device=torch.cuda.get_device_name() if cuda else "CPU",
        dtype=str(dtype).removeprefix("torch."),
        shape=shape,
        lora_rank=rank,
        new_tokens=args.new_tokens,
        auto_batch_size=auto,
        auto_source=source,
        free_memory_gib=free_gib,
        measurements=[],
        skipped_batches=[],
        single_tokens_per_s=None,
        auto_tokens_per_s=None,
        ratio=None,
        target_tokens_per_s=TARGET_TOKENS_PER_S,
        budget_s=args.budget_s,
    )
    timed_generation(model, tokenizer, items[:4], 4, 4, cuda)  # warm-up: kernels, allocator
    plan = [auto] + [b for b in args.batch_sizes if b != auto] + [1]
    longest = 0.0
    for batch in plan:
        elapsed = time.perf_counter() - STARTED
        if longest and elapsed + 2 * longest > args.budget_s:
            out.data["skipped_batches"].append(batch)
            out.update(skipped_batches=out.data["skipped_batches"])
            continue
        seconds, tokens = timed_generation(
            model, tokenizer, items[:batch], batch, args.new_tokens, cuda
        )
        longest = max(longest, seconds)
        row = {
            "batch_size": batch,
            "prompts": batch,
            "seconds": seconds,
            "new_tokens": tokens,
            "tokens_per_s": tokens / seconds,
            "step_s": seconds / args.new_tokens,  # per decoding step, prefill included
        }
        out.data["measurements"].append(row)
        if batch == auto:
            out.data["auto_tokens_per_s"] = row["tokens_per_s"]
        if batch == 1:
            out.data["single_tokens_per_s"] = row["tokens_per_s"]
        out.update()
    r = out.data
    if r["auto_tokens_per_s"] and r["single_tokens_per_s"]:
        r["ratio"] = r["auto_tokens_per_s"] / r["single_tokens_per_s"]
    return judge(r, cuda)


def judge(r: dict, cuda: bool) -> tuple[str, str | None]:
    rows = ", ".join(
        f"batch {m['batch_size']}: {m['tokens_per_s']:,.0f} tok/s ({1000 * m['step_s']:.1f} ms/step)"
        for m in r["measurements"]
    )
    what = (
        f"{r['new_tokens']} new tokens, auto batch {r['auto_batch_size']} ({r['auto_source']}); "
        f"{rows}" + (f"; skipped for time: {r['skipped_batches']}" if r["skipped_batches"] else "")
    )
    if not cuda:
        r["summary"] = f"generation (CPU, small shape, NOT a GPU figure): {what}"
        return "ok", None
    ok = r["auto_tokens_per_s"] is not None and r["auto_tokens_per_s"] >= TARGET_TOKENS_PER_S
    r["summary"] = (
        f"generation ({r['device']}, bf16, LoRA unmerged): {what}; goal at the auto batch >= "
        f"{TARGET_TOKENS_PER_S:,.0f} tok/s {'PASS' if ok else 'FAIL'}"
    )
    if ok:
        return "ok", None
    if r["auto_tokens_per_s"] is None:
        return "failed", "the auto batch was not measured"
    return (
        "failed",
        f"{r['auto_tokens_per_s']:,.0f} tok/s at the auto batch < {TARGET_TOKENS_PER_S:,.0f}",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto")
    parser.add_argument("--layers", type=int, help="override the number of layers (default all)")
    parser.add_argument("--rank", type=int, help="LoRA rank (default 64 on GPU, 16 on CPU)")
    parser.add_argument("--new-tokens", type=int, help="default 256 on GPU, 16 on CPU")
    parser.add_argument(
        "--batch-sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        help="measured besides auto and 1 (default 32,128 on GPU, 4 on CPU)",
    )
    parser.add_argument("--budget-s", type=float, default=80.0, help="time box, seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the numbers here (always, as it goes)")
    args = parser.parse_args()
    out = StepOutput(args.json, "generation")

    def body(out: StepOutput) -> tuple[str, str | None]:
        import torch
        import transformers

        torch.set_num_threads(args.threads)
        transformers.logging.set_verbosity_error()
        gpu = torch.cuda.is_available() and args.device != "cpu"
        args.new_tokens = args.new_tokens or (256 if gpu else 16)
        args.batch_sizes = args.batch_sizes or ([32, 128] if gpu else [4])
        return measure(args, out)

    code = run_step(out, body)
    print(out.data.get("summary") or f"generation: {out.data['status']}: {out.data['reason']}")
    return code


if __name__ == "__main__":
    sys.exit(main())
