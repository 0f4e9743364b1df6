"""The generation batch size: pinned by ``task.eval_batch_size``, or sized to free memory.

Greedy decoding is bound by reading the weights once per step, whatever the batch: the larger
the batch, the more items per read, until the KV cache fills the accelerator. With
``task.eval_batch_size: auto`` a CUDA evaluation takes as many rows as fit in the free memory
(``torch.cuda.mem_get_info``), counting per row the KV cache of its longest possible sequence
(prompt + ``max_new_tokens``), the prefill's activations (with an unmerged LoRA adapter, the
temporaries PEFT's LoRA layers add: :class:`LoraShape`) and the last-token logits. On CPU and
MPS (no free-memory query; batches past a few dozen rows gain little there) it is
:data:`CPU_BATCH_SIZE`. The estimate is a guide, not a guarantee: an out-of-memory batch is
halved and retried (:func:`gradience.evaluate.generate.generate_completions`).

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


@dataclass(frozen=True)
class LoraShape:
    """What an unmerged LoRA adapter adds to the prefill's peak, read from the PeftModel.

    ``modules``: the distinct ``(d_in, d_out, r)`` of the adapted Linear layers; ``dtype_bytes``:
    the adapter weights' dtype; ``casts_input``: whether PEFT casts each layer's input to that
    dtype (``cast_input_dtype_enabled``, on unless a caller turned it off).
    """

    dtype_bytes: int
    modules: tuple[tuple[int, int, int], ...]
    casts_input: bool = True

    def prefill_bytes_per_token(self, compute_bytes: int) -> int:
        """Peak bytes per prompt token that LoRA layers hold on top of the base model's.

        PEFT's ``lora.Linear.forward`` (as in peft 0.21; older releases cast with ``x.to``)
        computes, for an input ``x`` of width ``d_in`` in the compute dtype (``c`` bytes) and
        adapter weights of ``a`` bytes (vanilla LoRA; DoRA's extra terms are not counted)::

            result = base_layer(x)                    # c*d_out: the base model's own output
            x = x.to(lora_A.dtype)                    # a*d_in, when a != c and casting is on
            result = result + lora_B(lora_A(x)) * s   # A·x: a*r; B·(A·x): a*d_out;
                                                      # ·s: a*d_out; the sum: p*d_out
            result = result.to(c)                     # replaces the base output

        where ``p = max(a, c)`` is the promoted dtype of the sum. Every temporary is freed by
        the time the layer returns, and layers run in turn, so only the largest module counts.
        At its stages the extra live bytes per token are
        ``cast + a*r + a*d_out`` (inside lora_B), ``cast + 2a*d_out`` (the scaling),
        ``cast + a*d_out + p*d_out`` (the sum) and ``cast + p*d_out`` (the cast back), so the
        peak is ``cast + a*d_out + max(a*r, p*d_out)``. Mistral-7B's gate_proj, fp32 adapter on
        a bf16 base: 4*4096 + 4*14336 + 4*14336 = 128 KiB per token, as much as its KV cache.
        (tests/test_eval_batch_size.py checks this against the live bytes of a PEFT layer.)
        """
        a, c = self.dtype_bytes, compute_bytes
        p = max(a, c)
        return max(
            (
                (a * d_in if self.casts_input and a != c else 0) + a * d_out + max(a * r, p * d_out)
                for d_in, d_out, r in self.modules
            ),
            default=0,
        )

    @classmethod
    def from_model(cls, model: Any) -> LoraShape | None:
        """The active, unmerged LoRA Linear layers of ``model`` (None: no such layer, e.g. a
        base model, or peft not installed)."""
        try:
            from peft.tuners.lora import LoraLayer
        except ImportError:  # pragma: no cover - peft is a dependency
            return None
        import torch

        shapes: set[tuple[int, int, int]] = set()
        dtype_bytes = 0
        casts = True
        for module in model.modules():
            if not isinstance(module, LoraLayer) or getattr(module, "merged", False):
                continue
            if getattr(module, "disable_adapters", False):
                continue
            if not isinstance(module.get_base_layer(), torch.nn.Linear):
                continue
            for name in module.active_adapters:
                if name not in module.lora_A:
                    continue
                a_weight, b_weight = module.lora_A[name].weight, module.lora_B[name].weight
                shapes.add((a_weight.shape[1], b_weight.shape[0], a_weight.shape[0]))
                dtype_bytes = max(dtype_bytes, a_weight.element_size())
                casts = casts and getattr(module, "cast_input_dtype_enabled", True)
        if not shapes:
            return None
        return cls(dtype_bytes=dtype_bytes, modules=tuple(sorted(shapes)), casts_input=casts)


def generation_bytes_per_row(
    shape: GenerationShape,
    prompt_tokens: int,
    new_tokens: int,
    *,
    adapter: LoraShape | None = None,
) -> int:
    """Peak memory one row of a batch adds while generating.

    KV cache for the whole sequence; the prefill's largest live activations (one layer at a
    time under inference mode: hidden states, the MLP's gate/up/act, the attention scores of
    an eager kernel), plus, with an unmerged LoRA ``adapter``, its layers' temporaries
    (:meth:`LoraShape.prefill_bytes_per_token`: PEFT's fp32 copy of each layer's input and
    the fp32 LoRA product, per prompt token); fp32 logits of the last position and their
    processed copy.
    """
    kv = shape.kv_bytes_per_token * (prompt_tokens + new_tokens)
    prefill = prompt_tokens * (4 * shape.hidden + 3 * shape.intermediate) * shape.dtype_bytes
    if adapter is not None:
        prefill += prompt_tokens * adapter.prefill_bytes_per_token(shape.dtype_bytes)
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
    """``pinned`` if it is a number; else sized to the free memory of the model's device
    (counting an unmerged LoRA adapter's prefill temporaries when ``model`` carries one)."""
    import torch

    if not isinstance(pinned, str):
        return BatchSize(int(pinned), "config")
    parameter = next(model.parameters())
    if parameter.device.type != "cuda":
        return BatchSize(CPU_BATCH_SIZE, "cpu default")
    free, _total = torch.cuda.mem_get_info(parameter.device)
    dtype = getattr(model, "dtype", parameter.dtype)  # the compute dtype: the KV cache's
    shape = GenerationShape.from_config(model.config, dtype.itemsize)
    per_row = generation_bytes_per_row(
        shape,
        max(prompt_lengths, default=1),
        max_new_tokens,
        adapter=LoraShape.from_model(model),
    )
    return BatchSize(batch_size_for_memory(free, per_row, len(prompt_lengths)), "free memory")
