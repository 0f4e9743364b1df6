"""The generation batch size: pinned by ``task.eval_batch_size``, or sized to free memory.

Greedy decoding is bound by reading the weights once per step, whatever the batch: the larger
the batch, the more items per read, until the KV cache fills the accelerator. With
``task.eval_batch_size: auto`` a CUDA evaluation takes as many rows as fit in the free memory
(``torch.cuda.mem_get_info``), counting per row the KV cache of its longest possible sequence
(prompt + ``max_new_tokens``), the prefill's activations and the last-token logits. On CPU and
MPS (no free-memory query; batches past a few dozen rows gain little there) it is
:data:`CPU_BATCH_SIZE`.

The math (:func:`generation_bytes_per_row`, :func:`batch_size_for_memory`) is pure; the
mechanism test decides once per seed, in the probe's job, and every variant of the seed
evaluates at that size (see ``gradience.experiment.jobs``): the same batches for every variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Batch size of an unpinned evaluation off CUDA (the former default of task.eval_batch_size).
CPU_BATCH_SIZE = 16
#: Share of the free memory the batch may fill: the rest absorbs allocator fragmentation and
#: the temporaries this estimate leaves out.
USABLE_FRACTION = 0.8
#: Largest batch chosen: beyond it decoding is compute-bound and only latency grows.
MAX_BATCH_SIZE = 512


@dataclass(frozen=True)
class GenerationShape:
    """What a decoder's generation memory depends on, read from its config."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    dtype_bytes: int

    @classmethod
    def from_config(cls, config: Any, dtype_bytes: int) -> GenerationShape:
        """From a transformers config (Llama/Mistral/GPT-2 style attribute names)."""
        hidden = _first(config, "hidden_size", "n_embd", "d_model")
        heads = _first(config, "num_attention_heads", "n_head")
        return cls(
            layers=_first(config, "num_hidden_layers", "n_layer"),
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or hidden // heads,
            hidden=hidden,
            intermediate=getattr(config, "intermediate_size", None)
            or getattr(config, "n_inner", None)
            or 4 * hidden,
            vocab=_first(config, "vocab_size"),
            dtype_bytes=dtype_bytes,
        )

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of every layer for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


def _first(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value:
            return int(value)
    raise ValueError(f"the model config has none of {names}")


def generation_bytes_per_row(shape: GenerationShape, prompt_tokens: int, new_tokens: int) -> int:
    """Peak memory one row of a batch adds while generating.

    KV cache for the whole sequence; the prefill's largest live activations (one layer at a
    time under inference mode: hidden states, the MLP's gate/up/act, the attention scores of
    an eager kernel); fp32 logits of the last position and their processed copy.
    """
    kv = shape.kv_bytes_per_token * (prompt_tokens + new_tokens)
    prefill = prompt_tokens * (4 * shape.hidden + 3 * shape.intermediate) * shape.dtype_bytes
    scores = shape.heads * prompt_tokens * prompt_tokens * shape.dtype_bytes
    logits = 3 * shape.vocab * 4
    return kv + prefill + scores + logits


def batch_size_for_memory(
    free_bytes: int,
    bytes_per_row: int,
    n_items: int,
    *,
    usable_fraction: float = USABLE_FRACTION,
    max_batch: int = MAX_BATCH_SIZE,
) -> int:
    """Rows that fit in ``usable_fraction`` of ``free_bytes``: at least 1, at most
    ``max_batch`` and no more than there are items."""
    if bytes_per_row <= 0:
        raise ValueError("bytes_per_row must be positive")
    fits = int(free_bytes * usable_fraction) // bytes_per_row
    return max(1, min(fits, max_batch, max(n_items, 1)))


@dataclass(frozen=True)
class BatchSize:
    """The batch size an evaluation uses, and where it came from (recorded in eval.json)."""

    size: int
    source: str  # "config", "free memory", "cpu default" or "run" (decided by an earlier job)


def choose_eval_batch_size(
    pinned: int | str, model: Any, prompt_lengths: Sequence[int], max_new_tokens: int
) -> BatchSize:
    """``pinned`` if it is a number; else sized to the free memory of the model's device."""
    import torch

    if not isinstance(pinned, str):
        return BatchSize(int(pinned), "config")
    parameter = next(model.parameters())
    if parameter.device.type != "cuda":
        return BatchSize(CPU_BATCH_SIZE, "cpu default")
    free, _total = torch.cuda.mem_get_info(parameter.device)
    dtype = getattr(model, "dtype", parameter.dtype)  # the compute dtype: the KV cache's
    shape = GenerationShape.from_config(model.config, dtype.itemsize)
    per_row = generation_bytes_per_row(shape, max(prompt_lengths, default=1), max_new_tokens)
    return BatchSize(batch_size_for_memory(free, per_row, len(prompt_lengths)), "free memory")
