"""Task profiles: disjoint, deterministic splits; the fixed eval subset; local JSONL errors."""

from __future__ import annotations

import json
import operator
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gradience.config import TaskConfig
from gradience.errors import GradienceError
from gradience.tasks import Example, build_completion, build_prompt, load_task
from gradience.tasks.example import question_key
from gradience.tasks.gsm_symbolic import gsm8k_answer

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _questions(examples: list[Example]) -> set[str]:
    return {question_key(example.question) for example in examples}


def test_arithmetic_splits_are_disjoint_sized_and_reproducible() -> None:
    task = TaskConfig(name="arithmetic", generated_train_size=500, generated_eval_size=100)
    first, second = load_task(task), load_task(task)
    assert (len(first.train), len(first.eval)) == (500, 100)
    assert first == second
    assert not _questions(first.train) & _questions(first.eval)
    assert len(_questions(first.train)) == 500
    other_seed = load_task(task.model_copy(update={"data_seed": 7}))
    assert other_seed.eval != first.eval


def test_arithmetic_answers_are_correct_equations() -> None:
    data = load_task(
        TaskConfig(name="arithmetic", generated_train_size=300, generated_eval_size=50)
    )
    for example in data.train + data.eval:
        match = re.fullmatch(r"(\d+)([-+*])(\d+)=(\d+) #### (\d+)", example.answer)
        assert match, example.answer
        a, op, b, c, final = match.groups()
        assert _OPS[op](int(a), int(b)) == int(c) == int(final) == int(example.gold)
        assert a in example.question and b in example.question
    assert re.fullmatch(r"arithmetic/eval/\d+", data.eval[3].id)


def test_eval_subset_is_fixed_by_data_seed_only() -> None:
    task = TaskConfig(
        name="arithmetic", generated_train_size=200, generated_eval_size=120, eval_samples=40
    )
    full = load_task(task.model_copy(update={"eval_samples": None})).eval
    subset = load_task(task).eval
    assert len(subset) == 40 and len(full) == 120
    assert set(subset) <= set(full)
    # The ids keep the split's order and do not depend on how much training data is used.
    assert [full.index(example) for example in subset] == sorted(
        full.index(example) for example in subset
    )
    assert load_task(task.model_copy(update={"train_samples": 50})).eval == subset
    assert load_task(task.model_copy(update={"data_seed": 99})).eval != subset


def test_train_samples_takes_a_seeded_subset() -> None:
    task = TaskConfig(
        name="arithmetic", generated_train_size=200, generated_eval_size=20, train_samples=30
    )
    data = load_task(task)
    full_train = load_task(task.model_copy(update={"train_samples": None})).train
    assert len(data.train) == 30 and set(data.train) <= set(full_train)
    assert data.train != full_train[:30]


def test_gsm_symbolic_is_disjoint_and_keeps_reasoning_gym_answers() -> None:
    import reasoning_gym

    task = TaskConfig(
        name="gsm_symbolic", generated_train_size=60, generated_eval_size=20, data_seed=5
    )
    data = load_task(task)
    assert (len(data.train), len(data.eval)) == (60, 20)
    assert not _questions(data.train) & _questions(data.eval)
    assert load_task(task) == data
    source = reasoning_gym.create_dataset("gsm_symbolic", seed=5, size=40)
    for example in data.eval:
        index = int(example.id.rsplit("/", 1)[1])
        item = source[index]
        assert float(example.gold) == float(item["answer"])
        assert example.answer.rstrip().endswith(f"#### {example.gold}")
        assert "Do not include units" not in example.question
        assert example.question in item["question"]


def test_gsm_symbolic_answer_line_is_rewritten_in_gsm8k_form() -> None:
    assert gsm8k_answer("2*3=6 boxes\n#### 6.0", "6") == "2*3=6 boxes\n#### 6"
    assert gsm8k_answer("2*3=6 boxes", "6") == "2*3=6 boxes\n#### 6"
    assert gsm8k_answer("2*3=6 boxes\n#### 7", "6") is None
    assert gsm8k_answer("so 7607.25 in all\n#### 7607.25", "7607.25").endswith("#### 7607.25")


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


def _gsm_rows(start: int, n: int) -> list[dict[str, str]]:
    return [
        {
            "question": f"What is {i} plus {i}?",
            "answer": f"{i}+{i}=<<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}",
        }
        for i in range(start, start + n)
    ]


def test_gsm8k_local_jsonl_files(tmp_path: Path) -> None:
    train = _write_jsonl(tmp_path / "train.jsonl", _gsm_rows(0, 12))
    evals = _write_jsonl(tmp_path / "test.jsonl", _gsm_rows(10, 5))  # rows 10, 11 overlap train
    data = load_task(TaskConfig(train_file=str(train), eval_file=str(evals), eval_samples=None))
    assert [example.id for example in data.eval] == [f"gsm8k/test/{i}" for i in range(5)]
    assert [example.gold for example in data.eval] == ["20", "22", "24", "26", "28"]
    assert len(data.train) == 10 and not _questions(data.train) & _questions(data.eval)
    assert data.notes and "dropped 2" in data.notes[0]


def test_gsm8k_jsonl_errors_name_file_and_line(tmp_path: Path) -> None:
    good = _write_jsonl(tmp_path / "good.jsonl", _gsm_rows(0, 3))
    no_marker = _write_jsonl(
        tmp_path / "bad.jsonl", [*_gsm_rows(0, 1), {"question": "q", "answer": "it is 4"}]
    )
    with pytest.raises(GradienceError, match=r"bad\.jsonl: line 2: field 'answer' has no '#### N'"):
        load_task(TaskConfig(train_file=str(good), eval_file=str(no_marker)))
    missing_field = _write_jsonl(tmp_path / "nofield.jsonl", [{"question": "q"}])
    with pytest.raises(GradienceError, match=r"nofield\.jsonl: line 1: field 'answer'"):
        load_task(TaskConfig(train_file=str(missing_field), eval_file=str(good)))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n', encoding="utf-8")
    with pytest.raises(GradienceError, match=r"broken\.jsonl: line 2: not valid JSON"):
        load_task(TaskConfig(train_file=str(good), eval_file=str(broken)))
    with pytest.raises(GradienceError, match=r"missing\.jsonl: JSONL file not found"):
        load_task(TaskConfig(train_file=str(tmp_path / "missing.jsonl"), eval_file=str(good)))


def test_gsm8k_hub_unreachable_is_an_actionable_error() -> None:
    code = (
        "from gradience.config import TaskConfig\n"
        "from gradience.errors import GradienceError\n"
        "from gradience.tasks import load_task\n"
        "try:\n    load_task(TaskConfig(dataset='gradience-test/does-not-exist'))\n"
        "except GradienceError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert (
        "task.dataset" in out.stdout
        and "task.train_file" in out.stdout
        and "HF_DATASETS_OFFLINE" in out.stdout
    )


def test_prompt_and_completion() -> None:
    example = Example(id="x/0", question="What is 2 plus 3?", answer="2+3=5 #### 5")
    assert build_prompt(TaskConfig(), example) == "Question: What is 2 plus 3?\nAnswer:"
    custom = TaskConfig(prompt_template="Q: {question}\nA:")
    assert build_prompt(custom, example) == "Q: What is 2 plus 3?\nA:"
    assert build_completion(example) == " 2+3=5 #### 5"
    assert example.gold == "5"


def test_example_without_answer_line_is_rejected() -> None:
    with pytest.raises(ValueError, match="####"):
        Example(id="x/1", question="q", answer="five")


def test_shipped_sample_files_load() -> None:
    data_dir = Path(__file__).resolve().parents[1] / "experiments" / "data"
    task = TaskConfig(
        train_file=str(data_dir / "gsm8k_sample_train.jsonl"),
        eval_file=str(data_dir / "gsm8k_sample_test.jsonl"),
        eval_samples=None,
    )
    data = load_task(task)
    assert len(data.train) == 4 and len(data.eval) == 2
    assert data.eval[0].id == "gsm8k/gsm8k_sample_test/0"
    assert [example.gold for example in data.train] == ["12", "14", "450", "-7"]
