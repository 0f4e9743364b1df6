"""The pre-training corpus of the embedded model: arithmetic, and the task's word problems.

Four surface forms, mixed by :data:`FORM_WEIGHTS`:

* ``equation`` (40%): bare equations, "30+19=49";
* ``question`` (30%): the arithmetic task's own templates, answered by the equation and the
  GSM8K answer line: "Mia has 23 shells and finds 9 more. How many shells does Mia have
  now? 23+9=32 #### 32";
* ``narrative`` (20%): the same templates as statements, "... That makes 23+9=32 shells.";
* ``qa`` (10%): bare questions in another surface form, "What is 30 plus 19? 30+19=49".

What the base model never sees is the fine-tuning frame, ``Question: ...`` then
``\nAnswer:``: given a prompt in that frame it continues the question instead of answering
(about 5% exact match). LoRA has to learn the frame; how well the answers then come out is
bounded by the base's arithmetic (operand ranges are the task's, see
:mod:`gradience.tasks.arithmetic`). Earlier revisions left the question form, operand
copying and the ``####`` repeat to LoRA too, which put every short run on a learning cliff
(:mod:`gradience.models.embedded` has the numbers).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from gradience.tasks.arithmetic import ITEMS, NAMES, OPERATIONS, TEMPLATES, sample_operands

FORM_WEIGHTS = {"qa": 0.1, "equation": 0.4, "narrative": 0.2, "question": 0.3}
_OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}
#: How a narrative ends: the task's question sentence becomes a statement of the equation.
_CLOSINGS = {
    "+": " That makes {eq} {item}.",
    "-": " That leaves {eq} {item}.",
    "*": " That makes {eq} {item}.",
}


def narrative_templates(op: str) -> list[str]:
    """The task's templates for ``op`` as statements: the closing "How many ...?" question
    replaced by the equation ("Mia has 23 shells and finds 9 more. That makes 23+9=32 shells.")."""
    return [template[: template.rindex(" How many")] + _CLOSINGS[op] for template in TEMPLATES[op]]


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
    name, other = rng.sample(NAMES, 2)
    if form == "question":  # the task's own question, answered by the equation alone
        template = rng.choice(TEMPLATES[op]) + " {eq} #### {c}"
    else:
        template = rng.choice(narrative_templates(op))
    return template.format(
        name=name, other=other, item=rng.choice(ITEMS), a=a, b=b, c=c, eq=f"{a}{op}{b}={c}"
    )


def corpus_texts(seed: int) -> Iterator[str]:
    """An endless, seeded stream of pre-training documents."""
    rng = random.Random(f"corpus:{seed}")
    while True:
        yield corpus_text(rng)


def vocabulary_texts() -> list[str]:
    """Texts whose pieces cover every word the corpus forms can produce."""
    texts = [f"What is 1 {word} 2? 1+2=3" for word in _OP_WORDS.values()]
    for op in OPERATIONS:
        for template in narrative_templates(op):
            for item in ITEMS:
                texts.append(
                    template.format(name="Tom", other="Anna", item=item, a=1, b=2, eq="1+2=3")
                )
    return texts
