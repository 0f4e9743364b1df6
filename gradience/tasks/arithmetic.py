"""Offline one-step word problems: the task the embedded CPU model is fine-tuned on.

Problems like "Mia has 23 shells and finds 9 more. How many shells does Mia have now?" with
the answer ``23+9=32 #### 32``: one of +, −, × applied to two operands (≤ 99 for + and −,
2..19 times 2..9 for ×), a few templates, names and items. The embedded model is
pre-trained on these very templates (:mod:`gradience.models.corpus`) but not on the
``Question: … Answer:`` frame, so LoRA learns the frame and the accuracy it reaches is
bounded by the base's arithmetic: 0.63-0.64 for every variant of the demo after 150 steps,
on a slowly rising curve (experiments/README.md, "The demo's setting").

Eval items are generated first from ``data_seed``, training items from a derived seed,
skipping any question text already used, so the splits are disjoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gradience.config import TaskConfig
from gradience.tasks.example import Example, question_key

NAMES = ("Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Max", "Emma", "Leo", "Zoe", "Jack", "Nora")
ITEMS = (
    "apples",
    "books",
    "coins",
    "pens",
    "cards",
    "eggs",
    "shells",
    "stamps",
    "marbles",
    "cookies",
)

ADD_MAX = 99
SUB_MAX = 99
MUL_MAX = 9
MUL_A_MAX = 19

TEMPLATES = {
    "+": (
        "{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?",
        "{name} had {a} {item}. {other} gave {name} {b} more {item}. How many {item} does {name} have?",
        "{name} found {a} {item} on Monday and {b} {item} on Tuesday. How many {item} did {name} find in all?",
    ),
    "-": (
        "{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?",
        "{name} had {a} {item} and lost {b} of them. How many {item} are left?",
        "{name} has {a} {item}. {other} takes {b} of them. How many {item} does {name} have now?",
    ),
    "*": (
        "{name} has {a} boxes with {b} {item} in each box. How many {item} does {name} have?",
        "{name} buys {a} bags of {item}. Each bag holds {b} {item}. How many {item} does {name} buy?",
        "There are {a} rows of {item} with {b} {item} in each row. How many {item} are there?",
    ),
}
OPERATIONS = tuple(TEMPLATES)
# Training items use a seed derived from data_seed, far away so the two streams never coincide.
_TRAIN_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class Problem:
    """One generated problem before it becomes an Example."""

    question: str
    a: int
    b: int
    op: str

    @property
    def result(self) -> int:
        return (
            self.a + self.b
            if self.op == "+"
            else self.a - self.b
            if self.op == "-"
            else self.a * self.b
        )

    @property
    def answer(self) -> str:
        return f"{self.a}{self.op}{self.b}={self.result} #### {self.result}"


def sample_operands(rng: random.Random, op: str) -> tuple[int, int]:
    """Two operands in the plateau ranges; subtraction never goes below zero."""
    if op == "+":
        return rng.randint(1, ADD_MAX), rng.randint(1, ADD_MAX)
    if op == "-":
        a = rng.randint(2, SUB_MAX)
        return a, rng.randint(1, a - 1)
    return rng.randint(2, MUL_A_MAX), rng.randint(2, MUL_MAX)


def sample_problem(rng: random.Random) -> Problem:
    op = rng.choice(OPERATIONS)
    a, b = sample_operands(rng, op)
    name, other = rng.sample(NAMES, 2)
    template = rng.choice(TEMPLATES[op])
    question = template.format(name=name, other=other, item=rng.choice(ITEMS), a=a, b=b)
    return Problem(question=question, a=a, b=b, op=op)


def generate(seed: int, size: int, split: str, exclude: set[str] | None = None) -> list[Example]:
    """``size`` distinct problems (none whose question is in ``exclude``), ids ``arithmetic/<split>/<i>``."""
    rng = random.Random(f"arithmetic:{seed}")
    seen = set(exclude or ())
    examples: list[Example] = []
    attempts = 0
    while len(examples) < size and attempts < 50 * size:
        attempts += 1
        problem = sample_problem(rng)
        key = question_key(problem.question)
        if key in seen:
            continue
        seen.add(key)
        examples.append(
            Example(
                id=f"arithmetic/{split}/{len(examples)}",
                question=problem.question,
                answer=problem.answer,
            )
        )
    return examples


def load_arithmetic(task: TaskConfig) -> tuple[list[Example], list[Example]]:
    """(train, eval) lists of generated_train_size / generated_eval_size disjoint problems."""
    eval_items = generate(task.data_seed, task.generated_eval_size, "eval")
    used = {question_key(example.question) for example in eval_items}
    train_items = generate(
        task.data_seed + _TRAIN_SEED_OFFSET, task.generated_train_size, "train", used
    )
    return train_items, eval_items


def template_texts() -> list[str]:
    """Every template filled with every name and item (digits stand for numbers): the word
    inventory the embedded model's tokenizer must cover."""
    texts = []
    for templates in TEMPLATES.values():
        for template in templates:
            for name in NAMES:
                for item in ITEMS:
                    texts.append(template.format(name=name, other=name, item=item, a=1, b=2))
    return texts
