"""GSM8K items from the Hugging Face hub (``openai/gsm8k``, ``main``) or from local JSONL files.

A local file replaces the hub split it stands for (``task.train_file`` → train split,
``task.eval_file`` → eval split), so an offline machine needs no hub access at all. Each
JSONL line is an object with ``question`` and ``answer`` (the worked solution ending in
``#### N``), exactly GSM8K's fields. Item ids are ``gsm8k/<split or file stem>/<row>``
(0-based row in the split or file, before any subsetting), so they are stable across runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gradience.config import TaskConfig
from gradience.errors import GradienceError
from gradience.tasks.example import Example
from gradience.tasks.gsm8k import ANSWER_MARKER, extract_strict


def load_gsm8k_split(task: TaskConfig, which: str) -> list[Example]:
    """The ``which`` ("train" or "eval") split of a gsm8k-profile task, from file or hub."""
    local_file = task.train_file if which == "train" else task.eval_file
    if local_file is not None:
        return read_jsonl_examples(local_file, source=Path(local_file).stem, task_name=task.name)
    split = task.train_split if which == "train" else task.eval_split
    return _load_hub_split(task, split)


def read_jsonl_examples(
    path: str | Path, *, source: str, task_name: str = "gsm8k"
) -> list[Example]:
    """Examples from a JSONL file of ``{"question": ..., "answer": "... #### N"}`` objects.

    Blank lines are skipped; any other problem is a GradienceError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise GradienceError(
            "JSONL file not found (set task.train_file / task.eval_file to an existing file)",
            path=path,
        )
    examples = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise GradienceError(
                    f"line {lineno}: not valid JSON ({exc.msg})", path=path
                ) from None
            where = f"line {lineno}"
            examples.append(
                _example_from_row(row, f"{task_name}/{source}/{len(examples)}", path, where)
            )
    if not examples:
        raise GradienceError("no examples in file", path=path)
    return examples


def _example_from_row(row: Any, item_id: str, origin: str | Path, where: str) -> Example:
    if not isinstance(row, dict):
        raise GradienceError(
            f"{where}: expected an object with 'question' and 'answer'", path=origin
        )
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise GradienceError(
                f"{where}: field '{key}' is missing or not a non-empty string", path=origin
            )
    if extract_strict(row["answer"]) is None:
        raise GradienceError(
            f"{where}: field 'answer' has no '{ANSWER_MARKER} N' line (GSM8K format: worked "
            f"solution ending in '{ANSWER_MARKER} <number>')",
            path=origin,
        )
    return Example(id=item_id, question=row["question"].strip(), answer=row["answer"].strip())


def _load_hub_split(task: TaskConfig, split: str) -> list[Example]:
    try:
        import datasets
    except ImportError:
        raise GradienceError(
            "the 'datasets' package is needed to read GSM8K from the hub "
            "(pip install 'gradience[hf]'), or give local JSONL files",
            field="task.train_file/task.eval_file",
        ) from None
    origin = f"hub dataset {task.dataset} ({task.dataset_config}, split {split})"
    try:
        rows = datasets.load_dataset(
            task.dataset, task.dataset_config, split=split, revision=task.revision
        )
    except Exception as exc:  # network, auth, missing split: all end the same way for the user
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        raise GradienceError(
            f"could not load {origin}: {reason}. Offline? Either put local JSONL files "
            "(fields 'question' and 'answer' ending in '#### N') in task.train_file / "
            "task.eval_file, or load the dataset once with network access and rerun with "
            "HF_DATASETS_OFFLINE=1 to use the cache; check task.dataset, task.dataset_config "
            "and the split names",
            field="task.dataset",
        ) from None
    return [
        _example_from_row(row, f"{task.name}/{split}/{index}", origin, f"row {index}")
        for index, row in enumerate(rows)
    ]
