"""Step ``vllm_parity`` of ``gpu_check.sh``: vLLM serving a LoRA decodes like the unmerged HF path.

The comparison belongs to the backend: ``vllm_parity(cfg, ...)`` from
:mod:`gradience.evaluate.vllm_parity` (or, failing that, :mod:`gradience.evaluate.vllm_backend`)
runs the same prompts greedily through transformers with the adapter unmerged and through
vLLM with the adapter as a LoRA, and returns a JSON-ready dict. This step prepares what it
needs (a random model of Mistral-7B's width, 2 layers, bf16, saved as a model folder with
the embedded tokenizer; the arithmetic task; a heterogeneous adapter the backend builds) and
records what it returns.

``skipped``, with the reason, where it cannot run: ``--device cpu`` (``GPU_CHECK_SMOKE``),
vLLM not installed, no ``vllm_parity`` function in either module, or the function itself
says so. Goal where it ran: tokens match on at least :data:`MIN_TOKEN_MATCH` of the prompts
(bf16 rounds differently in the two engines, so a near-tie may flip a token), the LoRA
changes vLLM's output (it was applied), and a second vLLM run after a sleep/wake cycle gives
the same tokens.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any

import lora_model
from step_io import StepOutput, run_step

MIN_TOKEN_MATCH = 0.9
PARITY_MODULES = ("gradience.evaluate.vllm_parity", "gradience.evaluate.vllm_backend")


def parity_function() -> tuple[Any, str | None]:
    """(the backend's ``vllm_parity``, None), or (None, why not)."""
    for name in PARITY_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        function = getattr(module, "vllm_parity", None)
        if callable(function):
            return function, None
    return None, f"no vllm_parity() in {' or '.join(PARITY_MODULES)}"


def measure(args: argparse.Namespace, out: StepOutput) -> tuple[str, str | None]:
    if args.device == "cpu":
        return "skipped", "vLLM's LoRA serving needs CUDA (--device cpu)"
    if importlib.util.find_spec("vllm") is None:
        return "skipped", "vLLM is not installed (pip install 'gradience[vllm]')"
    import torch

    if not torch.cuda.is_available():
        return "skipped", "vLLM's LoRA serving needs CUDA (torch sees no GPU)"
    function, missing = parity_function()
    if function is None:
        return "skipped", missing
    from gpu_check import reduced_config, save_random_model

    shape = {**lora_model.MISTRAL_7B, "num_hidden_layers": 2}
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_model(Path(tmp) / "model", shape, torch.bfloat16)
        cfg = reduced_config(folder, Path(tmp) / "run", True, args.rank)
        # ---- vllm_parity: the call into the backend (its signature is the backend's) ----
        result = function(cfg, n_prompts=args.prompts)
    if not isinstance(result, dict):
        return "failed", f"vllm_parity returned {type(result).__name__}, not a dict"
    out.update(**{k: v for k, v in result.items() if k not in ("status", "reason")})
    if result.get("status") == "skipped":
        return "skipped", str(result.get("reason"))
    return judge(out.data)


def judge(r: dict) -> tuple[str, str | None]:
    problems = []
    match = r.get("token_match_fraction")
    if match is None or match < MIN_TOKEN_MATCH:
        problems.append(f"token match {match} < {MIN_TOKEN_MATCH}")
    if not r.get("lora_changes_output_fraction"):
        problems.append("the LoRA changed no vLLM output (was it applied?)")
    if r.get("wake_consistent") is False:
        problems.append("vLLM's tokens changed after a sleep/wake cycle")
    r["summary"] = (
        f"vllm_parity: greedy tokens match on {match} of {r.get('n_prompts')} prompts (goal >= "
        f"{MIN_TOKEN_MATCH}); LoRA changes {r.get('lora_changes_output_fraction')} of vLLM's "
        f"outputs; consistent after sleep/wake: {r.get('wake_consistent')}"
    )
    return ("failed", "; ".join(problems)) if problems else ("ok", None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto")
    parser.add_argument("--rank", type=int, default=16, help="lora.probe_r of the adapter")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--json", type=Path, help="write the numbers here (always, as it goes)")
    args = parser.parse_args()
    out = StepOutput(args.json, "vllm_parity")
    code = run_step(out, lambda out: measure(args, out))
    print(out.data.get("summary") or f"vllm_parity: {out.data['status']}: {out.data['reason']}")
    return code


if __name__ == "__main__":
    sys.exit(main())
