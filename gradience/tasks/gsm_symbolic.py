"""Offline GSM-style problems from reasoning-gym's ``gsm_symbolic`` generator.

GSM-Symbolic re-instantiates GSM8K templates with new names and numbers, so the items read
like GSM8K (multi-step, chain-of-thought answers) and need no network. reasoning-gym writes
the worked solution in ``metadata["answer_cot"]``, normally ending in ``#### N`` already
(sometimes as ``#### 81.0``); we rewrite that last line as ``#### <answer>`` from the item's
authoritative ``answer``, append it where it is missing, and drop the rare item whose
worked number disagrees with its answer. The generator's trailing instruction ("Give the
result as your final answer. Do not include units.") is removed: the prompt template is ours.

Eval items are generated first (seed ``data_seed``), then training items from another seed,
skipping any question already used, so the two splits are disjoint by question text.
"""

from __future__ import annotations

import re

from gradience.config import TaskConfig
from gradience.errors import GradienceError
from gradience.tasks.example import Example, dedupe
from gradience.tasks.gsm8k import ANSWER_MARKER, extract_strict, normalize_number, numbers_equal

_INSTRUCTION_RE = re.compile(
    r"\s*Give the result as your final answer\.\s*Do not include units\.\s*$"
)
_FINAL_LINE_RE = re.compile(r"\n?####[^\n]*\s*$")
# Training items are drawn from a seed far from the eval seed so the generators' streams differ.
_TRAIN_SEED_OFFSET = 1_000_003


def load_gsm_symbolic(task: TaskConfig) -> tuple[list[Example], list[Example]]:
    """(train, eval) lists of sizes generated_train_size / generated_eval_size (or fewer)."""
    eval_size, train_size = task.generated_eval_size, task.generated_train_size
    eval_items = dedupe(_generate(task.data_seed, _oversampled(eval_size), "eval"))[:eval_size]
    train_pool = _generate(task.data_seed + _TRAIN_SEED_OFFSET, _oversampled(train_size), "train")
    train_items = dedupe(train_pool, exclude=eval_items)[:train_size]
    return train_items, eval_items


def _oversampled(size: int) -> int:
    # A few generated items repeat a question or are dropped as inconsistent (~0.5% measured);
    # generating 5% more keeps the requested sizes without a retry loop.
    return size + size // 20 + 10


def _generate(seed: int, size: int, split: str) -> list[Example]:
    try:
        import reasoning_gym
    except ImportError:
        raise GradienceError(
            "the gsm_symbolic profile needs the 'reasoning-gym' package (pip install 'gradience[bench]')",
            field="task.name",
        ) from None
    dataset = reasoning_gym.create_dataset("gsm_symbolic", seed=seed, size=size)
    examples = []
    for index, item in enumerate(dataset):
        answer = gsm8k_answer(item["metadata"].get("answer_cot", ""), str(item["answer"]))
        if answer is not None:
            question = _INSTRUCTION_RE.sub("", item["question"]).strip()
            examples.append(
                Example(id=f"gsm_symbolic/{split}/{index}", question=question, answer=answer)
            )
    return examples


def gsm8k_answer(worked: str, answer: str) -> str | None:
    """The worked solution ending in ``#### <answer>``; None if it contradicts ``answer``."""
    number = normalize_number(answer)
    if number is None:
        return None
    stated = extract_strict(worked)
    if stated is not None and not numbers_equal(stated, number):
        return None
    body = _FINAL_LINE_RE.sub("", worked).rstrip()
    return f"{body}\n{ANSWER_MARKER} {number}" if body else f"{ANSWER_MARKER} {number}"
