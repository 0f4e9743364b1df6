"""Batched greedy generation: left padding, length-sorted batches, stop at EOS, a stop string,
or the end of the ``#### N`` answer line.

Batching changes nothing but speed (in fp32; half precision below): prompts are left-padded
(so every row's next token sits in the last column) and positions come from the attention
mask, so a row's greedy tokens are those it gets alone. Sorting by prompt length keeps padding, and wasted compute, small.

Finished rows leave the batch. The decoding loop is ours, not ``model.generate``: HF's loop
keeps computing every row until the batch's slowest row ends (finished rows are fed padding),
so each batch costs ``rows x its longest completion``. Here, once a quarter of the running
rows have ended, they are dropped from the inputs and the KV cache
(``DynamicCache.batch_select_indices``): finished rows never exceed a quarter of the rows
computed, and each compaction removes a quarter or more of them, so a batch of n rows copies
its cache at most log(n)/log(4/3) times. Each row's computation is the one HF's loop makes
(the same prefill, positions from the attention mask, fp32 argmax of the last logits), and
so are its tokens: measured on the embedded model (fp32, CPU, one thread) against
``model.generate``, all 1000 of the demo's eval items with a trained probe adapter (batch 250;
``max_new_tokens`` 16, the demo's: 0.919 of generate's row-steps; 48: 0.875) and 300 items of
a noised base model (batch 64, 40 tokens: 0.513) decoded to identical tokens
(tests/test_eval_oom.py compares batched with batch-1 decoding and with ``generate``).
Half-precision sums depend on the batch's shape: with a bf16 base (CPU, the embedded model,
an fp32 LoRA, 64 items, batch 16) this loop still equals ``generate`` on every row, but 10
rows of either differ from batch-1 decoding; so on a bf16 GPU run a batch halved after an
out-of-memory error, like any other batch size, may flip a near-tie.

An out-of-memory batch is halved and retried, and later batches keep the smaller size
(:class:`GenerationStats` records it); only a batch of one prompt that runs out of memory
is an error.
"""

from __future__ import annotations

import gc
import inspect
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gradience.errors import GradienceError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# Extra tokens decoded beyond a stop string's length: a token may decode to zero characters.
_STOP_WINDOW_SLACK = 8
# Tokens decoded to find a finished answer line (a tokenizer that splits digits spends one
# token per digit: "#### 1234567\n" is about ten).
_ANSWER_WINDOW = 24
#: A finished answer line: '####', a number on the same line, then a newline. Generation stops
#: there and the completion ends before the newline, so what a model writes after its answer
#: is neither generated (cost) nor scored.
ANSWER_LINE_RE = re.compile(r"####[^\n]*?\d[^\n]*(?=\n)")


@dataclass(frozen=True)
class Generation:
    """One completion: its text (cut at EOS / the first stop string) and its new token ids."""

    text: str
    token_ids: list[int]


@dataclass
class GenerationStats:
    """What decoding did, filled in by :func:`generate_completions` (recorded in eval.json).

    A row-step is one row in one forward pass (the prefill counts one per row).
    ``row_steps_unpruned`` is what running every batch to its longest completion costs
    (``model.generate``'s loop), so ``row_steps / row_steps_unpruned`` is what dropping
    finished rows saved.
    """

    batch_size_final: int = 0
    oom_retries: int = 0
    row_steps: int = 0
    row_steps_unpruned: int = 0


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The prompt's ids exactly as training conditioned on them (BOS kept, a trailing EOS removed)."""
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return ids


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (an OOM shows up at once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def text_end(text: str, stop_strings: Sequence[str], stop_at_answer: bool) -> int | None:
    """Where a completion ends: at the first stop string or after its answer line; None if open."""
    cuts = [text.find(stop) for stop in stop_strings if stop in text]
    if stop_at_answer:
        line = ANSWER_LINE_RE.search(text)
        if line is not None:
            cuts.append(line.end())
    return min(cuts) if cuts else None


def ending_tokens(
    tokenizer: PreTrainedTokenizerBase, stop_strings: Sequence[str], stop_at_answer: bool
) -> list[int]:
    """Ids of the tokens that can complete an ending: they contain a stop string's last
    character, or a newline (the end of an answer line). Only after one of these can a row's
    text newly end, so only those rows need decoding."""
    last_chars = {s[-1] for s in stop_strings if s}
    if stop_at_answer:
        last_chars.add("\n")
    vocab = len(tokenizer)
    return [
        token
        for token in range(vocab)
        if any(c in tokenizer.decode([token], skip_special_tokens=False) for c in last_chars)
    ]


class _RowEnd:
    """Whether a row's new tokens have ended: EOS, or text that ends (:func:`text_end`).

    Only a token that can complete an ending (:func:`ending_tokens`) makes the check decode
    the row's tail window, so most steps decode nothing.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, stop_strings: Sequence[str], stop_at_answer: bool
    ) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self.stop_at_answer = stop_at_answer
        self.eos = tokenizer.eos_token_id
        checks = bool(stop_strings) or stop_at_answer
        self.could_end = (
            frozenset(ending_tokens(tokenizer, stop_strings, stop_at_answer)) if checks else None
        )
        self.window = _STOP_WINDOW_SLACK + max(
            [len(s) for s in stop_strings] + [_ANSWER_WINDOW if stop_at_answer else 0]
        )

    def __call__(self, ids: list[int]) -> bool:
        if ids[-1] == self.eos:
            return True
        if self.could_end is None or ids[-1] not in self.could_end:
            return False
        tail = self.tokenizer.decode(ids[-self.window :], skip_special_tokens=True)
        return text_end(tail, self.stop_strings, self.stop_at_answer) is not None


def _forward_keywords(model: PreTrainedModel) -> tuple[str, dict[str, int]]:
    """The forward's name for the KV cache (``cache`` since transformers 5, before that
    ``past_key_values``) and, where it has one, the argument that keeps only the last
    position's logits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PeftModel
    params = inspect.signature(type(base).forward).parameters  # the class's, not a wrapper
    cache = "cache" if "cache" in params else "past_key_values"
    for keep in ("logits_to_keep", "num_logits_to_keep"):
        if keep in params:
            return cache, {keep: 1}
    return cache, {}


def _new_cache(model: PreTrainedModel) -> Any:
    """The cache ``generate`` would make: a DynamicCache laid out from the model's config."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers: a DynamicCache takes no config
        return DynamicCache()


def _decode_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[list[int]],
    max_new_tokens: int,
    row_end: _RowEnd,
) -> tuple[list[list[int]], int]:
    """Greedy new tokens of each of ``rows`` (prompt ids; decoded together, left-padded) and
    the row-steps computed. A row stops after the token that ends it; once a quarter of the
    running rows have stopped they leave the batch (inputs, mask, positions, KV cache)."""
    import torch

    device = next(model.parameters()).device
    cache_key, keep_logits = _forward_keywords(model)
    padded = tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")
    inputs = padded["input_ids"].to(device)
    mask = padded["attention_mask"].to(device)
    positions = mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(mask == 0, 0)  # pad positions are masked out
    cache = _new_cache(model)
    live = list(range(len(rows)))  # batch row of each cache row
    new: list[list[int]] = [[] for _ in rows]
    ended = [False] * len(rows)
    row_steps = 0
    for step in range(max_new_tokens):
        output = model(
            input_ids=inputs,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{cache_key: cache},
            **keep_logits,
        )
        tokens = output.logits[:, -1].to(dtype=torch.float32).argmax(dim=-1)
        del output
        row_steps += len(live)
        for row, token in zip(live, tokens.tolist(), strict=True):
            if not ended[row]:
                new[row].append(token)
                ended[row] = row_end(new[row])
        running = [k for k, row in enumerate(live) if not ended[row]]
        if not running or step == max_new_tokens - 1:
            break
        if 4 * (len(live) - len(running)) >= len(live):
            keep = torch.tensor(running, device=device)
            cache.batch_select_indices(keep)
            mask, positions, tokens = mask[keep], positions[keep], tokens[keep]
            live = [live[k] for k in running]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=-1)
        positions = positions[:, -1:] + 1
        inputs = tokens[:, None]
    return new, row_steps


def _out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """torch's out-of-memory error (``torch.OutOfMemoryError`` since torch 2.5, an alias of
    ``torch.cuda.OutOfMemoryError``)."""
    import torch

    errors = {torch.cuda.OutOfMemoryError, getattr(torch, "OutOfMemoryError", None)}
    return tuple(e for e in errors if e is not None)


def _release_after_oom() -> None:
    """Free what the failed batch held before it is retried smaller."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def finish_completion(
    tokenizer: PreTrainedTokenizerBase,
    new_ids: Sequence[int],
    stop_strings: Sequence[str],
    stop_at_answer: bool = False,
) -> Generation:
    """Cut generated ids at the first EOS (dropped) and the text where it ends (``text_end``)."""
    ids = list(new_ids)
    eos = tokenizer.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos) + 1]
    elif tokenizer.pad_token_id is not None:
        # trailing padding is not the model's text (model.generate padded rows that stopped
        # early; the loop above never feeds padding, and the rule is kept as it was)
        while ids and ids[-1] == tokenizer.pad_token_id:
            ids.pop()
    text = tokenizer.decode(ids, skip_special_tokens=True)
    end = text_end(text, stop_strings, stop_at_answer)
    return Generation(text=text if end is None else text[:end], token_ids=ids)


def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    batch_size: int,
    max_new_tokens: int,
    stop_strings: Sequence[str] = (),
    stop_at_answer: bool = False,
    progress: Callable[[int], None] | None = None,
    stats: GenerationStats | None = None,
) -> list[Generation]:
    """Greedy completions of ``prompts`` (returned in the prompts' order).

    ``stop_at_answer`` also ends a row at the end of its ``#### N`` line (GSM8K-style tasks).
    ``progress`` is called with the number of prompts finished in each batch. A batch that
    runs out of device memory is retried at half its size, and the rest run at that size;
    one prompt alone running out is a GradienceError. ``stats`` (if given) receives the
    final batch size, the retries and the row-steps (:class:`GenerationStats`).
    """
    import torch

    stats = stats if stats is not None else GenerationStats()
    stop_strings = [s for s in stop_strings if s]
    tokenizer.padding_side = "left"
    encoded = [prompt_token_ids(tokenizer, prompt) for prompt in prompts]
    row_end = _RowEnd(tokenizer, stop_strings, stop_at_answer)
    out_of_memory = _out_of_memory_errors()
    order = [i for batch in length_sorted_batches([len(ids) for ids in encoded], 1) for i in batch]
    results: list[Generation | None] = [None] * len(prompts)
    size = max(1, batch_size)
    start = 0
    while start < len(order):
        batch = order[start : start + size]
        try:
            with torch.inference_mode():
                new, row_steps = _decode_batch(
                    model, tokenizer, [encoded[i] for i in batch], max_new_tokens, row_end
                )
        except out_of_memory:
            new = None
        if new is None:
            longest = max(len(encoded[i]) for i in batch)
            if len(batch) == 1:
                raise GradienceError(
                    f"generation ran out of device memory on a single prompt ({longest} "
                    f"tokens + {max_new_tokens} new): lower task.max_new_tokens or free memory",
                    field="task.max_new_tokens",
                )
            size = len(batch) // 2
            stats.oom_retries += 1
            log.warning(
                "generation ran out of memory on a batch of %d prompts (longest %d tokens); "
                "retrying it, and the rest, at batch size %d",
                len(batch),
                longest,
                size,
            )
            _release_after_oom()
            continue
        stats.row_steps += row_steps
        stats.row_steps_unpruned += len(batch) * max((len(ids) for ids in new), default=0)
        for index, ids in zip(batch, new, strict=True):
            results[index] = finish_completion(tokenizer, ids, stop_strings, stop_at_answer)
        start += len(batch)
        if progress is not None:
            progress(len(batch))
    stats.batch_size_final = size
    return [r for r in results if r is not None]
