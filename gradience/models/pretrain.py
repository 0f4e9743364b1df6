"""Pre-train the embedded model: a plain causal-LM loop over packed corpus blocks.

A hand-written loop rather than ``Trainer``: ~700 tiny steps where Trainer's per-step
overhead would be a large share, and nothing to checkpoint (the result is cached whole).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from gradience.models.corpus import corpus_texts


def packed_blocks(tokenizer: Any, n_blocks: int, block_len: int, seed: int) -> torch.Tensor:
    """``n_blocks`` × ``block_len`` token ids: documents as ``<s> text </s>`` packed end to end."""
    needed = n_blocks * block_len
    stream: list[int] = []
    texts = corpus_texts(seed)
    while len(stream) < needed:
        batch = [next(texts) for _ in range(4096)]
        for ids in tokenizer(batch, add_special_tokens=True)["input_ids"]:
            stream.extend(ids)
            stream.append(tokenizer.eos_token_id)
    return torch.tensor(stream[:needed], dtype=torch.long).view(n_blocks, block_len)


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def pretrain(
    model: torch.nn.Module,
    blocks: torch.Tensor,
    *,
    batch_size: int,
    learning_rate: float,
    betas: tuple[float, float],
    weight_decay: float,
    warmup_steps: int,
    min_lr_ratio: float,
    max_grad_norm: float,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
) -> float:
    """Train ``model`` in place on ``blocks`` (one pass); returns the mean loss of the last 10% of steps."""
    steps = blocks.shape[0] // batch_size
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(blocks.shape[0], generator=generator)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, steps, min_lr_ratio)
    )
    model.train()
    tail_losses: list[float] = []
    for step in range(steps):
        batch = blocks[order[step * batch_size : (step + 1) * batch_size]]
        loss = model(input_ids=batch, labels=batch).loss
        if not torch.isfinite(loss):
            raise RuntimeError(
                f"embedded model pre-training diverged at step {step} (loss {loss.item()})"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        if step >= steps - max(1, steps // 10):
            tail_losses.append(loss.item())
        if on_step is not None:
            on_step(step, loss.item())
    model.eval()
    return sum(tail_losses) / len(tail_losses)
