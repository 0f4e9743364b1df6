"""How fast and how lean is ``gradience audit`` on a Mistral-7B-shaped adapter?

Builds an r=64 bf16 LoRA adapter with Mistral-7B's shapes (32 layers × q/k/v/o/gate/up/down,
~336 MB) in a temporary directory, then measures, each in its own fresh subprocess so that
peak RSS is clean:

  (a) the bare read: ``import torch`` + ``safetensors.torch.load_file`` of the whole file;
  (b) the full audit: ``python -m gradience audit DIR --output audit.json`` (whole process).

and, afterwards in this process, (c) a dense SVD of B·A (float32 ``torch.linalg.svdvals``) on a sample of
module types, extrapolated to all 224 modules: measured types × their count, the others
predicted from the measured rate and the flop count of a values-only SVD, 4mn² − 4n³/3.

Targets: audit wall ≤ 2× the bare read's, audit peak RSS ≤ 1.2× the bare read's.
The last line is a one-line summary with PASS/FAIL. This process imports torch only after
(a) and (b): a forked child's peak RSS counts the parent's pages until it execs, so the
parent stays small and the adapter is written by a child of its own.
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

HIDDEN, KV, INTERMEDIATE = 4096, 1024, 14336
#: (module type, parent, d_in, d_out) of one Mistral-7B decoder layer.
MODULES = [
    ("q_proj", "self_attn", HIDDEN, HIDDEN),
    ("k_proj", "self_attn", HIDDEN, KV),
    ("v_proj", "self_attn", HIDDEN, KV),
    ("o_proj", "self_attn", HIDDEN, HIDDEN),
    ("gate_proj", "mlp", HIDDEN, INTERMEDIATE),
    ("up_proj", "mlp", HIDDEN, INTERMEDIATE),
    ("down_proj", "mlp", INTERMEDIATE, HIDDEN),
]
WALL_TARGET, RSS_TARGET = 2.0, 1.2

READ_SCRIPT = """
import sys, torch
from safetensors.torch import load_file
tensors = load_file(sys.argv[1])
print(sum(t.numel() for t in tensors.values()))
"""


def build_adapter(directory: Path, layers: int, r: int) -> Path:
    """Write adapter_config.json + adapter_model.safetensors (bf16, PEFT's key names)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(layers):
        for kind, parent, d_in, d_out in MODULES:
            prefix = f"base_model.model.model.layers.{layer}.{parent}.{kind}"
            tensors[f"{prefix}.lora_A.weight"] = (
                torch.randn(r, d_in, generator=generator) / d_in**0.5
            ).to(torch.bfloat16)
            # a decaying spectrum, as in trained adapters
            decay = torch.logspace(0, -3, r).unsqueeze(0)
            tensors[f"{prefix}.lora_B.weight"] = (
                torch.randn(d_out, r, generator=generator) * decay * 1e-2
            ).to(torch.bfloat16)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 32,
        "target_modules": [m[0] for m in MODULES],
        "base_model_name_or_path": "mistralai/Mistral-7B-v0.1",
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": False,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return directory


def measure(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one child process, from its own rusage."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(
            f"{command} failed:\n{process.stderr.read().decode() if process.stderr else ''}"
        )
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def svd_flops(m: int, n: int) -> float:
    """Leading flop count of singular values only (Golub–Van Loan), m ≥ n after transposing."""
    m, n = max(m, n), min(m, n)
    return 4 * m * n**2 - 4 * n**3 / 3


def dense_svd_seconds(sample: list[str], layers: int, r: int) -> tuple[float, str]:
    """Seconds for dense SVDs of all modules: measured for ``sample`` types, predicted for the rest."""
    import torch

    torch.manual_seed(0)
    measured, rates = {}, []
    for kind, _, d_in, d_out in MODULES:
        if kind not in sample:
            continue
        a = torch.randn(r, d_in).to(torch.bfloat16).float()
        b = torch.randn(d_out, r).to(torch.bfloat16).float()
        start = time.perf_counter()
        torch.linalg.svdvals(b @ a)
        measured[kind] = time.perf_counter() - start
        rates.append(svd_flops(d_out, d_in) / measured[kind])
    rate = sum(rates) / len(rates)
    per_layer = sum(
        measured.get(kind, svd_flops(d_out, d_in) / rate) for kind, _, d_in, d_out in MODULES
    )
    note = ", ".join(f"{k} {s:.1f}s" for k, s in measured.items())
    return per_layer * layers, note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (Mistral-7B: 32)")
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank of every module")
    parser.add_argument(
        "--dense-sample",
        default="k_proj",
        help="module types to time a dense SVD on (comma-separated)",
    )
    parser.add_argument("--build-only", metavar="DIR", help=argparse.SUPPRESS)  # the builder child
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of (a) and (b); the fastest wall and the lowest RSS count",
    )
    args = parser.parse_args(argv)
    if args.build_only:
        build_adapter(Path(args.build_only), args.layers, args.rank)
        return 0
    sample = [s for s in args.dense_sample.split(",") if s]
    if not set(sample) <= {m[0] for m in MODULES}:
        parser.error(f"--dense-sample must name module types of {[m[0] for m in MODULES]}")

    with tempfile.TemporaryDirectory(prefix="gradience-audit-bench-") as tmp:
        adapter = Path(tmp) / "adapter"
        build = [
            sys.executable,
            __file__,
            "--build-only",
            str(adapter),
            "--layers",
            str(args.layers),
            "--rank",
            str(args.rank),
        ]
        subprocess.run(build, check=True)
        size_mb = (adapter / "adapter_model.safetensors").stat().st_size / 2**20
        print(
            f"adapter: {args.layers} layers x {len(MODULES)} modules, r={args.rank}, bf16, {size_mb:.0f} MiB"
        )
        read_cmd = [sys.executable, "-c", READ_SCRIPT, str(adapter / "adapter_model.safetensors")]
        audit_cmd = [
            sys.executable,
            "-m",
            "gradience",
            "audit",
            str(adapter),
            "--output",
            str(Path(tmp) / "audit.json"),
        ]
        measure(read_cmd)  # warm the page cache so neither side pays for the disk
        reads, audits = [], []
        for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
            reads.append(measure(read_cmd))
            audits.append(measure(audit_cmd))
        read_wall, read_rss = min(w for w, _ in reads), min(m for _, m in reads)
        audit_wall, audit_rss = min(w for w, _ in audits), min(m for _, m in audits)
        n_modules = len(json.loads((Path(tmp) / "audit.json").read_text())["modules"])
    print(
        f"(a) bare read  (import torch + load_file): {read_wall:6.2f} s wall, {read_rss:7.0f} MiB peak RSS"
    )
    print(
        f"(b) full audit ({n_modules} modules, whole process): {audit_wall:6.2f} s wall, {audit_rss:7.0f} MiB peak RSS"
    )
    dense, note = dense_svd_seconds(sample, args.layers, args.rank)
    print(f"(c) dense SVD of B·A, extrapolated to all modules: {dense:8.1f} s (measured: {note})")
    wall_ratio, rss_ratio = audit_wall / read_wall, audit_rss / read_rss
    print(
        f"audit / bare read: wall {wall_ratio:.2f}x, peak RSS {rss_ratio:.2f}x; dense SVD / audit: {dense / audit_wall:.0f}x"
    )
    ok = wall_ratio <= WALL_TARGET and rss_ratio <= RSS_TARGET
    print(
        f"audit_speed: wall {wall_ratio:.2f}x read (target <= {WALL_TARGET}x), peak RSS {rss_ratio:.2f}x read "
        f"(target <= {RSS_TARGET}x), {dense / audit_wall:.0f}x faster than dense SVD: {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
