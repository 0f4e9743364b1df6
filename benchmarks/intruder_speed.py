"""How fast and how lean is ``gradience audit --base`` (intruder dimensions), first and cached?

Builds, in a temporary directory, a random Llama-shaped base (hidden 1024, intermediate 2816,
16 heads / 4 KV heads, ``--layers`` decoder layers, bf16, ``save_pretrained`` in shards) and a
random r=16 LoRA adapter on all seven linear module types, whose update is 0.3–3× the base
tensor's spectral norm (so some modules have intruders and some do not). Then, each in its own
fresh subprocess so that peak RSS is clean, and timing only the work (after the imports):

  (a) read:   every base tensor the adapter targets, one at a time, as the float64 array the
              audit needs (gradience's streaming safetensors reader, ``SafetensorsStream``);
  (b) first:  ``audit_adapter`` + ``add_intruder_dimensions`` with an empty SVD cache (W0's
              full SVD per module, written to the cache);
  (c) cached: the same again, the cache filled by (b).

Peak RSS is each child's own ``getrusage(RUSAGE_SELF).ru_maxrss``: the whole process, the
interpreter and its imports included (every child imports the same modules), not a
tracemalloc count of Python allocations. The whole ``python -m gradience audit --base``
command's wall time (cached) is shown beside.

Targets: cached audit wall ≤ 15× the read's and ≥ 10× faster than the first audit (an order
of magnitude: the cache's purpose; first set at 20× from runs on a busy machine, where the
first audit's SVDs slowed most, then measured 15× alone, 2026-12-03); cached
peak RSS ≤ 1.5× the read's, the first audit's ≤ 3× (one module's SVD workspace, never the
whole base). Why 15× and not the 3× a read-bound tool would aim for: after the cache, each
module still multiplies m × n (and m × p) matrices by r = 16 columns (W0·Aᵀ, U0ᵀ·[B, W0·Aᵀ],
and U0·B̃ for tall matrices), about 3·16 multiply-adds per weight for which the read moves 2
bytes, plus hashing those bytes and a small Lanczos run. The last line is a one-line
summary with PASS/FAIL; the exit status is 1 on a miss.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, RANK, ALPHA = 1024, 2816, 16, 4, 16, 32
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WALL_TARGET, SPEEDUP_TARGET, RSS_TARGET, FIRST_RSS_TARGET = 15.0, 10.0, 1.5, 3.0


def build(directory: Path, layers: int) -> None:
    """The base (bf16, sharded) and a bf16 adapter with PEFT's key names."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        vocab_size=1024,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory / "base", max_shard_size="32MB")
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in TARGETS:
            continue
        d_out, d_in = module.weight.shape
        norm = 0.02 * (d_in**0.5 + d_out**0.5)  # ≈ σ₁ of the N(0, 0.02²) init
        strength = float(torch.empty(1).uniform_(-1.2, 1.1, generator=generator).exp())
        a = torch.randn(RANK, d_in, generator=generator) / d_in**0.5
        decay = torch.logspace(0, -2, RANK).unsqueeze(0)
        b = torch.randn(d_out, RANK, generator=generator) * decay
        b *= strength * norm / (ALPHA / RANK) / d_out**0.5
        prefix = f"base_model.model.{name}"
        tensors[f"{prefix}.lora_A.weight"] = a.to(torch.bfloat16).contiguous()
        tensors[f"{prefix}.lora_B.weight"] = b.to(torch.bfloat16).contiguous()
    (directory / "adapter").mkdir()
    save_file(tensors, directory / "adapter" / "adapter_model.safetensors")
    adapter_config = {
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": ALPHA,
        "target_modules": TARGETS,
        "base_model_name_or_path": str(directory / "base"),
    }
    (directory / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_config))


def child(kind: str, directory: Path) -> None:
    """One measurement: the work's wall time and this process's peak RSS, as JSON."""
    from gradience.audit import audit_adapter
    from gradience.audit.base_weights import BaseWeights, base_key
    from gradience.audit.intruder_scan import add_intruder_dimensions
    from gradience.audit.tensors import SafetensorsStream

    adapter, base = directory / "adapter", directory / "base"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    found = 0
    if kind == "read":
        files = BaseWeights(base).files
        names = [
            key.split(".lora_A.")[0].removeprefix("base_model.model.")
            for key in SafetensorsStream(adapter / "adapter_model.safetensors").tensors()
            if ".lora_A." in key
        ]
        streams: dict[Path, SafetensorsStream] = {}
        for name in names:
            key = base_key(name, files)
            stream = streams.setdefault(files[key], SafetensorsStream(files[key]))
            found += stream.read(key).size
    else:
        audit = add_intruder_dimensions(audit_adapter(adapter), adapter, str(base))
        found = audit.intruders.total
        if kind == "cached" and audit.intruders.cached_modules != len(audit.modules):
            raise SystemExit("the cached audit recomputed an SVD")
    work = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"work_s": work, "rss_mib": peak, "imports_rss_mib": before, "found": found}))


def measure(kind: str, directory: Path, env: dict[str, str]) -> dict:
    command = [sys.executable, __file__, "--child", kind, str(directory)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cli_wall(directory: Path, env: dict[str, str]) -> float:
    command = [sys.executable, "-m", "gradience", "audit", str(directory / "adapter")]
    command += ["--base", str(directory / "base"), "--output", str(directory / "audit.json")]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{command} failed:\n{done.stderr}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the base")
    parser.add_argument("--repeats", type=int, default=3, help="runs of (a) and (c); fastest wins")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--build-only", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return 0
    if args.build_only:
        build(Path(args.build_only), args.layers)
        return 0
    with tempfile.TemporaryDirectory(prefix="gradience-intruder-bench-") as tmp:
        directory = Path(tmp)
        build_cmd = [sys.executable, __file__, "--build-only", tmp, "--layers", str(args.layers)]
        subprocess.run(build_cmd, check=True)  # a child: this process stays small
        size = sum(p.stat().st_size for p in (directory / "base").glob("*.safetensors")) / 2**20
        env = {**os.environ, "GRADIENCE_CACHE": str(directory / "cache")}
        n_modules = args.layers * len(TARGETS)
        print(
            f"base: Llama-shaped, hidden {HIDDEN}, intermediate {INTERMEDIATE}, {args.layers} "
            f"layers, bf16, {size:.0f} MiB in shards; adapter r={RANK} on {n_modules} modules"
        )
        measure("read", directory, env)  # warm the page cache for everyone
        first = measure("first", directory, env)
        reads, cached = [], []
        for _ in range(args.repeats):  # interleaved, so load from other processes hits both
            reads.append(measure("read", directory, env))
            cached.append(measure("cached", directory, env))
        command = cli_wall(directory, env)
    read_s, read_rss = min(r["work_s"] for r in reads), min(r["rss_mib"] for r in reads)
    cached_s, cached_rss = min(c["work_s"] for c in cached), min(c["rss_mib"] for c in cached)
    rows = [("(a) read base tensors", read_s, read_rss, reads[0]["imports_rss_mib"])]
    rows += [
        ("(b) first audit --base", first["work_s"], first["rss_mib"], first["imports_rss_mib"])
    ]
    rows += [("(c) cached audit --base", cached_s, cached_rss, cached[0]["imports_rss_mib"])]
    for label, wall, rss, imports in rows:
        print(
            f"{label:26s} {wall:7.2f} s work, {rss:6.0f} MiB peak RSS ({imports:.0f} MiB after imports)"
        )
    print(f"intruder dimensions found: {first['found']} in {n_modules} modules")
    print(f"whole command, cached (python -m gradience audit --base): {command:.2f} s wall")
    first_wall, wall = first["work_s"] / read_s, cached_s / read_s
    first_rss, rss = first["rss_mib"] / read_rss, cached_rss / read_rss
    print(
        f"first / read: wall {first_wall:.1f}x, peak RSS {first_rss:.2f}x; "
        f"cached / read: wall {wall:.2f}x, peak RSS {rss:.2f}x"
    )
    speedup = first_wall / wall
    ok = (
        wall <= WALL_TARGET
        and speedup >= SPEEDUP_TARGET
        and rss <= RSS_TARGET
        and first_rss <= FIRST_RSS_TARGET
    )
    print(
        f"intruder_speed: cached audit {wall:.2f}x read wall (target <= {WALL_TARGET:g}x), "
        f"{speedup:.0f}x faster than the first (target >= {SPEEDUP_TARGET:g}x), {rss:.2f}x read "
        f"peak RSS (target <= {RSS_TARGET:g}x); first audit {first_rss:.2f}x read peak RSS "
        f"(target <= {FIRST_RSS_TARGET:g}x): {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
