"""lm-evaluation-harness's GSM8K scoring rules, run by lm-eval's own code on gradience's completions.

Two ways to score a GSM8K completion, both defensible; eval.json names the primary one
(``primary_metric``, the analysis's ``hypothesis.primary_metric``) and carries both:

* **gradience** (:mod:`gradience.tasks.gsm8k`, primary): the number after the first ``####``
  (a space or not), else the last number, compared *numerically* after removing ``,``, ``$``
  and ``%`` and reading ``−`` (U+2212) as a minus: ``18.00`` = ``18``, ``3.50`` = ``3.5``.
* **lm-eval** (``lm_eval/tasks/gsm8k/gsm8k.yaml`` of the installed lm-eval, task version 3.0
  in lm-eval 0.4.13, read from the package at run time, never copied):

  - ``strict-match``: regex ``#### (\\-?[0-9\\.\\,]+)``, its first match (``take_first``);
  - ``flexible-extract``: regex ``(-?[$0-9.,]{2,})|(-?[0-9]+)`` with ``group_select: -1``,
    the *last* number-like run anywhere in the completion;
  - ``exact_match`` of that string against the doc's whole answer text, both with
    ``regexes_to_ignore`` ``,`` ``\\$`` ``(?s).*#### `` ``\\.$`` removed and case ignored:
    a *string* comparison.

The numeric-vs-string rule (:func:`disagreement` names which part applies to an item): the
two disagree where both read the same number but its *writing* differs from the gold's
(``#### 18.00``, ``#### 3.50``: gradience right, lm-eval wrong), where lm-eval's regex reads
no number where gradience reads one (``####72``, ``#### $18`` and ``#### −7`` fail
strict-match, which needs ``#### `` then a digit or ``-``), or where they read different
numbers (flexible-extract reads the completion's last number, gradience its ``####``
answer; lm-eval reads ``−7`` as 7). tests/test_lmeval_scoring.py runs ten such completions
through both and through lm-eval's filter objects directly.

The scores come from lm-eval itself: the gsm8k task definition is loaded with lm-eval's
YAML loader into its ``ConfigurableTask`` (so lm-eval builds the filter ensembles and the
metric's keyword arguments), gradience's items are its documents (``custom_dataset``: no hub,
no download), each completion becomes the response of lm-eval's own request for that
document, and ``apply_filters`` / ``process_results`` score it, as ``lm_eval.evaluator``
does. When lm-eval is not installed, every lm-eval field is null and ``lmeval_note`` says why.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradience.errors import GradienceError

if TYPE_CHECKING:
    from gradience.results import Prediction
    from gradience.tasks import Example

log = logging.getLogger(__name__)

#: lm-eval's gsm8k filter names and the Prediction / EvalResult fields they fill.
FILTER_FIELDS = {
    "strict-match": "lmeval_strict_match",
    "flexible-extract": "lmeval_flexible_extract",
}
INSTALL_HINT = "pip install 'gradience[lmeval]' (make setup installs it)"
_TASK_YAML = Path("tasks") / "gsm8k" / "gsm8k.yaml"


def lmeval_missing() -> str | None:
    """Why lm-eval cannot run here (a sentence), or None when it can."""
    try:
        import lm_eval  # noqa: F401
        import lm_eval.api.task  # noqa: F401
    except ImportError as exc:
        return f"lm-eval is not installed ({exc}): {INSTALL_HINT}"
    return None


def lmeval_version() -> str:
    import lm_eval

    return str(lm_eval.__version__)


def gsm8k_yaml_path() -> Path:
    """The installed lm-eval's own gsm8k task definition."""
    import lm_eval

    return Path(lm_eval.__file__).parent / _TASK_YAML


def gsm8k_task_config() -> dict[str, Any]:
    """lm-eval's gsm8k task definition as lm-eval reads it (``lm_eval.tasks._yaml_loader``,
    the loader its TaskManager uses), less the keys that only index it ('tag'); a fresh
    copy on every call, so a task built from it cannot change the next one's."""
    return copy.deepcopy(_gsm8k_task_config())


@functools.cache
def _gsm8k_task_config() -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import load_yaml

    path = gsm8k_yaml_path()
    if not path.is_file():
        raise GradienceError(f"lm-eval {lmeval_version()} ships no gsm8k task", path=path)
    config = dict(load_yaml(path))
    config.pop("tag", None)
    names = [entry.get("name") for entry in config.get("filter_list") or []]
    metrics = [entry.get("metric") for entry in config.get("metric_list") or []]
    if set(FILTER_FIELDS) - set(names) or "exact_match" not in metrics:
        raise GradienceError(
            f"lm-eval {lmeval_version()}'s gsm8k task has filters {names} and metrics "
            f"{metrics}; gradience reads 'strict-match', 'flexible-extract' and exact_match",
            path=path,
        )
    return config


def example_doc(example: Example, prompt: str | None = None) -> dict[str, str]:
    """An item as an lm-eval document: gsm8k's fields (question, answer) plus its id and,
    for the lm_eval backend, the prompt gradience trained with."""
    doc = {"id": example.id, "question": example.question, "answer": example.answer}
    if prompt is not None:
        doc["prompt"] = prompt
    return doc


def local_task(
    config: Mapping[str, Any],
    eval_docs: Sequence[Mapping[str, Any]],
    fewshot_docs: Sequence[Mapping[str, Any]] = (),
) -> Any:
    """An lm-eval ``ConfigurableTask`` defined by ``config`` whose documents are the given
    ones, held in memory (``custom_dataset``; the hub's dataset_path is dropped): split
    "test" is evaluated, split "train" (when given) supplies few-shot examples."""
    import datasets
    from lm_eval.api.task import ConfigurableTask

    splits = {"test": datasets.Dataset.from_list([dict(d) for d in eval_docs])}
    if fewshot_docs:
        splits["train"] = datasets.Dataset.from_list([dict(d) for d in fewshot_docs])
    config = {k: v for k, v in config.items() if k not in ("dataset_path", "dataset_name")}
    config.update(
        custom_dataset=lambda **_: splits,
        dataset_kwargs=None,
        test_split="test",
        training_split="train" if fewshot_docs else None,
        validation_split=None,
        fewshot_split="train" if fewshot_docs else None,
    )
    with quiet_lmeval():
        return ConfigurableTask(config=config)


def rendered_once(template: str) -> Callable[[Mapping[str, Any]], str]:
    """A task's Jinja field rendered as lm-eval renders it (``lm_eval.utils.apply_template``:
    its own environment), but compiled once: lm-eval compiles the template again for every
    document, 85% of the time it takes to score 1,000 items."""
    from lm_eval.utils import env

    compiled = env.from_string(template)
    return lambda doc: compiled.render(**doc)


@contextlib.contextmanager
def quiet_lmeval(level: int = logging.ERROR) -> Iterator[None]:
    """lm-eval's loggers at ``level`` for the block: it warns about every pre-built model and
    custom dataset, which here are the intended use."""
    logger = logging.getLogger("lm_eval")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@dataclass(frozen=True)
class LmevalScore:
    """One completion under lm-eval's two gsm8k rules: correct or not, and what each filter
    extracted (``[invalid]`` when its regex found nothing)."""

    strict_match: bool
    flexible_extract: bool
    answers: dict[str, str]

    def fields(self) -> dict[str, Any]:
        """The Prediction fields this fills."""
        return {
            "lmeval_strict_match": self.strict_match,
            "lmeval_flexible_extract": self.flexible_extract,
            "lmeval_answers": dict(self.answers),
        }


def score_with_lmeval(examples: Sequence[Example], completions: Sequence[str]) -> list[LmevalScore]:
    """Each completion scored by lm-eval's gsm8k task against its example's answer.

    lm-eval builds one request per document (0-shot: the context is not used, the response is
    given), the completion is that request's response, and the task's ``apply_filters`` and
    ``process_results`` score it exactly as ``lm_eval.evaluator.evaluate`` does.
    """
    if len(examples) != len(completions):
        raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
    if not examples:
        return []
    config = {**gsm8k_task_config(), "num_fewshot": 0}
    config.pop("fewshot_config", None)
    for field in ("doc_to_text", "doc_to_target"):
        config[field] = rendered_once(config[field])
    task = local_task(config, [example_doc(e) for e in examples])
    # build_all_requests draws a tqdm bar unconditionally: a few milliseconds, not worth a line
    with quiet_lmeval(), contextlib.redirect_stderr(io.StringIO()):
        task.build_all_requests(rank=0, world_size=1)
    instances = {instance.doc_id: instance for instance in task.instances}
    for doc_id, completion in enumerate(completions):
        instances[doc_id].resps = [completion]
    with quiet_lmeval():
        task.apply_filters()
    scores = []
    for doc_id, doc in enumerate(task.eval_docs):
        filtered = instances[doc_id].filtered_resps
        correct = {
            name: float(task.process_results(doc, [filtered[name]])["exact_match"]) == 1.0
            for name in FILTER_FIELDS
        }
        scores.append(
            LmevalScore(
                strict_match=correct["strict-match"],
                flexible_extract=correct["flexible-extract"],
                answers={name: str(filtered[name]) for name in FILTER_FIELDS},
            )
        )
    return scores


#: Why gradience's score and an lm-eval rule's differ (:func:`disagreement`).
REASONS = ("not read", "written differently", "another number")


def disagreement(prediction: Prediction, rule: str) -> str | None:
    """Why gradience's score of ``prediction`` and lm-eval's ``rule`` ('strict-match' against
    gradience's strict, 'flexible-extract' against its flexible score) differ; None if they agree.

    * "not read": lm-eval's regex finds no number where gradience reads one (``####72``,
      ``#### $18``, ``#### −7`` under strict-match);
    * "written differently": both read the same number, but its string is not the gold's
      after lm-eval's normalisation (``18.00`` for 18, ``3.50`` for 3.5);
    * "another number": the two read different numbers (flexible-extract's last number
      against gradience's ``####`` answer; ``−7`` read by lm-eval as 7).

    Raises ValueError for a prediction without lm-eval scores, or one whose scores differ for
    none of these reasons (which would mean they were not computed on the same item).
    """
    from gradience.tasks.gsm8k import (
        extract_answer,
        extract_strict,
        normalize_number,
        numbers_equal,
    )

    theirs = getattr(prediction, FILTER_FIELDS[rule])
    if theirs is None or prediction.lmeval_answers is None:
        raise ValueError(f"{prediction.id}: no lm-eval scores")
    strict = rule == "strict-match"
    ours = prediction.strict_correct if strict else prediction.correct
    if ours == theirs:
        return None
    read = (extract_strict if strict else extract_answer)(prediction.completion)
    theirs_read = normalize_number(prediction.lmeval_answers[rule])
    if theirs_read is None and ours:
        return "not read"
    if not numbers_equal(theirs_read, read):
        return "another number"
    if ours:
        return "written differently"
    raise ValueError(
        f"{prediction.id}: both read {read}, lm-eval's {rule} scores it correct and "
        "gradience does not: not explained by the numeric-vs-string rule"
    )


@dataclass(frozen=True)
class LmevalSummary:
    """What eval.json records about lm-eval's scores: their means (None when not computed),
    the lm-eval version and a note (where the rules came from, or why they are missing)."""

    strict_match: float | None
    flexible_extract: float | None
    version: str | None
    note: str

    def fields(self) -> dict[str, Any]:
        """The EvalResult fields this fills."""
        return {
            "lmeval_strict_match": self.strict_match,
            "lmeval_flexible_extract": self.flexible_extract,
            "lmeval_version": self.version,
            "lmeval_note": self.note,
        }


def rules_note(generated_by_lmeval: bool = False) -> str:
    """eval.json's lmeval_note: which lm-eval file and version the scores' rules came from."""
    source = f"lm_eval/{_TASK_YAML.as_posix()} of lm-eval {lmeval_version()}"
    if generated_by_lmeval:
        return f"generated and scored by lm-eval itself (eval_backend lm_eval), rules from {source}"
    return f"lm-eval's strict-match and flexible-extract rules on these completions, from {source}"


def summarize(predictions: Sequence[Prediction], note: str) -> LmevalSummary:
    """Means of the predictions' lm-eval fields (None when any item lacks them)."""
    strict = [p.lmeval_strict_match for p in predictions]
    flexible = [p.lmeval_flexible_extract for p in predictions]
    complete = predictions and all(v is not None for v in strict + flexible)
    return LmevalSummary(
        strict_match=sum(map(bool, strict)) / len(strict) if complete else None,
        flexible_extract=sum(map(bool, flexible)) / len(flexible) if complete else None,
        version=lmeval_version() if complete else None,
        note=note,
    )


def add_lmeval_scores(
    examples: Sequence[Example], predictions: Sequence[Prediction]
) -> tuple[list[Prediction], LmevalSummary]:
    """The predictions with lm-eval's scores of their completions filled in, and their
    summary. Without lm-eval, or if its scoring fails (logged), the predictions are returned
    unchanged and the summary's note says why: an auxiliary metric never costs the evaluation.
    """
    missing = lmeval_missing()
    if missing is not None:
        return list(predictions), LmevalSummary(None, None, None, missing)
    try:
        scores = score_with_lmeval(examples, [p.completion for p in predictions])
    except Exception as exc:  # recorded in eval.json: the evaluation stands
        log.warning("lm-eval's scoring failed; its fields stay null", exc_info=True)
        note = f"lm-eval {lmeval_version()}'s scoring failed: {type(exc).__name__}: {exc}"
        return list(predictions), LmevalSummary(None, None, None, note)
    scored = [
        p.model_copy(update=score.fields()) for p, score in zip(predictions, scores, strict=True)
    ]
    return scored, summarize(scored, rules_note())
