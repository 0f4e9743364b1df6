"""The GSM8K answer format: extract the final number of a completion and compare it numerically.

Two named extraction steps, as lm-evaluation-harness does for GSM8K:

* ``extract_strict`` ("strict-match"): only the number after the first ``####`` (as
  lm-eval's strict match: a completion that rambles on past its answer is scored on the
  answer, not on the rambling);
* ``extract_answer`` ("flexible-extract"): the strict answer if there is one, else the last
  number in the completion, ignoring numbers inside ``<<3*4=12>>`` calculator annotations
  (GSM8K's worked solutions carry them; they are intermediate results, not answers).

Numbers are compared numerically after removing ``,`` (thousands), ``$`` and ``%``, so
``1,000`` equals ``1000`` and ``5.00`` equals ``5``, while ``-3`` never equals ``3``.
The normalised form is the shortest exact decimal: ``"1234"``, ``"-7"``, ``"2.5"``.
Pure functions, no I/O; loading GSM8K data lives in :mod:`gradience.tasks.gsm8k_data`.
"""

from __future__ import annotations

import re
from decimal import Decimal

ANSWER_MARKER = "####"

# A minus sign is a sign only where it cannot be a binary operator: it must touch the number
# and not follow a word or a closing bracket ("12-7" and "10 - 3" hold 7 and 3; "= -7" and
# "-$5" are negative). Thousands groups must be well formed so "3,4" reads as two numbers.
_NUMBER_RE = re.compile(
    r"(?<![\w)\].])(?:(?P<sign>[-−])\$?|\$\s?)?"
    r"(?P<digits>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
)
_CALCULATOR_ANNOTATION_RE = re.compile(r"<<[^<>]*>>")


def normalize_number(text: str) -> str | None:
    """Canonical decimal string of a number written like GSM8K writes it, or None.

    Accepts ``1,234``, ``$1,234.50``, ``-7``, ``25%``, ``5.00``, ``18.``; returns ``"1234"``,
    ``"1234.5"``, ``"-7"``, ``"25"``, ``"5"``, ``"18"``. Anything else (words, two numbers,
    an empty string) gives None.
    """
    cleaned = text.strip().replace("−", "-").replace(",", "").replace("%", "")
    match = re.fullmatch(r"([-+]?)\s*\$?\s*(\d+(?:\.\d*)?|\.\d+)", cleaned)
    if match is None:
        return None
    return _canonical(Decimal(match.group(1) + match.group(2)))


def _canonical(value: Decimal) -> str:
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _numbers(text: str) -> list[str]:
    """Every number in ``text``, normalised, in order of appearance."""
    found = []
    for match in _NUMBER_RE.finditer(text):
        sign = "-" if match.group("sign") else ""
        number = normalize_number(sign + match.group("digits"))
        if number is not None:
            found.append(number)
    return found


def strip_calculator_annotations(text: str) -> str:
    """Remove GSM8K's ``<<expression=result>>`` annotations."""
    return _CALCULATOR_ANNOTATION_RE.sub(" ", text)


def extract_strict(completion: str) -> str | None:
    """The first number after the first ``####``, normalised; None without ``####`` or number."""
    marker = completion.find(ANSWER_MARKER)
    if marker < 0:
        return None
    tail = strip_calculator_annotations(completion[marker + len(ANSWER_MARKER) :])
    numbers = _numbers(tail)
    return numbers[0] if numbers else None


def extract_answer(completion: str) -> str | None:
    """The completion's answer: the strict ``####`` answer, else its last number; None if none."""
    strict = extract_strict(completion)
    if strict is not None:
        return strict
    numbers = _numbers(strip_calculator_annotations(completion))
    return numbers[-1] if numbers else None


def gold_number(gold_answer: str) -> str:
    """Normalised gold number of a GSM8K answer text (``… #### N``) or of a bare number.

    Raises ValueError when there is none: a gold answer without a number is a data error
    that must not silently score as "wrong".
    """
    number = (
        extract_strict(gold_answer)
        if ANSWER_MARKER in gold_answer
        else normalize_number(gold_answer)
    )
    if number is None:
        raise ValueError(
            f"gold answer has no '#### N' line and is not a number: {gold_answer[-80:]!r}"
        )
    return number


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Numeric equality of two normalised numbers; None never equals anything."""
    if a is None or b is None:
        return False
    return Decimal(a) == Decimal(b)


def answers_match(completion: str, gold_answer: str) -> bool:
    """Whether the completion's flexible answer equals the gold answer numerically.

    ``gold_answer`` is a GSM8K answer text ending in ``#### N``, or a bare number.
    """
    return numbers_equal(extract_answer(completion), gold_number(gold_answer))


def strict_answers_match(completion: str, gold_answer: str) -> bool:
    """Like :func:`answers_match`, but only an answer given after ``####`` counts."""
    return numbers_equal(extract_strict(completion), gold_number(gold_answer))
