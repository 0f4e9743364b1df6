"""Paired initialisation: every variant of one seed starts from the probe's LoRA init.

Variants of a seed are compared pairwise, so they should differ only in rank. PEFT draws each
module's A from the global RNG stream, whose consumption depends on every earlier module's
rank: after the first module whose rank differs, two variants' inits are unrelated. Here each
module's A comes from its own generator, seeded by (run seed, module name); ``probe_r`` rows
are drawn and a variant of rank r keeps the first r, so wherever two variants' ranks overlap
they start from identical rows. The distribution is PEFT's default (``kaiming_uniform_`` with
a = √5: U(−1/√d_in, 1/√d_in), a scale that depends on d_in only, not on the rank). B stays
zero, as PEFT initialises it, so the adapted model starts equal to the base model.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

from gradience.train.lora_build import ADAPTER_NAME, lora_layers

if TYPE_CHECKING:
    import torch
    from peft import PeftModel


def module_init_seed(seed: int, module_name: str) -> int:
    """A 63-bit generator seed from (run seed, module name): stable across runs and machines."""
    digest = hashlib.sha256(f"gradience-lora-A:{seed}:{module_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def paired_lora_a(seed: int, module_name: str, rows: int, d_in: int) -> torch.Tensor:
    """``rows`` × ``d_in`` float32 draws of PEFT's default A init from the module's own generator."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(module_init_seed(seed, module_name))
    weight = torch.empty(rows, d_in, dtype=torch.float32)
    return torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)


def apply_paired_init(peft_model: PeftModel, seed: int, probe_r: int) -> None:
    """Overwrite every LoRA A with the first r_i rows of its module's ``max(probe_r, r_i)``-row draw."""
    import torch

    for name, layer in lora_layers(peft_model).items():
        weight = layer.lora_A[ADAPTER_NAME].weight
        rank, d_in = weight.shape
        draw = paired_lora_a(seed, name, max(probe_r, rank), d_in)
        with torch.no_grad():
            weight.copy_(draw[:rank].to(dtype=weight.dtype, device=weight.device))
