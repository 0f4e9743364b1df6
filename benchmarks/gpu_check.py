"""A reduced mechanism run on a Mistral-shaped random model, with a GPU memory leak check.

Part of ``benchmarks/gpu_check.sh``. The model has Mistral-7B's width (hidden 4096, GQA
32/8 heads, MLP 14336) and ``--layers`` layers (default 4) of random bf16 weights, saved as an
ordinary ``save_pretrained`` folder with the embedded model's tokenizer, so it loads through
the flagship's own hub path (``from_pretrained`` of a local folder). One seed trains and
evaluates the probe (r=64, all 7 projections), is audited, then trains and evaluates
``per_layer``: every stage of the experiment, on the GPU, in a few minutes.

Measured around that run, in this process (the local executor runs jobs in-process):

* the pre-flight estimate of the largest job (:mod:`gradience.experiment.resources`) against
  ``torch.cuda.max_memory_allocated()``, to check the estimate on a real GPU;
* the leak check: ``torch.cuda.memory_allocated()`` before the run, right after it returns,
  and after ``gc.collect()`` + ``torch.cuda.empty_cache()``. Goal: after freeing, at most
  64 MiB above the start (every trained model was released); the figure right after return
  says whether the jobs free their models without a full collection.

On CPU (a small shape, float32) only the run itself is checked; the last line says so.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import lora_model

LEAK_GOAL_MIB = 64.0
MIB = 2**20


def save_random_model(folder: Path, shape: dict, dtype) -> Path:
    """A random Mistral of ``shape`` with the embedded tokenizer, as a save_pretrained folder."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from gradience.models.embedded import embedded_tokenizer

    tokenizer = embedded_tokenizer()
    config = MistralConfig(
        **{**shape, "vocab_size": len(tokenizer)},
        max_position_embeddings=1024,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def reduced_config(folder: Path, output: Path, gpu: bool, rank: int):
    from gradience.config import ExperimentConfig

    ranks = [r for r in (1, 2, 4, 8, 16, 32, 64) if r <= rank]
    return ExperimentConfig.model_validate(
        {
            "model": {"name": str(folder), "attn_implementation": "sdpa"},
            "task": {
                "name": "arithmetic",
                "generated_train_size": 512,
                "generated_eval_size": 64,
                "eval_samples": 64,
                "max_seq_length": 64,
                "max_new_tokens": 32,
                "eval_batch_size": 32,
            },
            "train": {
                "seeds": [42],
                "max_steps": 20 if gpu else 3,
                "per_device_train_batch_size": 8,
                "warmup_steps": 0,
                "logging_steps": 5,
                "save_steps": None,
                "gradient_checkpointing": False,
            },
            "lora": {"probe_r": rank, "lora_alpha": 32, "lora_dropout": 0.1},
            "compression": {"allowed_ranks": ranks, "variants": ["probe", "per_layer"]},
            "env": {
                "device": "cuda" if gpu else "cpu",
                "torch_dtype": "bfloat16" if gpu else "float32",
                "output_base_dir": str(output),
            },
        }
    )


def measure(args: argparse.Namespace) -> dict:
    import torch

    from gradience.experiment import run_mechanism_test
    from gradience.experiment.preflight import estimate, model_shape

    gpu = torch.cuda.is_available() and args.device != "cpu"
    shape = dict(lora_model.MISTRAL_7B if gpu else lora_model.CPU_SHAPE)
    shape["num_hidden_layers"] = args.layers or (4 if gpu else 2)
    rank = args.rank or (64 if gpu else 8)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_model(
            Path(tmp) / "model", shape, torch.bfloat16 if gpu else torch.float32
        )
        cfg = reduced_config(folder, Path(tmp) / "run", gpu, rank)
        memory, _ = estimate(cfg, model_shape(cfg))
        if gpu:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        started = time.perf_counter()
        run = run_mechanism_test(cfg)
        wall = time.perf_counter() - started
        result = {
            "device": torch.cuda.get_device_name() if gpu else "CPU",
            "layers": shape["num_hidden_layers"],
            "hidden_size": shape["hidden_size"],
            "lora_rank": rank,
            "wall_s": wall,
            "complete": run.complete,
            "jobs": {job: o.status for job, o in run.outcomes.items()},
            "failures": [o.message for o in run.failed],
            "estimate_largest_job_gib": memory.total / 2**30,
        }
        if gpu:
            after_return = torch.cuda.memory_allocated()
            del run
            gc.collect()
            torch.cuda.empty_cache()
            after_free = torch.cuda.memory_allocated()
            result.update(
                peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
                leak_after_return_mib=(after_return - before) / MIB,
                leak_after_free_mib=(after_free - before) / MIB,
                reserved_after_free_mib=torch.cuda.memory_reserved() / MIB,
            )
    return result


def summary(result: dict) -> tuple[str, int]:
    run = (
        f"reduced mechanism run (probe + per_layer, {result['layers']} layers of hidden "
        f"{result['hidden_size']}, r={result['lora_rank']}) "
        f"{'complete' if result['complete'] else 'FAILED: ' + '; '.join(map(str, result['failures']))}"
        f" in {result['wall_s']:.0f} s"
    )
    if "leak_after_free_mib" not in result:
        return (
            f"gpu_check (CPU, small shape, NOT a GPU figure): {run}; the leak check needs "
            f"CUDA and did not run: {'PASS' if result['complete'] else 'FAIL'}",
            0 if result["complete"] else 1,
        )
    ok = result["complete"] and result["leak_after_free_mib"] <= LEAK_GOAL_MIB
    return (
        f"gpu_check ({result['device']}): {run}; peak {result['peak_allocated_gib']:.1f} GiB "
        f"vs estimate {result['estimate_largest_job_gib']:.1f} GiB; leak +"
        f"{result['leak_after_return_mib']:.0f} MiB after return, +"
        f"{result['leak_after_free_mib']:.0f} MiB after gc.collect + empty_cache (goal <= "
        f"{LEAK_GOAL_MIB:.0f} MiB) {'PASS' if ok else 'FAIL'}",
        0 if ok else 1,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto")
    parser.add_argument("--layers", type=int, help="decoder layers (default 4 on GPU, 2 on CPU)")
    parser.add_argument("--rank", type=int, help="probe rank (default 64 on GPU, 8 on CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    result = measure(args)
    line, code = summary(result)
    result["summary"] = line
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    for job, status in result["jobs"].items():
        print(f"{job}: {status}")
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
