"""The pre-training corpus of the embedded model: arithmetic facts in three surface forms.

The mix is the one measured to put the later LoRA task on a plateau (see
:mod:`gradience.models.embedded`): ~30% bare question/answer pairs in a surface form the
task never uses ("What is 30 plus 19? 30+19=49"), ~50% bare equations ("30+19=49"), ~20%
short narratives with the equation inline. The question/answer and narrative forms teach
the one skill the task needs beyond arithmetic: copying the operands out of a sentence into
an equation (without them, LoRA runs mis-copy two-digit numbers and accuracy collapses).
The base model has never seen ``Question: … Answer:`` nor ``#### N``: LoRA has to learn
the task format and map word problems onto equations, which is what the ranks are tested
on. Operand ranges are the arithmetic task's.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from gradience.tasks.arithmetic import ITEMS, NAMES, OPERATIONS, sample_operands

FORM_WEIGHTS = {"qa": 0.3, "equation": 0.5, "narrative": 0.2}
_OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}
_NARRATIVES = {
    "+": "{name} had {a} {item} and got {b} more, so {name} had {a}+{b}={c} {item}.",
    "-": "{name} had {a} {item} and gave away {b}, so {name} had {a}-{b}={c} {item} left.",
    "*": "{name} had {a} bags with {b} {item} in each, so {name} had {a}*{b}={c} {item}.",
}


def _result(a: int, b: int, op: str) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def corpus_text(rng: random.Random) -> str:
    """One pre-training document."""
    form = rng.choices(list(FORM_WEIGHTS), weights=list(FORM_WEIGHTS.values()))[0]
    op = rng.choice(OPERATIONS)
    a, b = sample_operands(rng, op)
    c = _result(a, b, op)
    if form == "qa":
        return f"What is {a} {_OP_WORDS[op]} {b}? {a}{op}{b}={c}"
    if form == "equation":
        return f"{a}{op}{b}={c}"
    return _NARRATIVES[op].format(name=rng.choice(NAMES), item=rng.choice(ITEMS), a=a, b=b, c=c)


def corpus_texts(seed: int) -> Iterator[str]:
    """An endless, seeded stream of pre-training documents."""
    rng = random.Random(f"corpus:{seed}")
    while True:
        yield corpus_text(rng)


def vocabulary_texts() -> list[str]:
    """Texts whose pieces cover every word the corpus forms can produce."""
    texts = [f"What is 1 {word} 2? 1+2=3" for word in _OP_WORDS.values()]
    for template in _NARRATIVES.values():
        for name in NAMES:
            for item in ITEMS:
                texts.append(template.format(name=name, item=item, a=1, b=2, c=3))
    return texts
