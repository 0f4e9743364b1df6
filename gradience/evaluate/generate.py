"""Batched greedy generation: left padding, length-sorted batches, stop at EOS or a stop string.

Batching changes nothing but speed: prompts are left-padded (so every row's next token sits
in the last column) and positions come from the attention mask, so a row's greedy tokens are
those it gets alone. Sorting by prompt length keeps padding, and wasted compute, small.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Extra tokens decoded beyond a stop string's length: a token may decode to zero characters.
_STOP_WINDOW_SLACK = 8


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


def _stop_criteria(
    tokenizer: PreTrainedTokenizerBase, stop_strings: Sequence[str], prompt_width: int
) -> Any:
    """A per-row StoppingCriteria: True for rows whose new text contains a stop string."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    window = max(len(s) for s in stop_strings) + _STOP_WINDOW_SLACK

    class StopOnStrings(StoppingCriteria):
        def __call__(
            self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any
        ) -> torch.BoolTensor:
            start = max(prompt_width, input_ids.shape[1] - window)
            tails = tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
            done = [any(stop in tail for stop in stop_strings) for tail in tails]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnStrings()])


def finish_completion(
    tokenizer: PreTrainedTokenizerBase, new_ids: Sequence[int], stop_strings: Sequence[str]
) -> Generation:
    """Cut generated ids at the first EOS (dropped) and the text at the first stop string."""
    ids = list(new_ids)
    eos = tokenizer.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos) + 1]
    elif tokenizer.pad_token_id is not None:
        # a row stopped by a stop string is padded to the batch's longest row
        while ids and ids[-1] == tokenizer.pad_token_id:
            ids.pop()
    text = tokenizer.decode(ids, skip_special_tokens=True)
    cuts = [text.find(stop) for stop in stop_strings if stop in text]
    if cuts:
        text = text[: min(cuts)]
    return Generation(text=text, token_ids=ids)


def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    batch_size: int,
    max_new_tokens: int,
    stop_strings: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Greedy completions of ``prompts`` (returned in the prompts' order).

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
                stopping_criteria=_stop_criteria(tokenizer, stop_strings, width)
                if stop_strings
                else None,
            )
        for row, index in enumerate(batch):
            results[index] = finish_completion(
                tokenizer, output[row, width:].tolist(), stop_strings
            )
        if progress is not None:
            progress(len(batch))
    return [r for r in results if r is not None]
