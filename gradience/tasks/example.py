"""One task item, a loaded task, and the seeded choices that make splits reproducible."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gradience.tasks.gsm8k import ANSWER_MARKER, extract_strict


@dataclass(frozen=True)
class Example:
    """One problem: a stable ``id`` (e.g. ``"gsm8k/test/17"``), the question, and the worked
    answer ending in ``#### N`` (GSM8K's format, whatever the task profile)."""

    id: str
    question: str
    answer: str

    def __post_init__(self) -> None:
        if extract_strict(self.answer) is None:
            raise ValueError(
                f"{self.id}: answer does not end in '{ANSWER_MARKER} N': {self.answer[-60:]!r}"
            )

    @property
    def gold(self) -> str:
        """The normalised number after ``####`` (e.g. ``"1234"``, ``"-7"``, ``"2.5"``)."""
        number = extract_strict(self.answer)
        assert number is not None  # checked in __post_init__
        return number


@dataclass(frozen=True)
class TaskData:
    """A loaded task: training items and the fixed, recorded evaluation subset (disjoint).

    ``notes`` says what loading changed (e.g. training items dropped for overlapping eval).
    """

    train: list[Example]
    eval: list[Example]
    name: str = ""
    notes: list[str] = field(default_factory=list, compare=False)

    @property
    def eval_ids(self) -> list[str]:
        return [example.id for example in self.eval]


def question_key(question: str) -> str:
    """Identity of a question for de-duplication: case and whitespace do not matter."""
    return re.sub(r"\s+", " ", question).strip().lower()


def dedupe(examples: Iterable[Example], exclude: Iterable[Example] = ()) -> list[Example]:
    """Examples in order, without repeated questions and without any question in ``exclude``."""
    seen = {question_key(example.question) for example in exclude}
    kept = []
    for example in examples:
        key = question_key(example.question)
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept


def seeded_subset(
    examples: Sequence[Example], n: int | None, seed: int, salt: str
) -> list[Example]:
    """``n`` examples chosen by a seeded shuffle, returned in their original order.

    The choice depends only on (seed, salt, len(examples)), so every variant and training seed
    of an experiment sees the same items. ``n`` None (or ≥ len) keeps everything.
    """
    if n is None or n >= len(examples):
        return list(examples)
    # random.Random seeded with a str hashes it with sha512: stable across runs and platforms.
    rng = random.Random(f"{salt}:{seed}")
    chosen = sorted(rng.sample(range(len(examples)), n))
    return [examples[i] for i in chosen]
