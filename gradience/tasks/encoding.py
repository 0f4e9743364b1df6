"""Prompt, completion and token-level training examples (loss on the completion only).

``encode_example`` never truncates: an example longer than ``max_seq_length`` is returned as
None so the caller drops and reports it. Cutting would remove the ``#### N`` line, and the
model would learn to stop before the answer.

Tokenizers that merge characters across the prompt/completion boundary (a BPE merge of
"Answer:" and " 12", say) would make "the prompt's tokens" ambiguous. We therefore tokenize
the prompt alone (as evaluation will) and the whole text; when the prompt's tokens are a
prefix of the whole text's, the completion is the remainder (the model's natural
tokenization); otherwise the completion is tokenized on its own and appended, so the
prompt tokens the model is trained on are exactly the ones it is conditioned on at eval.
"""

from __future__ import annotations

from typing import Any

from gradience.config import TaskConfig
from gradience.errors import GradienceError
from gradience.tasks.example import Example

IGNORE_INDEX = -100


def build_prompt(task: TaskConfig, example: Example) -> str:
    """The task's prompt template filled with the example's question."""
    return task.prompt_template.replace("{question}", example.question)


def build_completion(example: Example) -> str:
    """What the model learns to write: a space and the worked answer (EOS added when encoding)."""
    return " " + example.answer


def encode_example(
    tokenizer: Any, prompt: str, completion: str, max_seq_length: int
) -> dict[str, list[int]] | None:
    """Token ids, attention mask and labels for one example, or None if it does not fit.

    ``labels`` is -100 on every prompt token (including BOS) and equals ``input_ids`` on the
    completion and the appended EOS; padding is the collator's job (it pads labels with -100).
    """
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise GradienceError(
            "the tokenizer has no eos_token; training needs one to learn to stop",
            field="model.name",
        )
    prompt_ids = _ids(tokenizer, prompt, special=True)
    if prompt_ids and prompt_ids[-1] == eos_id:
        # Some tokenizers append EOS to every sequence; the prompt must stay open-ended.
        prompt_ids = prompt_ids[:-1]
    full_ids = _ids(tokenizer, prompt + completion, special=True)
    if full_ids and full_ids[-1] == eos_id:
        full_ids = full_ids[:-1]
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        completion_ids = full_ids[len(prompt_ids) :]
    else:
        completion_ids = _ids(tokenizer, completion, special=False)
    completion_ids = completion_ids + [eos_id]
    input_ids = prompt_ids + completion_ids
    if len(input_ids) > max_seq_length:
        return None
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
    }


def _ids(tokenizer: Any, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])
