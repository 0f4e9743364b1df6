"""What the GPU benchmarks share: Mistral-7B's shape, its parameter counts and model FLOPs
per LoRA training step, GSM8K-like example lengths, and a random Mistral with LoRA on all 7
projections (:func:`build`, generation.py's model).

Used by mfu.py, generation.py, experiment_cost.py, gpu_check.py and vllm_parity.py, so that
they measure and count the same thing. The FLOP count (:func:`flops_per_step`) is explained
in mfu.py's docstring: 4·N·T + 6·N_lora·T, plus 6·L·h·n² of attention per example.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

MISTRAL_7B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
}
CPU_SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 896,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: GSM8K train with Mistral's tokenizer, prompt + worked answer: mean ≈ 190 tokens, sd ≈ 65.
GSM8K_MEAN, GSM8K_SD, GSM8K_MIN = 190.0, 65.0, 48


def gsm8k_lengths(n: int, max_len: int, seed: int = 0) -> list[int]:
    """``n`` example lengths from a log-normal with GSM8K's mean and spread, within [48, max_len].

    Padding 8 such rows to the longest wastes ~30% of the tokens, as the issue measured.
    """
    sigma2 = math.log(1 + (GSM8K_SD / GSM8K_MEAN) ** 2)
    mu = math.log(GSM8K_MEAN) - sigma2 / 2
    rng = random.Random(seed)
    return [
        min(max_len, max(GSM8K_MIN, round(rng.lognormvariate(mu, math.sqrt(sigma2)))))
        for _ in range(n)
    ]


def model_counts(shape: dict, rank: int) -> tuple[int, int]:
    """(N_base in matmuls, N_lora) of an untied Mistral of ``shape`` with LoRA ``rank`` on all 7
    projections, from the shape alone (checked against the built model in :func:`build`)."""
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = shape["num_key_value_heads"] * h // shape["num_attention_heads"]
    projections = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # (d_in, d_out)
    per_layer = sum(d_in * d_out for d_in, d_out in projections) + 2 * h  # + two RMSNorms
    n_matmul = layers * per_layer + h + shape["vocab_size"] * h  # + final norm, lm_head
    n_lora = layers * sum(rank * (d_in + d_out) for d_in, d_out in projections)
    return n_matmul, n_lora


def flops_per_step(
    n_matmul: int, n_lora: int, layers: int, hidden: int, lengths: list[int]
) -> float:
    """Model FLOPs of one LoRA step on examples of ``lengths`` (module docstring)."""
    attention = sum(6 * layers * hidden * n * n for n in lengths)
    return sum(lengths) * (4 * n_matmul + 6 * n_lora) + attention


@dataclass
class Setup:
    model: object
    device: object
    dtype: object
    n_matmul: int
    n_lora: int
    layers: int
    hidden: int
    vocab: int
    attn: str


def build(shape: dict, rank: int, device, dtype, attn: str, seed: int = 0) -> Setup:
    """A random-weight Mistral of ``shape`` with LoRA on all 7 projections (PEFT's defaults:
    fp32 adapters under a ``dtype`` base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import MistralConfig, MistralForCausalLM

    from gradience.models import quiet_peft_deprecations

    config = MistralConfig(
        **shape, max_position_embeddings=4096, sliding_window=None, tie_word_embeddings=False
    )
    config._attn_implementation = attn
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise directly in the target dtype, on the device
    try:
        with torch.device(device):
            model = MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    n_matmul = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()
    lora = LoraConfig(r=rank, lora_alpha=32, lora_dropout=0.1, target_modules=TARGETS)
    with quiet_peft_deprecations():
        model = get_peft_model(model, lora)  # adapters in fp32 under a bf16 base (PEFT's default)
    model.config.use_cache = False
    trainable = [p for p in model.parameters() if p.requires_grad]
    # the FLOP count rests on these; the analytic count must match the built model
    assert model_counts(shape, rank) == (n_matmul, sum(p.numel() for p in trainable))
    return Setup(
        model,
        device,
        dtype,
        n_matmul,
        sum(p.numel() for p in trainable),
        shape["num_hidden_layers"],
        shape["hidden_size"],
        shape["vocab_size"],
        attn,
    )
