"""A reduced mechanism run on a Mistral-shaped random model, with a GPU memory leak check.

Step ``mechanism`` of ``benchmarks/gpu_check.sh``. The model has Mistral-7B's width (hidden
4096, GQA 32/8 heads, MLP 14336) and ``--layers`` layers (default 4) of random bf16 weights,
saved as an ordinary ``save_pretrained`` folder with the embedded model's tokenizer, so it
loads through the flagship's own hub path (``from_pretrained`` of a local folder). One seed
trains and evaluates the probe (r=64, all 7 projections, ``eval_batch_size: auto`` as the
flagship), is audited, then trains and evaluates ``per_layer``: every stage of the
experiment, on the GPU, in under a minute.

Measured around that run, in this process (the local executor runs jobs in-process):

* the pre-flight estimate of the largest job (:mod:`gradience.experiment.resources`, less its
  1 GiB CUDA reserve, which the allocator does not see) against
  ``torch.cuda.max_memory_allocated()``. The estimate is for a batch of the longest possible
  examples and this task's are shorter, so it is an upper bound here: the goal is a peak of
  at most 1.2x the estimate (``mfu.py`` judges the estimate both ways, at the batch's tokens);
* the leak check: ``torch.cuda.memory_allocated()`` before the run, right after it returns,
  and after ``gc.collect()`` + ``torch.cuda.empty_cache()``. Goal: after freeing, at most
  64 MiB above the start (every trained model was released); the figure right after return
  says whether the jobs free their models without a full collection.

On CPU (``--device cpu``: a small shape, float32) only the run itself is checked; the memory
keys are written as None.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import lora_model
from step_io import StepOutput, run_step

LEAK_GOAL_MIB = 64.0
#: The estimate is for the longest possible batch: an upper bound the peak may not pass by more.
PEAK_OVER_ESTIMATE = 1.2
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


def reduced_config(
    folder: Path, output: Path, gpu: bool, rank: int, eval_items: int = 64, new_tokens: int = 32
):
    """One seed, probe + per_layer, on the offline arithmetic task, ``eval_batch_size: auto``."""
    from gradience.config import ExperimentConfig

    ranks = [r for r in (1, 2, 4, 8, 16, 32, 64) if r <= rank]
    return ExperimentConfig.model_validate(
        {
            "model": {"name": str(folder), "attn_implementation": "sdpa"},
            "task": {
                "name": "arithmetic",
                "generated_train_size": 512,
                "generated_eval_size": max(64, eval_items),
                "eval_samples": eval_items,
                "max_seq_length": 64,
                "max_new_tokens": new_tokens,
                "eval_batch_size": "auto",
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


def measure(args: argparse.Namespace, out: StepOutput) -> tuple[str, str | None]:
    import torch

    from gradience.experiment import run_mechanism_test
    from gradience.experiment.preflight import estimate, model_shape

    gpu = torch.cuda.is_available() and args.device != "cpu"
    shape = dict(lora_model.MISTRAL_7B if gpu else lora_model.CPU_SHAPE)
    shape["num_hidden_layers"] = args.layers or (4 if gpu else 2)
    rank = args.rank or (64 if gpu else 8)
    out.update(
        device=torch.cuda.get_device_name() if gpu else "CPU",
        layers=shape["num_hidden_layers"],
        hidden_size=shape["hidden_size"],
        lora_rank=rank,
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_model(
            Path(tmp) / "model", shape, torch.bfloat16 if gpu else torch.float32
        )
        cfg = reduced_config(folder, Path(tmp) / "run", gpu, rank, args.eval_items, args.new_tokens)
        memory, _ = estimate(cfg, model_shape(cfg))
        if gpu:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        started = time.perf_counter()
        run = run_mechanism_test(cfg)
        out.update(
            run_s=time.perf_counter() - started,
            complete=run.complete,
            jobs={job: o.status for job, o in run.outcomes.items()},
            failures=[str(o.message) for o in run.failed],
            estimate_largest_job_gib=(memory.total - memory.reserve) / 2**30,
            peak_allocated_gib=None,
            estimate_ratio=None,
            leak_after_return_mib=None,
            leak_after_free_mib=None,
            reserved_after_free_mib=None,
        )
        if gpu:
            after_return = torch.cuda.memory_allocated()
            del run
            gc.collect()
            torch.cuda.empty_cache()
            after_free = torch.cuda.memory_allocated()
            peak = torch.cuda.max_memory_allocated() / 2**30
            out.update(
                peak_allocated_gib=peak,
                estimate_ratio=peak / out.data["estimate_largest_job_gib"],
                leak_after_return_mib=(after_return - before) / MIB,
                leak_after_free_mib=(after_free - before) / MIB,
                reserved_after_free_mib=torch.cuda.memory_reserved() / MIB,
            )
    return judge(out.data)


def judge(r: dict) -> tuple[str, str | None]:
    """(status, reason); the summary line goes into ``r``."""
    run = (
        f"reduced mechanism run (probe + per_layer, {r['layers']} layers of hidden "
        f"{r['hidden_size']}, r={r['lora_rank']}) "
        f"{'complete' if r['complete'] else 'FAILED: ' + '; '.join(r['failures'])}"
        f" in {r['run_s']:.0f} s"
    )
    problems = [] if r["complete"] else ["the run did not complete: " + "; ".join(r["failures"])]
    if r["leak_after_free_mib"] is None:
        r["summary"] = (
            f"mechanism (CPU, small shape, NOT a GPU figure): {run}; the leak and memory "
            "checks need CUDA"
        )
        return ("failed", problems[0]) if problems else ("ok", None)
    if r["leak_after_free_mib"] > LEAK_GOAL_MIB:
        problems.append(f"{r['leak_after_free_mib']:.0f} MiB leaked > {LEAK_GOAL_MIB:.0f} MiB")
    if r["estimate_ratio"] > PEAK_OVER_ESTIMATE:
        problems.append(
            f"peak {r['peak_allocated_gib']:.2f} GiB > {PEAK_OVER_ESTIMATE}x the estimate "
            f"{r['estimate_largest_job_gib']:.2f} GiB"
        )
    r["summary"] = (
        f"mechanism ({r['device']}): {run}; peak {r['peak_allocated_gib']:.2f} GiB vs estimate "
        f"{r['estimate_largest_job_gib']:.2f} GiB ({r['estimate_ratio']:.2f}x, goal <= "
        f"{PEAK_OVER_ESTIMATE}x); leak +{r['leak_after_return_mib']:.0f} MiB after return, "
        f"+{r['leak_after_free_mib']:.0f} MiB after gc.collect + empty_cache (goal <= "
        f"{LEAK_GOAL_MIB:.0f} MiB)"
    )
    return ("failed", "; ".join(problems)) if problems else ("ok", None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto")
    parser.add_argument("--layers", type=int, help="decoder layers (default 4 on GPU, 2 on CPU)")
    parser.add_argument("--rank", type=int, help="probe rank (default 64 on GPU, 8 on CPU)")
    parser.add_argument("--eval-items", type=int, default=64, help="evaluation items per job")
    parser.add_argument("--new-tokens", type=int, default=32, help="task.max_new_tokens")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the numbers here (always, as it goes)")
    args = parser.parse_args()
    out = StepOutput(args.json, "mechanism")

    def body(out: StepOutput) -> tuple[str, str | None]:
        import torch
        import transformers

        torch.set_num_threads(args.threads)
        transformers.logging.set_verbosity_error()
        return measure(args, out)

    code = run_step(out, body)
    for job, status in (out.data.get("jobs") or {}).items():
        print(f"{job}: {status}")
    print(out.data.get("summary") or f"mechanism: {out.data['status']}: {out.data['reason']}")
    return code


if __name__ == "__main__":
    sys.exit(main())
