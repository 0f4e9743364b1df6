"""Task profiles: data, prompts, token-level examples and GSM8K answer extraction.

A profile turns a :class:`~gradience.config.TaskConfig` into a :class:`TaskData`: training
items and a fixed evaluation subset (``eval_samples`` items chosen with ``data_seed``, the
same for every variant and training seed), disjoint by question text. Profiles:

* ``gsm8k`` — Hugging Face ``openai/gsm8k`` or local JSONL files (:mod:`.gsm8k_data`);
* ``gsm_symbolic`` — offline GSM-style problems from reasoning-gym (:mod:`.gsm_symbolic`);
* ``arithmetic`` — offline one-step word problems for the embedded CPU model (:mod:`.arithmetic`).

Every answer is written in GSM8K's ``… #### N`` form, so one extraction (:mod:`.gsm8k`)
scores every profile.
"""

from __future__ import annotations

from gradience.config import TaskConfig
from gradience.errors import GradienceError
from gradience.tasks.arithmetic import load_arithmetic
from gradience.tasks.encoding import IGNORE_INDEX, build_completion, build_prompt, encode_example
from gradience.tasks.example import Example, TaskData, dedupe, seeded_subset
from gradience.tasks.gsm8k_data import load_gsm8k_split
from gradience.tasks.gsm_symbolic import load_gsm_symbolic

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "TaskData",
    "build_completion",
    "build_prompt",
    "encode_example",
    "load_task",
]


def load_task(task: TaskConfig) -> TaskData:
    """Load a task profile: training items and the fixed, recorded eval subset (disjoint)."""
    if task.name == "gsm8k":
        eval_split = load_gsm8k_split(task, "eval")
        train_split = load_gsm8k_split(task, "train")
    elif task.name == "gsm_symbolic":
        train_split, eval_split = load_gsm_symbolic(task)
    elif task.name == "arithmetic":
        train_split, eval_split = load_arithmetic(task)
    else:  # the config's Literal makes this unreachable from YAML; guards direct construction
        raise GradienceError(f"unknown task profile {task.name!r}", field="task.name")
    notes = []
    # Training never sees a question of the eval split, even if the user's files overlap.
    train_clean = dedupe(train_split, exclude=eval_split)
    if len(train_clean) < len(train_split):
        notes.append(
            f"dropped {len(train_split) - len(train_clean)} duplicate or eval-overlapping training items"
        )
    if not train_clean:
        raise GradienceError(
            "no training items left after removing eval overlap", field="task.train_file"
        )
    eval_items = seeded_subset(
        eval_split, task.eval_samples, task.data_seed, salt=f"{task.name}:eval"
    )
    train_items = seeded_subset(
        train_clean, task.train_samples, task.data_seed, salt=f"{task.name}:train"
    )
    return TaskData(name=task.name, train=train_items, eval=eval_items, notes=notes)
