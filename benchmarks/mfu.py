"""Model-FLOPs utilisation of the flagship's training step, through gradience's own Trainer path.

What runs: :func:`gradience.train.run.train_variant`, the function every mechanism-test job
calls, on the flagship config (``experiments/mechanism_test_config.yaml``: LoRA r=64 on all 7
projections with its alpha policy and dropout 0.1, batch 8, ``max_seq_length`` 512, bf16,
its optimizer, its collator, gradient checkpointing off as the flagship sets it), with three
things replaced so that it runs offline in seconds:

* the model: a Mistral-7B-shaped random model (hidden 4096, GQA 32/8 heads, MLP 14336,
  vocabulary ~32,000) built on the GPU by ``train_variant``'s ``model_loader``. **16 of its
  32 layers** by default (``--layers``), to fit the check's time: every layer does the
  flagship's work, and the costs that do not grow with depth (the Trainer's bookkeeping,
  the loss over ~32,000 logits a token) are spread over half the work, so the MFU is, if
  anything, a little below the full model's;
* the data: GSM8K-like items (:mod:`synthetic`: a made-up word per token, lengths from a
  log-normal with GSM8K's mean ≈ 190 and sd ≈ 65 tokens);
* the step count: ``--warmup`` steps (kernels, allocator), then ``--steps`` timed ones.

**Timing**: a TrainerCallback synchronises the GPU at the end of the last warm-up step and of
the last step; step time = elapsed / timed steps. The timed steps' tokens are read from the
collator's own calls (a wrapper counts each batch's examples and their lengths).

**FLOPs** (PaLM's model FLOPs; padding and recomputation are not useful work), per timed
step over its examples of n_j real tokens, T = Σ n_j::

    FLOPs = 4·N·T + 6·N_lora·T + Σ_j 6·L·h·n_j²

* 4·N·T, not 6·N·T: N (the base weights that take part in a matmul: every parameter but the
  input embedding, a lookup) is frozen, so backward computes only the activations' gradient
  through it (2NT) on top of the forward (2NT), and no weight gradient (the other 2NT of a
  full fine-tune);
* 6·N_lora·T: the adapters are trained: forward, activation and weight gradients;
* attention: QKᵀ and AV over the causal half of each example, 2·L·h·n² forward, three times
  that with backward. N and N_lora are counted from the model as built and checked against
  :func:`lora_model.model_counts`.

**Peak**: bf16 dense tensor-core TFLOP/s by GPU name (NVIDIA data sheets, no sparsity), or
``--peak-tflops``. MFU = FLOPs / step time / peak. Goal: ≥ 35%.

**Memory**: ``torch.cuda.max_memory_allocated()`` over the whole ``train_variant`` call,
judged against the pre-flight estimate (:func:`gradience.experiment.preflight.estimate`,
the model's shape read from its ``config.json`` as for a hub model) evaluated at the largest
batch's tokens, padding included (the estimate's own worst case, batch × ``max_seq_length``, is recorded
too), less its 1 GiB CUDA reserve, which the allocator does not see. Goal: within ±20%.

On CPU (``--device cpu``, what ``GPU_CHECK_SMOKE=1`` runs) the same path runs on a small
shape in float32: every key of the JSON is written, the MFU and memory goals do not apply
(None), and the figures are NOT GPU figures. ``--attn flash_attention_2`` is ``skipped`` where
flash-attn is not installed or there is no CUDA.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lora_model
import synthetic
from step_io import StepOutput, run_step

TARGET_MFU = 0.35
MEMORY_TOLERANCE = 0.20
GPU_LAYERS = 16
FLAGSHIP_CONFIG = Path(__file__).parents[1] / "experiments" / "mechanism_test_config.yaml"
FLOP_FORMULA = (
    "4*N*T + 6*N_lora*T + sum_j 6*L*h*n_j^2 per step (frozen base: forward 2NT + activation "
    "gradient 2NT, no weight gradient; LoRA: 6 N_lora T; causal attention fwd+bwd); real "
    "tokens only"
)
#: bf16 dense TFLOP/s by GPU name, most specific first (NVIDIA data sheets, no sparsity).
PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 125.0),
)


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override is not None:
        return override
    return next((peak for key, peak in PEAK_TFLOPS if key in device_name), None)


def check_config(folder: Path, args: argparse.Namespace, gpu: bool) -> Any:
    """The flagship config with the random model, this check's step count and device."""
    from gradience.config import ExperimentConfig, load_config

    data = load_config(args.config).model_dump()
    rank = args.rank or (data["lora"]["probe_r"] if gpu else 16)
    data["model"].update(name=str(folder), attn_implementation=args.attn)
    data["train"].update(
        seeds=[0],
        max_steps=args.warmup + args.steps,
        warmup_steps=0,
        save_steps=None,
        eval_steps=None,
        report_to=["none"],
    )
    if args.batch_size:
        data["train"]["per_device_train_batch_size"] = args.batch_size
    data["lora"]["probe_r"] = rank
    data["compression"]["allowed_ranks"] = [r for r in (1, 2, 4, 8, 16, 32, 64) if r <= rank]
    data["env"].update(
        device="cuda" if gpu else "cpu",
        torch_dtype=data["env"]["torch_dtype"] if gpu else "float32",
        num_threads=None if gpu else args.threads,
    )
    return ExperimentConfig.model_validate(data)


class BatchLog:
    """Wraps the Trainer's collator: per call, the examples' lengths and the batch's tokens
    (padding included). Call i is the batch of optimizer step i + 1 (one micro-batch a step)."""

    def __init__(self, collator: Any):
        self.collator = collator
        self.lengths: list[list[int]] = []
        self.input_tokens: list[int] = []

    def __call__(self, features: Any) -> Any:
        batch = self.collator(features)
        self.lengths.append([len(f["input_ids"]) for f in features])
        self.input_tokens.append(int(batch["input_ids"].numel()))
        return batch


def step_clock(warmup: int, cuda: bool) -> Any:
    """A TrainerCallback timing the steps after ``warmup`` (GPU synchronised at both ends)."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: dict[int, float] = {}

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step in (warmup, state.max_steps):
                if cuda:
                    torch.cuda.synchronize()
                self.marks[state.global_step] = time.perf_counter()

    return StepClock()


def memory_estimate_gib(cfg: Any, tokens: int) -> tuple[float, float]:
    """The pre-flight estimate (without the CUDA reserve) at ``tokens`` in one row, and at the
    config's own batch × max_seq_length, in GiB."""
    from gradience.config import ExperimentConfig
    from gradience.experiment.preflight import estimate, model_shape

    shape = model_shape(cfg)
    worst, _ = estimate(cfg, shape)
    data = cfg.model_dump()
    data["train"]["per_device_train_batch_size"] = 1
    data["task"]["max_seq_length"] = tokens
    at_tokens, _ = estimate(ExperimentConfig.model_validate(data), shape)
    return (at_tokens.total - at_tokens.reserve) / 2**30, (worst.total - worst.reserve) / 2**30


def measure(args: argparse.Namespace, out: StepOutput) -> tuple[str, str | None]:
    import torch

    from gradience.train.run import train_variant

    gpu = args.device != "cpu" and torch.cuda.is_available()
    if args.attn == "flash_attention_2" and not gpu:
        return "skipped", "flash_attention_2 needs CUDA (none here)"
    shape = dict(lora_model.MISTRAL_7B if gpu else lora_model.CPU_SHAPE)
    shape["num_hidden_layers"] = args.layers or (GPU_LAYERS if gpu else 2)
    tokenizer, words = synthetic.synthetic_tokenizer(shape["vocab_size"])
    shape["vocab_size"] = len(tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        folder = synthetic.model_folder(Path(tmp) / "model", shape, tokenizer)
        cfg = check_config(folder, args, gpu)
        if cfg.train.gradient_accumulation_steps != 1:
            raise ValueError(
                "the step clock counts one batch a step: gradient_accumulation_steps 1"
            )
        steps = cfg.train.max_steps
        batch = cfg.train.per_device_train_batch_size
        task = synthetic.gsm8k_like_task(words, steps * batch, cfg.task.max_seq_length)
        clock, log, counted = step_clock(args.warmup, gpu), [], {}

        def hook(trainer: Any) -> None:
            log.append(BatchLog(trainer.data_collator))
            trainer.data_collator = log[0]
            trainer.add_callback(clock)
            params = list(trainer.model.parameters())
            embedding = trainer.model.get_input_embeddings().weight.numel()
            counted["n_lora"] = sum(p.numel() for p in params if p.requires_grad)
            counted["n_matmul"] = sum(p.numel() for p in params if not p.requires_grad) - embedding

        out.update(device=torch.cuda.get_device_name() if gpu else "CPU", shape=shape)
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = train_variant(
            cfg,
            None,
            0,
            Path(tmp) / "job",
            task_data=task,
            model_loader=synthetic.random_loader(folder, tokenizer),
            progress=lambda _: None,  # as the mechanism test's jobs: no tqdm bar, no printer
            trainer_hook=hook,
        )
        train_wall = time.perf_counter() - started
        peak_gib = torch.cuda.max_memory_allocated() / 2**30 if gpu else None
        batches = log[0]
        if len(batches.lengths) < steps or set(clock.marks) != {args.warmup, steps}:
            raise RuntimeError(
                f"expected {steps} batches and both clock marks, got {len(batches.lengths)} "
                f"batches and marks at steps {sorted(clock.marks)}"
            )
        n_matmul, n_lora = lora_model.model_counts(shape, cfg.lora.probe_r)
        if (n_matmul, n_lora) != (counted["n_matmul"], counted["n_lora"]):
            raise RuntimeError(
                f"parameter counts of the built model {counted} differ from the shape's "
                f"({n_matmul}, {n_lora}): the FLOP count would be wrong"
            )
        timed = range(args.warmup, steps)
        lengths = [n for i in timed for n in batches.lengths[i]]
        flops = lora_model.flops_per_step(
            n_matmul, n_lora, shape["num_hidden_layers"], shape["hidden_size"], lengths
        )
        step_s = (clock.marks[steps] - clock.marks[args.warmup]) / len(timed)
        peak = peak_tflops(out.data["device"], args.peak_tflops) if gpu else None
        largest = max(batches.input_tokens)
        estimate_gib, worst_gib = memory_estimate_gib(cfg, largest)
        out.update(
            dtype=str(cfg.env.torch_dtype),
            attention=cfg.model.attn_implementation,
            layers=shape["num_hidden_layers"],
            lora_rank=cfg.lora.probe_r,
            optim=cfg.train.optim,
            batch_size=batch,
            warmup_steps=args.warmup,
            timed_steps=len(timed),
            padding_free=result.padding_free,
            real_tokens_per_step=sum(lengths) / len(timed),
            input_tokens_per_step=statistics.mean(batches.input_tokens[i] for i in timed),
            flop_formula=FLOP_FORMULA,
            n_matmul_params=n_matmul,
            n_lora_params=n_lora,
            model_tflop_per_step=flops / len(timed) / 1e12,
            step_s=step_s,
            tokens_per_s=sum(lengths) / len(timed) / step_s,
            achieved_tflops=flops / len(timed) / step_s / 1e12,
            peak_tflops=peak,
            mfu=flops / len(timed) / step_s / (peak * 1e12) if peak else None,
            mfu_goal=TARGET_MFU,
            peak_memory_gib=peak_gib,
            estimate_gib=estimate_gib,
            estimate_tokens=largest,
            estimate_worst_case_gib=worst_gib,
            estimate_ratio=peak_gib / estimate_gib if peak_gib is not None else None,
            memory_tolerance=MEMORY_TOLERANCE,
            train_wall_s=train_wall,
            loss_first=result.loss_first,
            loss_last=result.loss_last,
        )
    return judge(out.data, gpu)


def judge(r: dict, gpu: bool) -> tuple[str, str | None]:
    """(status, reason); the summary line goes into ``r``."""
    what = (
        f"train_variant, {r['layers']} layers x hidden {r['shape']['hidden_size']}, r="
        f"{r['lora_rank']}, {r['attention']}, batch {r['batch_size']} "
        f"({r['real_tokens_per_step']:.0f} real tokens/step): {1000 * r['step_s']:.1f} ms/step, "
        f"{r['tokens_per_s']:,.0f} tok/s, {r['achieved_tflops']:.2f} model TFLOP/s"
    )
    if not gpu:
        r["summary"] = f"mfu (CPU, NOT a GPU figure): {what}; the MFU and memory goals need CUDA"
        return "ok", None
    problems = []
    if r["mfu"] is None:
        problems.append(f"unknown peak for {r['device']}: pass --peak-tflops")
    elif r["mfu"] < TARGET_MFU:
        problems.append(f"MFU {r['mfu']:.1%} < {TARGET_MFU:.0%}")
    if abs(r["estimate_ratio"] - 1) > MEMORY_TOLERANCE:
        problems.append(
            f"peak {r['peak_memory_gib']:.2f} GiB vs pre-flight estimate "
            f"{r['estimate_gib']:.2f} GiB at {r['estimate_tokens']} tokens "
            f"({r['estimate_ratio']:.2f}x, outside ±{MEMORY_TOLERANCE:.0%})"
        )
    mfu = f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "MFU unknown"
    r["summary"] = (
        f"mfu ({r['device']}): {mfu} (goal >= {TARGET_MFU:.0%}); {what}; peak "
        f"{r['peak_memory_gib']:.2f} GiB vs estimate {r['estimate_gib']:.2f} GiB "
        f"({r['estimate_ratio']:.2f}x, goal within ±{MEMORY_TOLERANCE:.0%})"
    )
    return ("failed", "; ".join(problems)) if problems else ("ok", None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto")
    parser.add_argument("--config", type=Path, default=FLAGSHIP_CONFIG)
    parser.add_argument("--layers", type=int, help=f"layers (default {GPU_LAYERS} GPU, 2 CPU)")
    parser.add_argument("--rank", type=int, help="LoRA rank (default: the config's on GPU, 16 CPU)")
    parser.add_argument("--batch-size", type=int, help="default: the config's (8)")
    parser.add_argument("--attn", default="sdpa", help="model.attn_implementation")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 5 GPU, 1 CPU)")
    parser.add_argument("--steps", type=int, help="timed steps (default 20 GPU, 3 CPU)")
    parser.add_argument("--peak-tflops", type=float, help="device peak (default: table by name)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the numbers here (always, as it goes)")
    args = parser.parse_args()
    out = StepOutput(args.json, "mfu" if args.attn != "flash_attention_2" else "mfu_flash")

    def body(out: StepOutput) -> tuple[str, str | None]:
        if args.attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            return "skipped", "flash-attn is not installed (the [flash] extra)"
        if args.attn == "flash_attention_2" and args.device == "cpu":
            return "skipped", "flash_attention_2 needs CUDA (--device cpu)"
        import torch
        import transformers

        torch.set_num_threads(args.threads)
        transformers.logging.set_verbosity_error()
        gpu = args.device != "cpu" and torch.cuda.is_available()
        args.warmup = args.warmup or (5 if gpu else 1)
        args.steps = args.steps or (20 if gpu else 3)
        return measure(args, out)

    code = run_step(out, body)
    print(
        out.data.get("summary") or f"{out.data['step']}: {out.data['status']}: {out.data['reason']}"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
