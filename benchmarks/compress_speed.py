"""``gradience compress`` vs PEFT's ``convert_to_lora`` on a Mistral-7B-shaped r=64 adapter.

PEFT 0.19+ ships ``peft.tuners.lora.conversion.convert_to_lora(model, rank=τ)``: it needs the
base model loaded with the adapter, forms every module's dense d_out×d_in ΔW, takes its full
SVD and keeps the smallest k holding τ of the energy. gradience truncates from the adapter
file alone, through the r×r core of the thin QRs. This script, in one run:

  1. writes an r=64 float32 adapter with Mistral-7B's shapes (``--layers`` decoder layers ×
     q/k/v/o/gate/up/down, a decaying spectrum as in trained adapters), in a child process;
  2. PEFT, in a fresh child: a base model built from a Mistral-7B config with random bf16
     weights, cut to ``--layers`` layers (memory), ``PeftModel.from_pretrained``, then the
     timed ``convert_to_lora(model, rank=τ)``; its per-module ranks are kept;
  3. gradience, in a fresh child: the timed ``truncate_adapter(adapter, those ranks, out)``
     (reading the file, truncating, writing the PEFT folder);
  4. here: both results' ΔW are compared module by module (relative Frobenius difference of
     the scaled updates, without forming them), and gradience's own ``energy@τ`` policy
     is checked to choose the same ranks.

Time = the conversion call alone in each child (model building and imports excluded, which
favours PEFT); memory = each child's whole-process peak RSS (``wait4``), which for PEFT
includes the base model its API needs (cut to a few layers here: 14.5 GB for the full 7B,
so the ratio printed understates the full-size gap). Both children get the same number of
BLAS/torch threads (``--threads``, default 1: on a busy machine threaded LAPACK spins and
the comparison would measure the load). Without convert_to_lora (PEFT < 0.19) the baseline
is the same thing done the obvious way, a dense SVD of each ΔW, and the output says so.
Targets: ≥ 10× faster, ≤ 0.2× the
peak memory, ΔW agreeing to ``--tolerance``. The last line is a one-line summary with
PASS/FAIL; the exit code is non-zero on a miss.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the Mistral-7B layer shape audit_speed.py already defines (a sibling script: benchmarks/ is
# on sys.path when either runs)
from audit_speed import MODULES  # noqa: E402

VOCAB = 32000
SPEED_TARGET, MEMORY_TARGET = 10.0, 0.2

PEFT_SCRIPT = """
import json, sys, time, warnings
import peft, torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import MistralConfig, MistralForCausalLM

try:
    from peft.tuners.lora.conversion import convert_to_lora
    baseline = "PEFT convert_to_lora"
except ImportError:  # PEFT < 0.19: the same thing done the obvious way, a dense SVD of each ΔW
    baseline = f"dense SVD of ΔW (peft {peft.__version__} has no convert_to_lora)"

    def convert_to_lora(model, rank):
        from peft.tuners.lora import LoraLayer
        ranks, state = {}, {}
        for name, layer in model.named_modules():
            if not isinstance(layer, LoraLayer):
                continue
            u, s, vt = torch.linalg.svd(layer.get_delta_weight("default").float(), full_matrices=False)
            energy = torch.cumsum(s**2, 0)
            k = int(torch.searchsorted(energy, rank * energy[-1])) + 1
            ranks[name.removeprefix("base_model.model.")] = k
            state[name + ".lora_A.weight"], state[name + ".lora_B.weight"] = vt[:k], u[:, :k] * s[:k]
        return peft.LoraConfig(r=1, rank_pattern=ranks), state

adapter, out, layers, tau = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
config = MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
    num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)  # Mistral-7B's own dtype; random weights
base = MistralForCausalLM(config)
torch.set_default_dtype(torch.float32)
model = PeftModel.from_pretrained(base, adapter)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "already a LoRA adapter": converting one is the point
    started = time.perf_counter()
    lora_config, state = convert_to_lora(model, rank=tau)
    seconds = time.perf_counter() - started
save_file({k: v.contiguous() for k, v in state.items()}, out + "/adapter_model.safetensors")
ranks = {k: int(v) for k, v in lora_config.rank_pattern.items()}
print(json.dumps({"seconds": seconds, "ranks": ranks, "baseline": baseline}))
"""

GRADIENCE_SCRIPT = """
import json, sys, time
from gradience.compress import truncate_adapter

adapter, ranks_file, out = sys.argv[1], sys.argv[2], sys.argv[3]
ranks = json.load(open(ranks_file))
started = time.perf_counter()
truncate_adapter(adapter, ranks, out)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def build_adapter(directory: Path, layers: int, r: int) -> None:
    """adapter_config.json + float32 adapter_model.safetensors with PEFT's key names."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(layers):
        for kind, parent, d_in, d_out in MODULES:
            prefix = f"base_model.model.model.layers.{layer}.{parent}.{kind}"
            tensors[f"{prefix}.lora_A.weight"] = (
                torch.randn(r, d_in, generator=generator) / d_in**0.5
            )
            # a decaying spectrum, as trained, steeper in some modules than in others
            steep = 1.0 + 3.0 * torch.rand(1, generator=generator).item()
            decay = torch.logspace(0, -steep, r).unsqueeze(0)
            tensors[f"{prefix}.lora_B.weight"] = (
                torch.randn(d_out, r, generator=generator) * decay * 1e-2
            )
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 16,
        "target_modules": [m[0] for m in MODULES],
        "base_model_name_or_path": "mistralai/Mistral-7B-v0.1",
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))


def measure(command: list[str], threads: int) -> tuple[dict, float, float]:
    """(the child's last stdout line as JSON, its wall seconds, its peak RSS in MiB)."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    out, err = process.stdout.read().decode(), process.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[:3]} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1]), wall, usage.ru_maxrss / 1024  # KiB → MiB


def compare(adapter: Path, peft_dir: Path, gradience_dir: Path) -> tuple[float, int]:
    """Largest relative difference ‖ΔW_peft − ΔW_gradience‖_F / ‖s·B·A‖_F over modules."""
    import numpy as np
    from safetensors.numpy import load_file

    from gradience.audit.spectrum import lora_singular_values
    from gradience.compress.truncate import difference_norm
    from gradience.io import read_json

    source = load_file(adapter / "adapter_model.safetensors")
    peft = load_file(peft_dir / "adapter_model.safetensors")
    ours = load_file(gradience_dir / "adapter_model.safetensors")
    record = {m["name"]: m for m in read_json(gradience_dir / "compress.json")["modules"]}
    worst = 0.0
    for name, module in record.items():
        key = f"base_model.model.{name}"
        a, b = (source[f"{key}.lora_{x}.weight"].astype(np.float64) for x in "AB")
        a_p, b_p = (peft[f"{key}.lora_{x}.weight"].astype(np.float64) for x in "AB")
        a_g, b_g = (ours[f"{key}.lora_{x}.weight"].astype(np.float64) for x in "AB")
        scale = module["scaling"] * np.linalg.norm(lora_singular_values(a, b))
        # PEFT folds the scaling into its factors (its α = r), so ΔW_peft = B_p·A_p
        diff = difference_norm(a_p, b_p, a_g, b_g, factor=module["output_scaling"])
        worst = max(worst, diff / scale)
    return worst, len(record)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--layers", type=int, default=1, help="decoder layers (Mistral-7B: 32; one of each module)"
    )
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--tau", type=float, default=0.9, help="energy threshold for both")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max relative ΔW difference")
    parser.add_argument(
        "--threads", type=int, default=1, help="BLAS/torch threads of both children (the same)"
    )
    parser.add_argument("--build-only", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only:
        build_adapter(Path(args.build_only), args.layers, args.rank)
        return 0

    # Nothing heavy is imported here before the children ran: a child's peak RSS counts its
    # parent's pages until it execs, so this process stays small until then.
    with tempfile.TemporaryDirectory(prefix="gradience-compress-bench-") as tmp:
        work = Path(tmp)
        adapter, peft_dir, ours = work / "adapter", work / "peft", work / "gradience"
        peft_dir.mkdir()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--build-only",
                str(adapter),
                "--layers",
                str(args.layers),
                "--rank",
                str(args.rank),
            ],
            check=True,
        )
        size = (adapter / "adapter_model.safetensors").stat().st_size / 2**20
        n = args.layers * len(MODULES)
        print(
            f"adapter: {args.layers} Mistral-7B layer(s) x {len(MODULES)} modules, r={args.rank}, "
            f"float32, {size:.0f} MiB; {args.threads} BLAS/torch thread(s) in each child"
        )
        peft_result, peft_wall, peft_rss = measure(
            [
                sys.executable,
                "-c",
                PEFT_SCRIPT,
                str(adapter),
                str(peft_dir),
                str(args.layers),
                str(args.tau),
            ],
            args.threads,
        )
        ranks = peft_result["ranks"]
        (work / "ranks.json").write_text(json.dumps(ranks))
        ours_result, ours_wall, ours_rss = measure(
            [
                sys.executable,
                "-c",
                GRADIENCE_SCRIPT,
                str(adapter),
                str(work / "ranks.json"),
                str(ours),
            ],
            args.threads,
        )
        worst, compared = compare(adapter, peft_dir, ours)

        from gradience.compress import compress_adapter

        policy = compress_adapter(
            adapter,
            work / "policy",
            policy=f"energy@{args.tau:g}",
            allowed_ranks=range(1, args.rank + 1),
        )
        same = sum(ranks[m.name] == m.rank for m in policy.modules)
    speed = peft_result["seconds"] / ours_result["seconds"]
    memory = ours_rss / peft_rss
    print(
        f"per-module ranks (PEFT's energy threshold {args.tau:g}): {sorted(set(ranks.values()))}; "
        f"gradience's energy@{args.tau:g} picks the same rank for {same}/{n} modules"
    )
    baseline = peft_result["baseline"]
    print(
        f"{baseline}: {peft_result['seconds']:7.2f} s in the call ({peft_wall:6.1f} s whole process), {peft_rss:7.0f} MiB peak RSS (base model included)"
    )
    print(
        f"gradience truncate_adapter: {ours_result['seconds']:7.2f} s in the call ({ours_wall:6.1f} s whole process), {ours_rss:7.0f} MiB peak RSS"
    )
    print(
        f"ΔW agreement over {compared} modules: max relative Frobenius difference {worst:.2e} (tolerance {args.tolerance:g})"
    )
    ok = (
        speed >= SPEED_TARGET
        and memory <= MEMORY_TARGET
        and worst <= args.tolerance
        and compared == n
    )
    print(
        f"compress_speed: gradience {speed:.0f}x faster than {baseline} (target >= {SPEED_TARGET:g}x), "
        f"{memory:.2f}x its peak memory (target <= {MEMORY_TARGET:g}x), ΔW max rel. diff {worst:.1e} "
        f"(<= {args.tolerance:g}): {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
