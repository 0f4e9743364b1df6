"""lm-eval's gsm8k scoring rules on gradience's completions: computed by lm-eval's own code,
beside gradience's numeric match, and their disagreements all explained by the
numeric-vs-string rule."""

from __future__ import annotations

import pytest

from gradience.evaluate.lmeval_scoring import (
    FILTER_FIELDS,
    add_lmeval_scores,
    disagreement,
    gsm8k_task_config,
    lmeval_missing,
    score_with_lmeval,
)
from gradience.results import Prediction
from gradience.tasks import Example
from gradience.tasks.gsm8k import answers_match, extract_answer, strict_answers_match

requires_lmeval = pytest.mark.skipif(lmeval_missing() is not None, reason=str(lmeval_missing()))

# (completion, gold number) -> (gradience flexible, gradience strict, lm-eval strict-match,
# lm-eval flexible-extract). The first ten are scored differently by the two; the rest agree.
TRICKY = [
    ("3*24=72\n####72", "72", (True, True, False, True)),  # strict-match needs '#### '
    ("She pays $18.\n#### $18", "18", (True, True, False, True)),  # '$' after '#### '
    ("9*2=18\n#### 18.00", "18", (True, True, False, False)),  # string '18.00' != '18'
    ("7/2=3.5\n#### 3.50", "3.5", (True, True, False, False)),  # string '3.50' != '3.5'
    ("3-10=−7\n#### −7", "-7", (True, True, False, False)),  # U+2212 minus: lm-eval reads 7
    ("#### 18\n19 apples are left", "18", (True, True, True, False)),  # last number is 19
    ("####  18", "18", (True, True, False, True)),  # two spaces after ####
    ("#### 5, no: 18", "18", (False, False, False, True)),  # wrong answer, right last number
    ("It costs $18.00 in all.", "18", (True, False, False, False)),  # '18.00' again
    ("12*1=12\n#### 12.0", "12", (True, True, False, False)),
    ("#### 1,000", "1000", (True, True, True, True)),  # ',' removed by both
    ("6*3=18\n#### 18.", "18", (True, True, True, True)),  # lm-eval drops a final '.'
    ("The answer is 18 apples.", "18", (True, False, False, True)),
    ("#### 25%", "25", (True, True, True, True)),
    ("2-9=-7\n#### -7", "-7", (True, True, True, True)),
    ("<<3*4=12>>12\n#### 12", "12", (True, True, True, True)),
    ("#### 17", "18", (False, False, False, False)),
]


def examples_for(cases) -> list[Example]:
    return [
        Example(id=f"tricky/{i}", question=f"question {i}", answer=f"Worked. #### {gold}")
        for i, (_, gold, _) in enumerate(cases)
    ]


def gradience_scores(completion: str, answer: str) -> tuple[bool, bool]:
    return answers_match(completion, answer), strict_answers_match(completion, answer)


@requires_lmeval
def test_ten_tricky_completions_are_scored_differently_and_each_side_as_expected():
    examples = examples_for(TRICKY)
    scores = score_with_lmeval(examples, [c for c, _, _ in TRICKY])
    table = []
    for (completion, _, expected), example, score in zip(TRICKY, examples, scores, strict=True):
        got = (
            *gradience_scores(completion, example.answer),
            score.strict_match,
            score.flexible_extract,
        )
        table.append((completion, got))
        assert got == expected, f"{completion!r}: got {got}, expected {expected}"
    differ = [
        c
        for c, (flex, strict, lm_strict, lm_flex) in table
        if (flex, strict) != (lm_flex, lm_strict)
    ]
    assert len(differ) == 10 and differ == [c for c, _, _ in TRICKY[:10]]


def lmeval_by_hand(completion: str, answer: str) -> dict[str, bool]:
    """lm-eval's filter objects and exact_match metric called directly, configured from the
    installed gsm8k.yaml: the reference the task-based scorer must reproduce."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.filters.selection import TakeFirstFilter

    config = gsm8k_task_config()
    metric = next(m for m in config["metric_list"] if m["metric"] == "exact_match")
    kwargs = {
        k: v for k, v in metric.items() if k not in ("metric", "aggregation", "higher_is_better")
    }
    result = {}
    for entry in config["filter_list"]:
        responses = [[completion]]
        for step in entry["filter"]:
            arguments = {k: v for k, v in step.items() if k != "function"}
            cls = {"regex": RegexFilter, "take_first": TakeFirstFilter}[step["function"]]
            responses = list(cls(**arguments).apply(responses, [{}]))
        score = exact_match_hf_evaluate(predictions=[responses[0]], references=[answer], **kwargs)
        result[entry["name"]] = float(score["exact_match"]) == 1.0
    return result


@requires_lmeval
def test_the_scores_are_lm_eval_s_own_filters_and_metric_configured_by_its_gsm8k_yaml():
    config = gsm8k_task_config()
    strict = next(f for f in config["filter_list"] if f["name"] == "strict-match")
    assert strict["filter"][0]["regex_pattern"] == r"#### (\-?[0-9\.\,]+)"
    metric = next(m for m in config["metric_list"] if m["metric"] == "exact_match")
    assert metric["regexes_to_ignore"] == [",", "\\$", "(?s).*#### ", "\\.$"]
    examples = examples_for(TRICKY)
    scores = score_with_lmeval(examples, [c for c, _, _ in TRICKY])
    for (completion, _, _), example, score in zip(TRICKY, examples, scores, strict=True):
        by_hand = lmeval_by_hand(completion, example.answer)
        assert by_hand == {
            "strict-match": score.strict_match,
            "flexible-extract": score.flexible_extract,
        }


@requires_lmeval
def test_the_metric_called_is_lm_eval_s_registered_exact_match(monkeypatch):
    import lm_eval.api.metrics

    examples = examples_for(TRICKY[:3])
    assert not all(s.strict_match for s in score_with_lmeval(examples, ["#### 99"] * 3))
    monkeypatch.setattr(
        lm_eval.api.metrics, "exact_match_hf_evaluate", lambda **kwargs: {"exact_match": 1.0}
    )
    assert all(s.strict_match for s in score_with_lmeval(examples, ["#### 99"] * 3))


def predictions_for(cases) -> list[Prediction]:
    return [
        Prediction(
            id=example.id,
            prompt="",
            completion=completion,
            extracted=extract_answer(completion),
            gold=example.gold,
            correct=answers_match(completion, example.answer),
            strict_correct=strict_answers_match(completion, example.answer),
        )
        for (completion, _, _), example in zip(cases, examples_for(cases), strict=True)
    ]


@requires_lmeval
def test_every_disagreement_has_its_numeric_vs_string_reason():
    scored, summary = add_lmeval_scores(examples_for(TRICKY), predictions_for(TRICKY))
    reasons = {
        p.completion: (disagreement(p, "strict-match"), disagreement(p, "flexible-extract"))
        for p in scored
    }
    assert reasons["3*24=72\n####72"] == ("not read", None)
    assert reasons["She pays $18.\n#### $18"] == ("not read", None)
    assert reasons["9*2=18\n#### 18.00"] == ("written differently", "written differently")
    assert reasons["3-10=−7\n#### −7"] == ("not read", "another number")
    assert reasons["#### 18\n19 apples are left"] == (None, "another number")
    assert reasons["#### 5, no: 18"] == (None, "another number")
    for completion, _, _ in TRICKY[10:]:
        assert reasons[completion] == (None, None)
    assert summary.strict_match == pytest.approx(sum(e[2] for _, _, e in TRICKY) / len(TRICKY))
    assert summary.flexible_extract == pytest.approx(sum(e[3] for _, _, e in TRICKY) / len(TRICKY))
    assert "gsm8k.yaml" in summary.note and summary.version


def test_without_lm_eval_the_fields_are_null_and_the_note_says_why(monkeypatch):
    import gradience.evaluate.lmeval_scoring as scoring

    monkeypatch.setattr(scoring, "lmeval_missing", lambda: "lm-eval is not installed (test)")
    predictions = predictions_for(TRICKY[:2])
    scored, summary = add_lmeval_scores(examples_for(TRICKY[:2]), predictions)
    assert scored == predictions
    assert all(getattr(p, field) is None for p in scored for field in FILTER_FIELDS.values())
    assert summary.strict_match is None and summary.flexible_extract is None
    assert summary.note == "lm-eval is not installed (test)"
