"""Projected wall time of the flagship experiment on one GPU, itemised, crediting ``auto`` batching.

The flagship is ``experiments/mechanism_test_config.yaml`` (``--config``): seeds × trained
variants jobs (3 × 4 = 12), each training ``max_steps`` steps of batch 8 and evaluating
``eval_samples`` items at up to ``max_new_tokens`` new tokens; each seed's probe also
evaluates the probe gate (64 training items) and is audited. Items, per job and in total:

* **training**: ``max_steps`` × the step time of Mistral-7B (32 layers, r = ``probe_r``) on
  GSM8K-like batches. Measured: the model FLOPs of that step (:mod:`lora_model`, the formula in
  mfu.py) ÷ the model FLOP/s mfu.py achieved through ``train_variant`` on this GPU (with
  fewer layers: the flagship's layers are assumed to run at the same FLOP/s). Otherwise
  assumed: 35% MFU. Every variant is charged the probe's step (an upper bound: LoRA is ~3%
  of the FLOPs);
* **evaluation** and **gate**: the batch ``eval_batch_size: auto`` chooses
  (:func:`gradience.evaluate.batch_size.generation_bytes_per_row` and
  :func:`~gradience.evaluate.batch_size.batch_size_for_memory`, the flagship's shape with its
  unmerged r=64 LoRA, the longest prompt assumed 200 tokens) in the free memory of the GPU:
  measured by generation.py with the model loaded, or the GPU named by ``--gpu`` /
  ``--gpu-memory-gb`` (80 GB and 141 GB presets) less the weights, the adapter and 1 GiB of
  CUDA context. The items go in batches of that many rows (the last one smaller), each
  ``max_new_tokens`` decoding steps (every batch runs to the budget: the worst case, which
  one long answer in a batch makes the real case). The time of a decoding step *at a batch's
  rows* is interpolated from generation.py's measurements at several batch sizes (linear
  between them; beyond the largest, the last two points' slope), not scaled linearly from
  one; otherwise assumed (the formula is printed; :mod:`cost_model` has the constants);
* **model loads**: the local executor keeps the base model across jobs
  (``env.reuse_base_model``), so one load of the bf16 weights; the load speed measured here
  on a GPU (a safetensors file in the warm page cache: a best case), else assumed 1 GB/s;
* **audit**: seeds × 32 layers × the seconds per layer of ``audit_adapter`` on an r=64
  adapter of Mistral-7B's shapes, measured here (the audit runs on the CPU);
* **job set-up**: assumed 10 s a job (Trainer, adapter save, held-out loss).

Every item says whether it is measured or assumed (``sources``), and ``not_measured`` says
which measurement was missing, from a CPU, or partial (a step that timed out still lends
what it measured). On CPU
(``GPU_CHECK_SMOKE=1``) the projection is entirely from the stated assumptions (CPU
figures say nothing about a GPU) and labelled so. Goal: ≤ 1 hour, judged only when training
and decoding are both measured on a GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import audit_speed
import cost_model as cm
from step_io import StepOutput, read_step, run_step

GOAL_S = 3600.0
FLAGSHIP_CONFIG = Path(__file__).parents[1] / "experiments" / "mechanism_test_config.yaml"


def usable(step: dict | None, name: str, needed: str, missing: list[str]) -> dict | None:
    """``step`` if it holds GPU figures for ``needed``; else None, saying why in ``missing``."""
    if step is None:
        missing.append(f"{name}.json is missing (the step did not run or left nothing)")
    elif step.get("device") in (None, "CPU"):
        missing.append(f"{name}.json is from {step.get('device') or 'no device'}, not a GPU")
    elif not step.get(needed):
        missing.append(f"{name}.json has no {needed} (status {step.get('status')})")
    else:
        if step.get("status") != "ok":  # partial (timeout) or a missed goal: still measured
            missing.append(f"{name}.json is used as far as it goes (status {step.get('status')})")
        return step
    return None


def load_seconds_per_gb(megabytes: int, device: Any) -> float:
    """Seconds per GB to load a safetensors file onto ``device`` (written first: warm cache)."""
    import torch
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.safetensors"
        chunk = 16 * 2**20  # 32 MiB of bf16 per tensor
        count = max(1, megabytes // 32)
        save_file({f"w{i}": torch.zeros(chunk, dtype=torch.bfloat16) for i in range(count)}, path)
        size = path.stat().st_size
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        loaded = load_file(path, device=str(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        else:  # a CPU load is a lazy mapping of the file: copy it, as from_pretrained does
            loaded = {name: t.clone() for name, t in loaded.items()}
        seconds = time.perf_counter() - started
        del loaded
    return seconds / (size / 1e9)


def audit_seconds_per_layer(layers: int, rank: int) -> float:
    """Seconds of ``audit_adapter`` per decoder layer of a Mistral-7B-shaped r=``rank`` adapter."""
    from gradience.audit import audit_adapter

    with tempfile.TemporaryDirectory() as tmp:
        adapter = audit_speed.build_adapter(Path(tmp) / "adapter", layers, rank)
        started = time.perf_counter()
        audit_adapter(adapter)
        return (time.perf_counter() - started) / layers


def choose_gpu(args: argparse.Namespace, measured_on: str) -> cm.Gpu:
    gpu = cm.GPUS[args.gpu or ("h200-141gb" if "H200" in measured_on else "h100-80gb")]
    if not args.gpu_memory_gb:
        return gpu
    return cm.Gpu(
        f"{gpu.name} at {args.gpu_memory_gb:g} GB",
        args.gpu_memory_gb,
        gpu.peak_tflops,
        gpu.hbm_tb_s,
    )


def training_step_s(cfg: Any, mfu: dict | None, gpu: cm.Gpu, sources: dict) -> float:
    flops, _, _ = cm.flagship_step_flops(cfg)
    if mfu is not None:
        sources["training"] = (
            f"measured: {mfu['achieved_tflops']:.0f} model TFLOP/s through train_variant on "
            f"{mfu['device']} ({mfu['layers']} layers; the flagship's 32 assumed at that rate)"
        )
        return flops / (mfu["achieved_tflops"] * 1e12)
    sources["training"] = f"ASSUMED: {cm.ASSUMED_MFU:.0%} MFU of {gpu.peak_tflops:g} TFLOP/s"
    return flops / (cm.ASSUMED_MFU * gpu.peak_tflops * 1e12)


def free_memory(args: argparse.Namespace, gen: dict | None, gpu: cm.Gpu, cfg: Any, sources: dict):
    """Bytes ``auto`` sees free at evaluation: measured by generation.py (unless a GPU is
    named with --gpu or --gpu-memory-gb), else assumed."""
    if gen is not None and gen.get("free_memory_gib") and not (args.gpu or args.gpu_memory_gb):
        sources["free memory"] = f"measured by generation.py on {gen['device']}, model loaded"
        return gen["free_memory_gib"] * cm.GIB
    _, n, n_lora = cm.flagship_step_flops(cfg)
    sources["free memory"] = (
        f"ASSUMED: {gpu.memory_gb:g} GB less the bf16 weights, the fp32 adapter, 1 GiB context"
    )
    return cm.assumed_free_bytes(gpu, n, n_lora)


def batch_seconds(cfg: Any, gen: dict | None, gpu: cm.Gpu, batches: dict, sources: dict):
    """rows -> seconds of one evaluation batch: interpolated from generation.py's batches,
    or from the assumed decoding model."""
    tokens = cfg.task.max_new_tokens
    if gen is not None:
        points = [(m["batch_size"], m["step_s"]) for m in gen["measurements"]]
        sources["decoding"] = (
            f"measured on {gen['device']} at batches {[b for b, _ in points]} "
            f"({', '.join(f'{1000 * s:.0f} ms' for _, s in points)} a step, prefill included), "
            "interpolated in batch size"
        )
        return lambda rows: tokens * cm.decode_step_s(rows, points)
    _, n, n_lora = cm.flagship_step_flops(cfg)
    kv = batches["kv_bytes_per_token"]
    sources["decoding"] = (
        f"ASSUMED: a step takes max({1000 * cm.DECODE_FLOOR_S:.0f} ms host floor, weights read "
        f"at {gpu.hbm_tb_s} TB/s + rows x 2(N + N_lora) FLOPs at "
        f"{cm.DECODE_MATMUL_EFFICIENCY:.0%} of peak + KV cache read); prefill rows x "
        f"{cm.PROMPT_MEAN} tokens x 2N FLOPs at the same rate"
    )
    return lambda rows: (
        tokens * cm.assumed_decode_step_s(rows, gpu, n, n_lora, kv)
        + cm.assumed_prefill_s(rows, gpu, n)
    )


def load_seconds(args: argparse.Namespace, cfg: Any, sources: dict) -> float:
    """One load of the base model (the local executor reuses it across jobs)."""
    import torch

    on_gpu = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if on_gpu else "cpu")
    measured = 1 / load_seconds_per_gb(args.load_mb or (1024 if on_gpu else 64), device)
    speed = measured if on_gpu else cm.ASSUMED_LOAD_GB_S
    sources["loads"] = (
        f"measured: {measured:.2f} GB/s into the GPU (warm page cache: a best case)"
        if on_gpu
        else f"ASSUMED: {speed:g} GB/s (measured here on CPU: {measured:.2f} GB/s, not used)"
    )
    _, n, _ = cm.flagship_step_flops(cfg)
    return cm.model_bytes(n) / 1e9 / speed


def project(args: argparse.Namespace, cfg: Any, out: StepOutput) -> tuple[str, str | None]:
    from gradience.experiment.plan import trained_variants

    missing: list[str] = []
    mfu = usable(read_step(args.mfu_json), "mfu", "achieved_tflops", missing)
    gen = usable(read_step(args.generation_json), "generation", "measurements", missing)
    gpu = choose_gpu(args, (mfu or gen or {}).get("device", ""))
    sources: dict[str, str] = {}
    step_s = training_step_s(cfg, mfu, gpu, sources)
    free = free_memory(args, gen, gpu, cfg, sources)
    batches = cm.auto_batches(cfg, free)
    per_batch = batch_seconds(cfg, gen, gpu, batches, sources)
    load_s = load_seconds(args, cfg, sources)
    audit_layer_s = audit_seconds_per_layer(args.audit_layers, cfg.lora.probe_r)
    sources["audit"] = f"measured on this machine's CPU: {audit_layer_s:.2f} s a layer"
    sources["set-up"] = f"ASSUMED: {cm.JOB_SETUP_S:g} s a job"
    variants = trained_variants(cfg)
    per_job, totals = cm.itemise(cfg, variants, step_s, per_batch, batches, load_s, audit_layer_s)
    flops, n, _ = cm.flagship_step_flops(cfg)
    out.update(
        gpu=gpu.name,
        gpu_memory_gb=gpu.memory_gb,
        free_memory_gb=free / 1e9,
        sources=sources,
        not_measured=missing,
        counts={
            "seeds": len(cfg.train.seeds),
            "variants": variants,
            "jobs": len(cfg.train.seeds) * len(variants),
            "steps_per_job": cfg.train.max_steps,
            "step_tflop": flops / 1e12,
            "step_s": step_s,
            "eval_items": batches["eval_items"],
            "gate_items": cm.GATE_ITEMS,
            "max_new_tokens": cfg.task.max_new_tokens,
            "model_gb": cm.model_bytes(n) / 1e9,
        },
        eval_batch={
            "eval": batches["eval"],
            "eval_batches": cm.batch_rows(batches["eval_items"], batches["eval"]),
            "gate": batches["gate"],
            "gate_batches": cm.batch_rows(cm.GATE_ITEMS, batches["gate"]),
            "bytes_per_row": batches["bytes_per_row"],
            "measured_auto_batch": gen.get("auto_batch_size") if gen else None,
        },
        per_job=per_job,
        totals=totals,
        goal_s=GOAL_S,
        judged=mfu is not None and gen is not None,
    )
    return judge(out.data)


def judge(r: dict) -> tuple[str, str | None]:
    total = r["totals"]["total_s"]
    where = f"{r['gpu']}, eval batch {r['eval_batch']['eval']} (auto)"
    if not r["judged"]:
        r["summary"] = (
            f"experiment_cost: projected flagship {total / 3600:.2f} h on one {where}, from "
            "stated ASSUMPTIONS (no GPU measurement of training and decoding): goal not judged"
        )
        return "ok", None
    ok = total <= GOAL_S
    r["summary"] = (
        f"experiment_cost: projected flagship {total / 3600:.2f} h on one {where}, from "
        f"measurements; goal <= 1 h {'PASS' if ok else 'FAIL'}"
    )
    return ("ok", None) if ok else ("failed", f"projected {total / 3600:.2f} h > 1 h")


def report(r: dict) -> None:
    """The itemised projection, for people."""
    c, e, t = r["counts"], r["eval_batch"], r["totals"]
    print(
        f"flagship projection on one {r['gpu']}: {c['jobs']} jobs ({c['seeds']} seeds x "
        f"{len(c['variants'])} variants), {c['steps_per_job']:,} training steps of "
        f"{c['step_tflop']:.1f} TFLOP ({1000 * c['step_s']:.0f} ms) each"
    )
    print(
        f"  eval: {c['eval_items']} items at the auto batch {e['eval']} (rows {e['eval_batches']}),"
        f" gate {c['gate_items']} items (rows {e['gate_batches']}), {c['max_new_tokens']} decoding"
        f" steps a batch (worst case); {e['bytes_per_row'] / 1e6:.0f} MB a row in "
        f"{r['free_memory_gb']:.1f} GB free"
        + (
            f"; generation.py's own auto pick: {e['measured_auto_batch']}"
            if e["measured_auto_batch"]
            else ""
        )
    )
    for item, source in r["sources"].items():
        print(f"  {item}: {source}")
    for why in r["not_measured"]:
        print(f"  measurements: {why}")
    print(f"  {'job (per seed)':<34}{'train':>9}{'eval':>9}{'gate':>9}{'set-up':>9}{'total':>9}")
    for variant, job in r["per_job"].items():
        keys = ("train_s", "eval_s", "gate_s", "setup_s", "total_s")
        print(f"  {variant:<34}" + "".join(f"{job[k] / 60:>8.1f}m" for k in keys))
    print(f"  run: loads {t['loads_s'] / 60:.1f} m, training {t['training_s'] / 60:.1f} m, "
          f"evaluation {t['evaluation_s'] / 60:.1f} m, set-up {t['setup_s'] / 60:.1f} m, "
          f"audit {t['audit_s'] / 60:.1f} m: total {t['total_s'] / 60:.1f} m")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=FLAGSHIP_CONFIG)
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto")
    parser.add_argument(
        "--gpu", choices=sorted(cm.GPUS), help="default: the measured GPU, else h100-80gb"
    )
    parser.add_argument(
        "--gpu-memory-gb",
        type=float,
        help="GPU memory (GB) instead of the preset's or the measured",
    )
    parser.add_argument("--mfu-json", type=Path, help="mfu.py's --json from this GPU")
    parser.add_argument("--generation-json", type=Path, help="generation.py's --json from this GPU")
    parser.add_argument(
        "--load-mb", type=int, help="size of the load test (default 1024 GPU, 64 CPU)"
    )
    parser.add_argument("--audit-layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the numbers here (always, as it goes)")
    args = parser.parse_args()
    out = StepOutput(args.json, "experiment_cost")

    def body(out: StepOutput) -> tuple[str, str | None]:
        import torch

        from gradience.config import load_config

        torch.set_num_threads(args.threads)
        status = project(args, load_config(args.config), out)
        report(out.data)
        return status

    code = run_step(out, body)
    print(out.data.get("summary") or f"experiment_cost: {out.data['status']}: {out.data['reason']}")
    return code


if __name__ == "__main__":
    sys.exit(main())
