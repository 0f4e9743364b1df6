"""Batched greedy generation: left padding, length-sorted batches, stop at EOS, a stop string,
or the end of the ``#### N`` answer line.

Batching changes nothing but speed: prompts are left-padded (so every row's next token sits
in the last column) and positions come from the attention mask, so a row's greedy tokens are
those it gets alone. Sorting by prompt length keeps padding, and wasted compute, small.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

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


def _stop_criteria(
    tokenizer: PreTrainedTokenizerBase,
    stop_strings: Sequence[str],
    prompt_width: int,
    stop_at_answer: bool,
    could_end: torch.Tensor,
) -> Any:
    """A per-row StoppingCriteria: True for rows whose new text has ended (see ``text_end``).

    The check starts on the device: a row whose newest token cannot complete an ending
    (``could_end``, a boolean per vocabulary id) is not decoded at all; the few that can are
    decoded over a short tail window on the host.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    window = max([len(s) for s in stop_strings] + [_ANSWER_WINDOW if stop_at_answer else 0])
    window += _STOP_WINDOW_SLACK

    class StopAtEnd(StoppingCriteria):
        def __init__(self) -> None:
            self.done: torch.Tensor | None = None

        def __call__(
            self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any
        ) -> torch.BoolTensor:
            if self.done is None:
                self.done = torch.zeros(
                    input_ids.shape[0], dtype=torch.bool, device=input_ids.device
                )
            candidates = could_end.to(input_ids.device)[input_ids[:, -1]] & ~self.done
            rows = candidates.nonzero().flatten().tolist()
            if rows:
                start = max(prompt_width, input_ids.shape[1] - window)
                tails = tokenizer.batch_decode(input_ids[rows, start:], skip_special_tokens=True)
                for row, tail in zip(rows, tails, strict=True):
                    if text_end(tail, stop_strings, stop_at_answer) is not None:
                        self.done[row] = True
            return self.done.clone()

    return StoppingCriteriaList([StopAtEnd()])


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
        # a row stopped by a stop string is padded to the batch's longest row
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
) -> list[Generation]:
    """Greedy completions of ``prompts`` (returned in the prompts' order).

    ``stop_at_answer`` also ends a row at the end of its ``#### N`` line (GSM8K-style tasks).
    ``progress`` is called with the number of prompts finished in each batch.
    """
    import torch
    from transformers import GenerationConfig

    stop_strings = [s for s in stop_strings if s]
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    tokenizer.padding_side = "left"
    encoded = [prompt_token_ids(tokenizer, prompt) for prompt in prompts]
    results: list[Generation | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    could_end = None
    if stop_strings or stop_at_answer:
        # the model's vocabulary may be padded beyond the tokenizer's: size the table for both
        vocab = max(len(tokenizer), int(getattr(model.config, "vocab_size", 0) or 0))
        could_end = torch.zeros(vocab, dtype=torch.bool)
        could_end[ending_tokens(tokenizer, stop_strings, stop_at_answer)] = True
        could_end = could_end.to(device)
    for batch in length_sorted_batches([len(ids) for ids in encoded], batch_size):
        padded = tokenizer.pad(
            {"input_ids": [encoded[i] for i in batch]}, padding=True, return_tensors="pt"
        )
        width = padded["input_ids"].shape[1]
        with torch.inference_mode():
            output = model.generate(
                input_ids=padded["input_ids"].to(device),
                attention_mask=padded["attention_mask"].to(device),
                generation_config=generation_config,
                stopping_criteria=_stop_criteria(
                    tokenizer, stop_strings, width, stop_at_answer, could_end
                )
                if could_end is not None
                else None,
            )
        for row, index in enumerate(batch):
            results[index] = finish_completion(
                tokenizer, output[row, width:].tolist(), stop_strings, stop_at_answer
            )
        if progress is not None:
            progress(len(batch))
    return [r for r in results if r is not None]
