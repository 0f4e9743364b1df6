"""Training data: tokenized examples with the prompt masked out of the loss, and their collators.

``DataCollatorForLanguageModeling`` would rebuild ``labels`` from ``input_ids`` and put the
prompt back into the loss; :class:`CompletionCollator` only pads, keeping the task's labels.

Padding-free training (:func:`training_collator`): transformers' ``DataCollatorWithFlattening``
puts a batch's examples end to end in one row with ``position_ids`` restarting at 0 for each,
and no attention mask; attention then stays inside each example (flash-attention's varlen
kernels, or the block-diagonal mask transformers builds for sdpa/eager from the position ids).
The same examples make the same step, and the loss is the same per-token mean over the same
answer tokens (the first label of each example is -100 in both layouts, so no token is
predicted across a boundary); only the padding (about a third of the tokens on GSM8K) is gone.

With flash-attention (``model.attn_implementation: flash_attention_2``) the flattened batch
also carries the varlen kernel's own arguments, ``cu_seq_lens_q/k`` (each example's start
offset, and the total) and ``max_length_q/k`` (the longest example), computed once per batch
on the host by the collator. Without them transformers derives them from ``position_ids`` in
every attention layer, with device-to-host reads each time (32 layers on Mistral-7B).
sdpa and eager batches do not carry them (their block-diagonal mask comes from
``position_ids``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradience.errors import GradienceError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from gradience.config import TaskConfig
    from gradience.tasks import Example

IGNORE_INDEX = -100


@dataclass
class EncodedExamples:
    """Tokenized examples (``input_ids``, ``attention_mask``, ``labels`` lists) and what was dropped."""

    features: list[dict[str, list[int]]]
    ids: list[str]
    dropped_ids: list[str] = field(default_factory=list)


#: Encoded example sets of this process, newest last: every job of a run encodes the same
#: training items with the same tokenizer (a worker runs many jobs). Keyed by content.
_ENCODED: dict[str, EncodedExamples] = {}
_ENCODED_KEEP = 4


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, task: TaskConfig, examples: Sequence[Example]
) -> EncodedExamples:
    """Prompt + completion + EOS per example; over-long ones are dropped (never cut) and counted.

    Remembered per process by content (the tokenizer's vocabulary and class, the task
    settings, every example's id, question and answer), and returned as a fresh copy, so a
    caller may change what it gets."""
    key = _encoding_key(tokenizer, task, examples)
    if key not in _ENCODED:
        _ENCODED[key] = _encode(tokenizer, task, examples)
        while len(_ENCODED) > _ENCODED_KEEP:
            del _ENCODED[next(iter(_ENCODED))]
    cached = _ENCODED[key]
    return EncodedExamples(
        features=[{k: list(v) for k, v in feature.items()} for feature in cached.features],
        ids=list(cached.ids),
        dropped_ids=list(cached.dropped_ids),
    )


def _encoding_key(tokenizer: Any, task: TaskConfig, examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    vocabulary = sorted(tokenizer.get_vocab().items())
    for part in (type(tokenizer).__name__, repr(vocabulary), repr(tokenizer.eos_token_id)):
        digest.update(part.encode("utf-8"))
    digest.update(task.model_dump_json().encode("utf-8"))
    for example in examples:
        digest.update(f"\0{example.id}\0{example.question}\0{example.answer}".encode())
    return digest.hexdigest()


def _encode(
    tokenizer: PreTrainedTokenizerBase, task: TaskConfig, examples: Sequence[Example]
) -> EncodedExamples:
    from gradience.tasks import build_completion, build_prompt, encode_example

    encoded = EncodedExamples(features=[], ids=[])
    for example in examples:
        feature = encode_example(
            tokenizer, build_prompt(task, example), build_completion(example), task.max_seq_length
        )
        if feature is None:
            encoded.dropped_ids.append(example.id)
            continue
        encoded.features.append(
            {key: list(feature[key]) for key in ("input_ids", "attention_mask", "labels")}
        )
        encoded.ids.append(example.id)
    if not encoded.features:
        raise GradienceError(
            f"all {len(examples)} examples are longer than max_seq_length={task.max_seq_length} tokens",
            field="task.max_seq_length",
        )
    return encoded


class FeatureDataset:
    """A map-style dataset over already tokenized features (what the Trainer's sampler indexes)."""

    def __init__(self, features: Sequence[dict[str, list[int]]]):
        self.features = list(features)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.features[index]


@dataclass(frozen=True)
class CompletionCollator:
    """Right-pads a batch: ``input_ids`` with the pad id, ``attention_mask`` with 0, ``labels`` with -100."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch = {}
        for key, value in fill.items():
            rows = [list(f[key]) + [value] * (longest - len(f[key])) for f in features]
            batch[key] = torch.tensor(rows, dtype=torch.long)
        return batch


#: Attention implementations for which transformers keeps packed sequences apart.
PACKING_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
#: Those whose varlen kernels take the sequence boundaries as ``cu_seq_lens_q/k`` arguments.
FLASH_ATTENTION = ("flash_attention_2", "flash_attention_3")


def attention_implementation(model: Any) -> str | None:
    """The attention implementation the model runs (``config._attn_implementation``)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def supports_padding_free(model: Any) -> bool:
    """Whether this transformers and the model's attention keep flattened examples apart."""
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:  # older transformers: sdpa/eager would attend across examples
        return False
    return attention_implementation(model) in PACKING_ATTENTION


def training_collator(padding_free: bool | None, model: Any, pad_token_id: int) -> tuple[Any, bool]:
    """The collator for training and held-out loss, and whether it flattens.

    ``padding_free`` None decides by :func:`supports_padding_free`; True insists (an error
    where the attention cannot keep examples apart); False always pads. A flattening
    collator for a flash-attention model also returns the flash kwargs (module docstring).
    """
    supported = supports_padding_free(model)
    if padding_free is True and not supported:
        impl = attention_implementation(model)
        raise GradienceError(
            f"padding-free training needs an attention implementation that keeps packed "
            f"sequences apart ({', '.join(PACKING_ATTENTION)}); this model uses {impl!r}",
            field="train.padding_free",
        )
    if padding_free is False or not supported:
        return CompletionCollator(pad_token_id=pad_token_id), False
    return flattening_collator(attention_implementation(model) in FLASH_ATTENTION), True


def flattening_collator(flash_kwargs: bool) -> Any:
    """transformers' ``DataCollatorWithFlattening``: position ids, -100 between examples, and
    with ``flash_kwargs`` the varlen boundaries (where this transformers offers them: added by
    huggingface/transformers#36456 in 2025; older ones leave flash-attention to derive them
    from the position ids, correct but slower)."""
    import inspect

    from transformers import DataCollatorWithFlattening

    options: dict[str, Any] = {"return_position_ids": True, "separator_id": IGNORE_INDEX}
    offered = inspect.signature(DataCollatorWithFlattening.__init__).parameters
    if flash_kwargs and "return_flash_attn_kwargs" in offered:
        options["return_flash_attn_kwargs"] = True
    return DataCollatorWithFlattening(**options)
