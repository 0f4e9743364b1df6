"""Evaluation-style generation throughput: N prompts × T new tokens through gradience's
``generate_completions``, batched vs one-by-one, on a random model with the probe's LoRA.

The model is lora_model.py's (Mistral-7B-shaped on a GPU in bf16, its small shape in float32 on CPU)
with LoRA r=64 (16 on CPU) attached *unmerged*, as gradience evaluates the model it trained.
Its vocabulary is a WordLevel tokenizer of ~32,000 synthetic words (the model's vocabulary
size is matched to it), so prompts, padding, stop strings and decoding all go through the real
code path. Prompts have GSM8K-question-like lengths (mean ≈ 75 tokens); the evaluation's stop
rules are on (``\\nQuestion:`` and the end of a ``#### N`` line), which random text never
meets, so every row runs to T new tokens: the worst case, which a batch whose longest answer
is long also pays.

The same prompts' first ``--single`` items are generated one by one as the baseline, in the
same run, so the ratio is measured, not assumed; token-identical completions are not
required (bf16 batched and unbatched kernels round differently).

Goal on a GPU, derived from issue 10's one hour for the whole flagship (≈ 35 min of training
at 40% MFU, ≈ 5 of loads, the rest for evaluation): the flagship's 12 evaluations of 500
items plus 3 probe gates of 64 items, at up to 256 new tokens each, within 15 minutes:
(12·500 + 3·64)·256 / 900 s ≈ 1,760 new tokens/s. On CPU (a small shape, NOT a GPU figure)
that goal does not apply; the benchmark exits 0 when the comparison ran.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import string
import sys
import time
from pathlib import Path

import lora_model

FLAGSHIP_NEW_TOKENS = (12 * 500 + 3 * 64) * 256
EVAL_BUDGET_S = 15 * 60
TARGET_TOKENS_PER_S = FLAGSHIP_NEW_TOKENS / EVAL_BUDGET_S
PROMPT_MEAN, PROMPT_SD = 75.0, 25.0
STOP_STRINGS = ["\nQuestion:"]


def synthetic_tokenizer(vocab_size: int):
    """A gradience WordLevel tokenizer with about ``vocab_size`` entries of made-up words."""
    from gradience.models.vocabulary import build_tokenizer, build_vocabulary, wrap_tokenizer

    letters = string.ascii_lowercase
    words = []
    for length in itertools.count(2):
        for chars in itertools.product(letters, repeat=length):
            words.append("".join(chars))
            if 2 * len(words) + 40 >= vocab_size:  # each word with and without a leading space
                break
        else:
            continue
        break
    vocabulary = build_vocabulary(["Question: Answer: " + " ".join(words)])
    tokenizer = wrap_tokenizer(build_tokenizer(vocabulary))
    tokenizer.model_max_length = 4096
    return tokenizer, words


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


def timed_generation(model, tokenizer, items: list[str], batch_size: int, new_tokens: int, device):
    """(seconds, new tokens) for greedy completions of ``items`` as gradience evaluates."""
    import torch

    from gradience.evaluate.generate import generate_completions

    if device.type == "cuda":
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
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, sum(len(g.token_ids) for g in generations)


def measure(args: argparse.Namespace) -> dict:
    import torch

    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = dict(lora_model.MISTRAL_7B if cuda and not args.small else lora_model.CPU_SHAPE)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    tokenizer, words = synthetic_tokenizer(shape["vocab_size"])
    shape["vocab_size"] = len(tokenizer)
    rank = args.rank or (64 if cuda else 16)
    setup = lora_model.build(shape, rank, device, dtype, "sdpa")
    model = setup.model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    items = prompts(args.prompts, words)
    timed_generation(model, tokenizer, items[: args.batch_size], args.batch_size, 4, device)
    single_s, single_tokens = timed_generation(
        model, tokenizer, items[: args.single], 1, args.new_tokens, device
    )
    batched_s, batched_tokens = timed_generation(
        model, tokenizer, items, args.batch_size, args.new_tokens, device
    )
    return {
        "device": torch.cuda.get_device_name() if cuda else "CPU",
        "dtype": str(dtype).removeprefix("torch."),
        "shape": shape,
        "lora_rank": rank,
        "prompts": args.prompts,
        "new_tokens": args.new_tokens,
        "batch_size": args.batch_size,
        "batched_s": batched_s,
        "batched_tokens": batched_tokens,
        "batched_tokens_per_s": batched_tokens / batched_s,
        "single_prompts": args.single,
        "single_s": single_s,
        "single_tokens_per_s": single_tokens / single_s,
        "ratio": (batched_tokens / batched_s) / (single_tokens / single_s),
    }


def summary(result: dict) -> tuple[str, int]:
    compare = (
        f"{result['prompts']} prompts x {result['new_tokens']} new tokens at batch "
        f"{result['batch_size']}: {result['batched_tokens_per_s']:,.0f} tok/s in "
        f"{result['batched_s']:.1f} s, {result['ratio']:.1f}x one-by-one "
        f"({result['single_tokens_per_s']:,.0f} tok/s)"
    )
    if result["device"] == "CPU":
        return (
            f"generation (CPU, small shape, NOT a GPU figure): {compare}; the goal (>= "
            f"{TARGET_TOKENS_PER_S:,.0f} tok/s on a GPU) does not apply on CPU: comparison ran, PASS",
            0,
        )
    ok = result["batched_tokens_per_s"] >= TARGET_TOKENS_PER_S
    return (
        f"generation ({result['device']}, bf16, LoRA unmerged): {compare}; goal >= "
        f"{TARGET_TOKENS_PER_S:,.0f} tok/s (flagship evaluation in 15 min) "
        f"{'PASS' if ok else 'FAIL'}",
        0 if ok else 1,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto")
    parser.add_argument("--small", action="store_true", help="the CPU shape even on a GPU")
    parser.add_argument("--layers", type=int, help="override the number of layers")
    parser.add_argument("--rank", type=int, help="LoRA rank (default 64 on GPU, 16 on CPU)")
    parser.add_argument("--prompts", type=int, help="default 512 on GPU, 64 on CPU")
    parser.add_argument("--new-tokens", type=int, help="default 256 on GPU, 32 on CPU")
    parser.add_argument("--batch-size", type=int, default=32, help="the flagship's eval_batch_size")
    parser.add_argument("--single", type=int, default=4, help="prompts for the one-by-one baseline")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    gpu = torch.cuda.is_available() and args.device != "cpu"
    args.prompts = args.prompts or (512 if gpu else 64)
    args.new_tokens = args.new_tokens or (256 if gpu else 32)
    result = measure(args)
    line, code = summary(result)
    result["summary"] = line
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    shape = result["shape"]
    print(
        f"{result['device']} {result['dtype']}, layers {shape['num_hidden_layers']} x hidden "
        f"{shape['hidden_size']}, vocab {shape['vocab_size']}, LoRA r={result['lora_rank']} unmerged"
    )
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
