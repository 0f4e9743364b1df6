"""The arithmetic of experiment_cost.py's flagship projection: GPUs, the stated assumptions,
the batch ``eval_batch_size: auto`` picks, decoding time against batch size, and the items.

Pure functions of their inputs (no measuring, no printing): experiment_cost.py measures,
reads the other steps' JSON, and calls these. Every constant below is an assumption the
projection names in its output when it uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import audit_speed
import lora_model

GIB = 2**30
GATE_ITEMS = 64
#: Training without a GPU measurement: the issue's goal.
ASSUMED_MFU = 0.35
#: HF generate's host-bound floor per decoding step, 32 layers with 224 unmerged LoRA modules:
#: the issue's reading, 512 prompts x 256 tokens at batch 32 in 150-210 s, is 37-51 ms a step.
DECODE_FLOOR_S = 0.045
#: Share of the tensor-core peak the decoding and prefill matmuls reach, without a measurement.
DECODE_MATMUL_EFFICIENCY = 0.5
#: A first read of the weights from a local disk, without a GPU measurement.
ASSUMED_LOAD_GB_S = 1.0
#: A job's Trainer set-up, adapter save and held-out loss.
JOB_SETUP_S = 10.0
#: GSM8K-question prompts with Mistral's tokenizer: mean ~75 tokens, the longest of 500 ~200.
PROMPT_MEAN, PROMPT_LONGEST = 75, 200


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: float
    peak_tflops: float  # bf16 dense
    hbm_tb_s: float


GPUS = {
    "h100-80gb": Gpu("H100 SXM 80 GB", 80.0, 989.0, 3.35),
    "h200-141gb": Gpu("H200 141 GB", 141.0, 989.0, 4.8),
}


def flagship_step_flops(cfg: Any) -> tuple[float, int, int]:
    """(model FLOPs of one flagship training step, N, N_lora) at GSM8K-like lengths."""
    shape = lora_model.MISTRAL_7B
    n, n_lora = lora_model.model_counts(shape, cfg.lora.probe_r)
    lengths = lora_model.gsm8k_lengths(1000, cfg.task.max_seq_length)
    per_example = lora_model.flops_per_step(
        n, n_lora, shape["num_hidden_layers"], shape["hidden_size"], lengths
    ) / len(lengths)
    return per_example * cfg.train.per_device_train_batch_size, n, n_lora


def model_bytes(n: int) -> int:
    """bf16 bytes of Mistral-7B: the matmul weights and the input embedding."""
    return 2 * (n + lora_model.MISTRAL_7B["vocab_size"] * lora_model.MISTRAL_7B["hidden_size"])


def assumed_free_bytes(gpu: Gpu, n: int, n_lora: int) -> float:
    """What ``auto`` would see free at evaluation: the GPU less the bf16 weights, the fp32
    adapter and 1 GiB of CUDA context (the Trainer is gone by then)."""
    return gpu.memory_gb * 1e9 - model_bytes(n) - 4 * n_lora - GIB


def auto_batches(cfg: Any, free_bytes: float) -> dict:
    """The batch ``auto`` picks for the eval items and for the gate, and the bytes per row
    (gradience.evaluate.batch_size, Mistral-7B in bf16 with its unmerged fp32 r=probe_r LoRA)."""
    from gradience.evaluate.batch_size import (
        GenerationShape,
        LoraShape,
        batch_size_for_memory,
        generation_bytes_per_row,
    )

    s = lora_model.MISTRAL_7B
    heads = s["num_attention_heads"]
    shape = GenerationShape(
        layers=s["num_hidden_layers"],
        heads=heads,
        kv_heads=s["num_key_value_heads"],
        head_dim=s["hidden_size"] // heads,
        hidden=s["hidden_size"],
        intermediate=s["intermediate_size"],
        vocab=s["vocab_size"],
        dtype_bytes=2,
    )
    modules = {(d_in, d_out, cfg.lora.probe_r) for _, _, d_in, d_out in audit_speed.MODULES}
    adapter = LoraShape(dtype_bytes=4, modules=tuple(sorted(modules)))
    per_row = generation_bytes_per_row(
        shape, PROMPT_LONGEST, cfg.task.max_new_tokens, adapter=adapter
    )
    items = cfg.task.eval_samples or 1319  # null: GSM8K's whole test split
    return {
        "eval": batch_size_for_memory(int(free_bytes), per_row, items),
        "gate": batch_size_for_memory(int(free_bytes), per_row, GATE_ITEMS),
        "bytes_per_row": per_row,
        "kv_bytes_per_token": shape.kv_bytes_per_token,
        "eval_items": items,
    }


def decode_step_s(batch: int, points: list[tuple[int, float]]) -> float:
    """Seconds per decoding step at ``batch``, from measured (batch, seconds) points: linear
    between them, the last two points' slope (never negative) beyond, the nearest below."""
    points = sorted(points)
    if batch <= points[0][0]:
        return points[0][1]
    for (b0, s0), (b1, s1) in zip(points, points[1:], strict=False):
        if batch <= b1:
            return s0 + (s1 - s0) * (batch - b0) / (b1 - b0)
    if len(points) == 1:
        return points[0][1]
    (b0, s0), (b1, s1) = points[-2], points[-1]
    return s1 + max(0.0, (s1 - s0) / (b1 - b0)) * (batch - b1)


def assumed_decode_step_s(batch: int, gpu: Gpu, n: int, n_lora: int, kv_bytes: int) -> float:
    """max(host floor, weight read + the batch's matmuls + its KV-cache read, mid-answer)."""
    weights = 2 * n / (gpu.hbm_tb_s * 1e12)
    matmuls = batch * 2 * (n + n_lora) / (DECODE_MATMUL_EFFICIENCY * gpu.peak_tflops * 1e12)
    kv = batch * kv_bytes * (PROMPT_MEAN + 128) / (gpu.hbm_tb_s * 1e12)
    return max(DECODE_FLOOR_S, weights + matmuls + kv)


def assumed_prefill_s(batch: int, gpu: Gpu, n: int) -> float:
    """A batch's prefill: its prompt tokens at 2N FLOPs each, at the assumed matmul rate."""
    return batch * PROMPT_MEAN * 2 * n / (DECODE_MATMUL_EFFICIENCY * gpu.peak_tflops * 1e12)


def batch_rows(items: int, batch: int) -> list[int]:
    """The rows of each batch when ``items`` are evaluated ``batch`` at a time."""
    return [batch] * (items // batch) + ([items % batch] if items % batch else [])


def itemise(
    cfg: Any,
    variants: list[str],
    step_s: float,
    batch_s: Callable[[int], float],
    batches: dict,
    load_s: float,
    audit_layer_s: float,
) -> tuple[dict, dict]:
    """(per job of one seed, run totals) in seconds. ``batch_s(rows)``: one evaluation
    batch's seconds (prefill and every decoding step) with ``rows`` rows."""
    seeds = len(cfg.train.seeds)
    evaluation = sum(batch_s(rows) for rows in batch_rows(batches["eval_items"], batches["eval"]))
    gate = sum(batch_s(rows) for rows in batch_rows(GATE_ITEMS, batches["gate"]))
    per_job = {}
    for variant in variants:
        gated = variant == variants[0] and cfg.compression.probe_gate > 0
        job = {
            "train_s": cfg.train.max_steps * step_s,
            "eval_s": evaluation,
            "gate_s": gate if gated else 0.0,
            "setup_s": JOB_SETUP_S,
        }
        job["total_s"] = sum(job.values())
        per_job[variant] = job
    totals = {
        "loads_s": load_s,
        "training_s": seeds * sum(j["train_s"] for j in per_job.values()),
        "evaluation_s": seeds * sum(j["eval_s"] + j["gate_s"] for j in per_job.values()),
        "setup_s": seeds * len(variants) * JOB_SETUP_S,
        "audit_s": seeds * audit_layer_s * lora_model.MISTRAL_7B["num_hidden_layers"],
    }
    totals["total_s"] = sum(totals.values())
    return per_job, totals
