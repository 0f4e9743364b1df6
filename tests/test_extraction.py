"""GSM8K answer extraction: the number after '####', else the last number; numeric comparison."""

from __future__ import annotations

import pytest

from gradience.tasks.gsm8k import (
    answers_match,
    extract_answer,
    extract_strict,
    normalize_number,
    strict_answers_match,
)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("She pays 1000+234=1234 dollars.\n#### 1,234", "1234"),
        ("The total is $1,234.50", "1234.5"),
        ("The temperature drops to -7", "-7"),
        ("#### -7", "-7"),
        ("It gets colder by 3 degrees, so 4 - 11 = -7 degrees.\n#### -7", "-7"),
        ("#### 5.00", "5"),
        ("The answer is 18.", "18"),
        ("First 3 apples, then 4 more, so 7 in all, and 2 are eaten: 5", "5"),
        ("#### 25%", "25"),
        ("The discount is 25%.", "25"),
        ("#### $ 1,000", "1000"),
        ("So 2.5 hours.", "2.5"),
        ("#### 0.50", "0.5"),
    ],
)
def test_extract_answer_reads_the_final_number(completion: str, expected: str) -> None:
    assert extract_answer(completion) == expected


def test_no_number_at_all_gives_none() -> None:
    assert extract_answer("I do not know the answer.") is None
    assert extract_strict("I do not know the answer.") is None
    assert extract_answer("") is None


def test_the_answer_after_the_first_marker_wins_over_later_markers_and_numbers() -> None:
    # lm-eval's strict match takes the first '#### N': a completion that rambles on past its
    # answer is scored on the answer, not on the rambling.
    completion = "Step 1: 2+2=4\n#### 4\nQuestion: what is 9+9? 18"
    assert extract_answer(completion) == "4"
    assert extract_answer("#### 3 then again #### 8 and 100") == "3"
    assert extract_strict("so it is 7 … #### 7 … and then #### 9") == "7"


def test_calculator_annotations_are_not_answers() -> None:
    # The last number outside the annotation is 12 (the stated result), not the 4 inside it.
    completion = "He buys 3 packs of 4, so 3*4=<<3*4=12>>12 pens in all"
    assert extract_answer("Each costs <<3*4=12>>") is None
    assert extract_answer(completion) == "12"
    assert extract_answer("So <<2+5=7>>7 boxes and <<7*10=70>>") == "7"


def test_minus_between_numbers_is_an_operator_not_a_sign() -> None:
    assert extract_answer("12-7") == "7"
    assert extract_answer("The difference is 10 - 3") == "3"
    assert extract_answer("(5)-2") == "2"
    assert extract_answer("so x = -3") == "-3"
    assert extract_answer("a loss of -$5") == "-5"


def test_strict_needs_the_marker() -> None:
    assert extract_strict("The answer is 18.") is None
    assert extract_strict("blah #### 18") == "18"
    assert extract_strict("#### none") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", "1234"),
        ("$1,234.50", "1234.5"),
        ("-7", "-7"),
        ("5.00", "5"),
        ("18.", "18"),
        ("25%", "25"),
        ("+4", "4"),
        ("0.125", "0.125"),
        ("-0", "0"),
        ("twelve", None),
        ("3 4", None),
        ("", None),
    ],
)
def test_normalize_number(text: str, expected: str | None) -> None:
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("#### 5.00", "5", True),
        ("#### 5", "Worked out: 2+3=<<2+3=5>>5\n#### 5", True),
        ("#### 1,000", "#### 1000", True),
        ("#### -3", "#### 3", False),
        ("#### 3", "#### -3", False),
        ("The answer is 2.5.", "2.5", True),
        ("The answer is 2.5.", "2", False),
        ("no idea", "#### 7", False),
        ("#### 1234.50", "$1,234.5", True),
    ],
)
def test_answers_match_compares_numerically(completion: str, gold: str, expected: bool) -> None:
    assert answers_match(completion, gold) is expected


def test_strict_match_ignores_answers_without_marker() -> None:
    assert answers_match("The answer is 18.", "#### 18")
    assert not strict_answers_match("The answer is 18.", "#### 18")
    assert strict_answers_match("so #### 18", "#### 18")


def test_gold_without_a_number_is_an_error_not_a_miss() -> None:
    with pytest.raises(ValueError, match="gold answer"):
        answers_match("#### 4", "no number here")
