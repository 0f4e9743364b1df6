"""``task.eval_backend: lm_eval``: lm-evaluation-harness generates and scores the eval items.

lm-eval's own loop does the work: its ``HFLM`` wraps the model as it is in memory (the
trained ``PeftModel``, adapter unmerged, the same object the hf backend scores), and
``lm_eval.evaluator.evaluate`` builds the requests, generates, filters and scores with its
log_samples on. The task is lm-eval's own gsm8k definition (``gsm8k.yaml`` of the installed
lm-eval: its ``strict-match`` / ``flexible-extract`` filters and ``exact_match`` metric, see
:mod:`.lmeval_scoring`) with four things replaced so it runs offline on gradience's items:

* the documents: the task's fixed eval items (split "test") and, for few-shot examples, its
  training items (split "train"), held in memory (``custom_dataset``; nothing is downloaded);
* the prompt: ``task.prompt_template`` filled with the question, as in training
  (:func:`gradience.tasks.build_prompt`); a few-shot example is its prompt, a space and its
  worked answer (the training completion), examples separated by a blank line, drawn by
  lm-eval's sampler with lm-eval's default few-shot seed (1234);
* the number of examples: ``task.num_fewshot`` (default 0) instead of gsm8k's 5;
* generation: greedy, ``until`` = ``task.stop_strings`` (lm-eval adds the EOS token),
  ``max_gen_toks`` = ``task.max_new_tokens``. Unlike the hf backend, lm-eval does not stop
  at the end of the ``#### N`` line, so a completion may run on after its answer (which
  gradience's own score ignores and lm-eval's flexible-extract reads).

Each lm-eval sample becomes a :class:`~gradience.results.Prediction` (prompt = the context
lm-eval sent, completion = its response, lm-eval's two per-item scores, and gradience's
numeric scores of the same completion), so aggregation and item-level statistics work
unchanged; lm-eval's sample records themselves are written to ``lmeval_samples.jsonl``.

**Which setting compares with published numbers.** The GSM8K numbers papers and
leaderboards quote as "lm-evaluation-harness, 5-shot" are its ``gsm8k`` task: the 1,319
test items, 5 examples from GSM8K's train split (sampler seed 1234), the prompt
``Question: {question}\nAnswer:``, examples ``prompt + " " + worked answer`` joined by a
blank line, no chat template, greedy until ``Question:``, ``</s>``, ``<|im_end|>`` or 256
new tokens, and the two rules above. This backend runs that task's code with every one of
those settings taken from the config, so it gives comparable numbers with ``task.name:
gsm8k``, ``eval_samples: null`` (all 1,319 items; a subset is a sample of them),
``num_fewshot: 5``, the default ``prompt_template`` and ``max_new_tokens`` (256), and
``stop_strings: ["Question:", "</s>", "<|im_end|>"]``; read ``lmeval_strict_match`` /
``lmeval_flexible_extract`` (lm-eval's names: strict-match and flexible-extract), not
gradience's numeric ``exact_match``. One difference remains: the examples are drawn from
gradience's training items, which are GSM8K's train split in order only with
``train_samples: null`` and nothing dropped as a duplicate (the task's load notes say if
anything was); otherwise lm-eval's sampler, with the same seed, draws other examples.
The default here (0 shots, the training prompt, gradience's stop strings) measures the
fine-tuned model on the format it learned, which is what the mechanism test compares; it
is not a published-number setting.

Prompts are tokenized by HFLM with the tokenizer's special tokens (BOS), as gradience
tokenizes them; a tokenizer that also appends EOS to every text would end lm-eval's prompts
with it, where gradience removes it. Batch size: ``task.eval_batch_size`` (``auto`` sizes it for the bare prompts; few-shot
prompts are several times longer, so pin it on a GPU). lm-eval's HFLM has no
out-of-memory retry, and left-truncates (with a warning) a context longer than the model's
maximum length minus ``max_new_tokens``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradience.errors import GradienceError
from gradience.evaluate.lmeval_scoring import (
    FILTER_FIELDS,
    INSTALL_HINT,
    example_doc,
    gsm8k_task_config,
    lmeval_missing,
    local_task,
    quiet_lmeval,
)
from gradience.io import write_text_atomic

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from gradience.config import ExperimentConfig
    from gradience.results import Prediction
    from gradience.tasks import Example

#: lm-eval's default few-shot seed (simple_evaluate's fewshot_random_seed, lm_eval.defaults).
FEWSHOT_SEED = 1234
TASK_NAME = "gradience_gsm8k"
SAMPLES_FILE = "lmeval_samples.jsonl"


def require_lmeval() -> None:
    """Raise a GradienceError saying how to install lm-eval, or how to turn the backend off."""
    missing = lmeval_missing()
    if missing is not None:
        raise GradienceError(
            f"the lm_eval evaluation backend needs lm-evaluation-harness: {INSTALL_HINT}, or "
            "set task.eval_backend: hf",
            field="task.eval_backend",
        )


def task_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """lm-eval's gsm8k definition with gradience's prompt, shots and generation settings."""
    config = dict(gsm8k_task_config())
    config.pop("fewshot_config", None)
    config.update(
        task=TASK_NAME,
        doc_to_text=_prompt,
        doc_to_target="answer",
        target_delimiter=" ",
        fewshot_delimiter="\n\n",
        num_fewshot=cfg.task.num_fewshot,
        generation_kwargs={
            "until": list(cfg.task.stop_strings),
            "do_sample": False,
            "max_gen_toks": cfg.task.max_new_tokens,
        },
    )
    return config


def _prompt(doc: dict[str, Any]) -> str:
    """The document's training prompt (a callable: no Jinja template touches it)."""
    return doc["prompt"]


@dataclass(frozen=True)
class LmevalRun:
    """The lm_eval backend's per-item records and what decoding cost."""

    predictions: list[Prediction]
    generated_tokens: int


def evaluate_with_lmeval(
    cfg: ExperimentConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[Example],
    prompts: Sequence[str],
    train_items: Sequence[Example],
    output_dir: Path,
    *,
    batch_size: int,
) -> LmevalRun:
    """Run lm-eval on ``items`` with ``model`` as it is in memory; write its samples to
    ``output_dir/lmeval_samples.jsonl`` and return one Prediction per item, in item order.

    ``train_items`` supply the few-shot examples (unused at ``task.num_fewshot: 0``).
    """
    require_lmeval()
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    from gradience.tasks import build_prompt

    shots = cfg.task.num_fewshot
    if shots > len(train_items):
        raise GradienceError(
            f"{shots} few-shot examples asked, the task has {len(train_items)} training items",
            field="task.num_fewshot",
        )
    eval_docs = [example_doc(e, p) for e, p in zip(items, prompts, strict=True)]
    fewshot_docs = [example_doc(e, build_prompt(cfg.task, e)) for e in train_items] if shots else []
    # lm_eval.evaluator.evaluate, not simple_evaluate: the latter would index every task
    # lm-eval ships (TaskManager) and reseed the global random states; the one seed that
    # matters to greedy decoding, the few-shot sampler's, is set as simple_evaluate sets it.
    task = local_task(task_config(cfg), eval_docs, fewshot_docs)
    task.set_fewshot_seed(seed=FEWSHOT_SEED)
    with quiet_lmeval():  # "pretrained is not a str": passing the model is the point
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    if cfg.task.max_new_tokens >= lm.max_length:  # lm-eval asserts it, without a field name
        raise GradienceError(
            f"lm-eval keeps max_new_tokens free of the model's {lm.max_length}-token context "
            f"for the prompt: {cfg.task.max_new_tokens} leaves none; lower it",
            field="task.max_new_tokens",
        )
    tasks = {"tasks": {TASK_NAME: task}, "groups": {}}  # TaskManager.load's TaskDict
    results = evaluate(lm=lm, task_dict=tasks, log_samples=True, bootstrap_iters=0)
    samples = results["samples"][TASK_NAME]
    write_text_atomic(
        output_dir / SAMPLES_FILE,
        "".join(json.dumps(s, default=str, ensure_ascii=False) + "\n" for s in samples),
    )
    predictions = samples_to_predictions(items, samples)
    tokens = sum(
        len(tokenizer(p.completion, add_special_tokens=False)["input_ids"]) for p in predictions
    )
    return LmevalRun(predictions, tokens)


def samples_to_predictions(
    items: Sequence[Example], samples: Sequence[dict[str, Any]]
) -> list[Prediction]:
    """lm-eval's logged samples (one per document and filter) as gradience's records: the
    completion lm-eval generated, lm-eval's score under each filter, and gradience's own
    numeric scores of that completion."""
    from gradience.results import Prediction
    from gradience.tasks.gsm8k import answers_match, extract_answer, strict_answers_match

    by_id: dict[str, dict[str, dict[str, Any]]] = {}
    for sample in samples:
        by_id.setdefault(sample["doc"]["id"], {})[sample["filter"]] = sample
    predictions = []
    for example in items:
        per_filter = by_id.get(example.id, {})
        if set(per_filter) != set(FILTER_FIELDS):
            raise GradienceError(
                f"lm-eval returned filters {sorted(per_filter)} for item {example.id}, "
                f"expected {sorted(FILTER_FIELDS)}"
            )
        first = per_filter["strict-match"]
        context, completion = first["arguments"][0][0], first["resps"][0][0]
        predictions.append(
            Prediction(
                id=example.id,
                prompt=context,
                completion=completion,
                extracted=extract_answer(completion),
                gold=example.gold,
                correct=answers_match(completion, example.answer),
                strict_correct=strict_answers_match(completion, example.answer),
                lmeval_answers={
                    name: str(per_filter[name]["filtered_resps"][0]) for name in FILTER_FIELDS
                },
                **{
                    field: float(per_filter[name]["exact_match"]) == 1.0
                    for name, field in FILTER_FIELDS.items()
                },
            )
        )
    return predictions
