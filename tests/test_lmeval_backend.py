"""task.eval_backend: lm_eval on the embedded model with a trained LoRA: lm-eval's own HFLM
and evaluator generate and score offline, item by item in parity with the hf backend except
where the documented numeric-vs-string rule explains the difference."""

from __future__ import annotations

import json

import pytest

from gradience.config import ExperimentConfig
from gradience.errors import GradienceError
from gradience.evaluate.generate import text_end
from gradience.evaluate.lmeval_scoring import FILTER_FIELDS, REASONS, disagreement, lmeval_missing
from gradience.evaluate.run import evaluate_model
from gradience.io import read_model
from gradience.results import EvalResult, Prediction
from gradience.tasks import build_prompt, load_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")
requires_lmeval = pytest.mark.skipif(lmeval_missing() is not None, reason=str(lmeval_missing()))


def config(**task: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": {"name": "embedded:tiny-mistral"},
            "task": {
                "name": "arithmetic",
                "generated_train_size": 400,
                "generated_eval_size": 48,
                "eval_samples": 48,
                "max_seq_length": 64,
                "max_new_tokens": 16,
                "eval_batch_size": 16,
                **task,
            },
            "train": {
                "max_steps": 60,
                "learning_rate": 6e-4,
                "per_device_train_batch_size": 8,
                "warmup_steps": 6,
                "save_steps": None,
                "report_to": ["none"],
            },
            "lora": {"probe_r": 8, "lora_alpha": 8, "alpha_policy": "rslora", "lora_dropout": 0.0},
            "compression": {"allowed_ranks": [2, 4, 8]},
            "env": {"device": "cpu", "torch_dtype": "float32", "num_threads": 1},
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The pre-trained embedded base with a LoRA trained to answer (in memory, unmerged)."""
    from gradience.train.run import train_and_keep

    cfg = config()
    variant = train_and_keep(cfg, None, 42, tmp_path_factory.mktemp("probe"))
    yield cfg, variant.model, variant.tokenizer
    variant.release()


@pytest.fixture(scope="module")
def both_backends(trained, tmp_path_factory):
    cfg, model, tokenizer = trained
    runs = {}
    for backend in ("hf", "lm_eval"):
        backend_cfg = config(eval_backend=backend)
        out = tmp_path_factory.mktemp(backend)
        result = evaluate_model(backend_cfg, model, tokenizer, out, adapter_label="probe")
        lines = (out / "predictions.jsonl").read_text().splitlines()
        runs[backend] = (result, [Prediction.model_validate_json(line) for line in lines], out)
    return cfg, runs


@requires_lmeval
def test_the_lm_eval_backend_writes_lm_eval_s_samples_and_gradience_s_records(both_backends):
    cfg, runs = both_backends
    result, predictions, out = runs["lm_eval"]
    assert read_model(out / "eval.json", EvalResult) == result
    assert result.eval_backend == "lm_eval" and result.num_fewshot == 0
    assert result.primary_metric == "exact_match" and "lm-eval itself" in result.lmeval_note
    assert result.adapter_applied.startswith("unmerged")
    items = load_task(cfg.task).eval
    assert [p.id for p in predictions] == result.item_ids == [e.id for e in items]
    # 0-shot: lm-eval sent exactly the training prompt
    assert [p.prompt for p in predictions] == [build_prompt(cfg.task, e) for e in items]
    samples = [json.loads(line) for line in (out / "lmeval_samples.jsonl").read_text().splitlines()]
    assert sorted(s["filter"] for s in samples) == sorted(list(FILTER_FIELDS) * len(items))
    by_key = {(s["doc"]["id"], s["filter"]): s for s in samples}
    for p in predictions:
        for name, field in FILTER_FIELDS.items():
            sample = by_key[(p.id, name)]
            assert sample["resps"][0][0] == p.completion
            assert float(sample["exact_match"]) == float(getattr(p, field))
    assert result.lmeval_strict_match == sum(p.lmeval_strict_match for p in predictions) / len(
        items
    )
    assert result.exact_match == sum(p.correct for p in predictions) / len(items)


@requires_lmeval
def test_hf_and_lm_eval_backends_agree_item_by_item(both_backends):
    """Completions: lm-eval's, cut where the hf backend stops (the end of the answer line),
    are the hf backend's. Scores: gradience's numeric scores agree on every item; lm-eval's
    rules agree across backends except where lm-eval's completion ran on past the answer
    line; and every gradience-vs-lm-eval disagreement has its numeric-vs-string reason."""
    cfg, runs = both_backends
    (hf_result, hf, _), (lm_result, lm, _) = runs["hf"], runs["lm_eval"]
    cut = [p.completion[: text_end(p.completion, cfg.task.stop_strings, True) or None] for p in lm]
    assert cut == [p.completion for p in hf]
    assert [p.correct for p in lm] == [p.correct for p in hf]
    assert [p.strict_correct for p in lm] == [p.strict_correct for p in hf]
    assert hf_result.exact_match == lm_result.exact_match > 0.3, "the LoRA should have learnt"
    ran_on = {p.id for p, h in zip(lm, hf, strict=True) if p.completion != h.completion}
    for name, field in FILTER_FIELDS.items():
        differ = {
            h.id for p, h in zip(lm, hf, strict=True) if getattr(p, field) != getattr(h, field)
        }
        assert differ <= ran_on, f"{name}: lm-eval's score differs on a completion that did not"
    reasons = {
        (p.id, name): disagreement(p, name) for p in lm + hf for name in FILTER_FIELDS
    }  # raises on a disagreement the rule does not explain
    assert set(reasons.values()) <= {None, *REASONS}
    print(
        f"\nparity on {len(hf)} items: completions equal after the answer-line cut: "
        f"{len(hf) - len(ran_on)} identical, {len(ran_on)} ran on; exact_match hf "
        f"{hf_result.exact_match:.3f} lm_eval {lm_result.exact_match:.3f}; lm-eval strict "
        f"{hf_result.lmeval_strict_match:.3f}/{lm_result.lmeval_strict_match:.3f}, flexible "
        f"{hf_result.lmeval_flexible_extract:.3f}/{lm_result.lmeval_flexible_extract:.3f}; "
        f"reasons {sorted(str(r) for r in reasons.values() if r)}"
    )


@requires_lmeval
def test_the_hf_backend_records_lm_eval_s_rules_beside_gradience_s(both_backends):
    _, runs = both_backends
    result, predictions, _ = runs["hf"]
    assert result.eval_backend == "hf" and result.num_fewshot is None
    assert result.lmeval_version and "gsm8k.yaml" in result.lmeval_note
    assert all(p.lmeval_strict_match is not None for p in predictions)
    assert result.lmeval_flexible_extract == pytest.approx(
        sum(p.lmeval_flexible_extract for p in predictions) / len(predictions)
    )


@requires_lmeval
def test_few_shot_prompts_are_training_items_answered_before_the_question(trained, tmp_path):
    cfg, model, tokenizer = trained
    shots_cfg = config(eval_backend="lm_eval", num_fewshot=2, eval_samples=4, generated_eval_size=4)
    evaluate_model(shots_cfg, model, tokenizer, tmp_path)
    task = load_task(shots_cfg.task)
    train_answers = {" " + e.answer for e in task.train}
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    for line, example in zip(lines, task.eval, strict=True):
        prompt = Prediction.model_validate_json(line).prompt
        *shots, question = prompt.split("\n\n")
        assert question == build_prompt(shots_cfg.task, example)
        assert len(shots) == 2
        for shot in shots:
            assert shot.startswith("Question: ") and any(shot.endswith(a) for a in train_answers)


@requires_lmeval
def test_a_budget_that_leaves_no_room_for_the_prompt_names_the_field(trained, tmp_path):
    _, model, tokenizer = trained
    too_long = config(eval_backend="lm_eval", max_new_tokens=256, eval_samples=2)
    with pytest.raises(GradienceError, match="task.max_new_tokens: lm-eval keeps"):
        evaluate_model(too_long, model, tokenizer, tmp_path)


def test_num_fewshot_needs_the_lm_eval_backend():
    with pytest.raises(ValueError, match="num_fewshot applies to eval_backend: lm_eval"):
        config(num_fewshot=5)


def test_a_missing_lm_eval_stops_the_backend_with_one_line(monkeypatch):
    import gradience.evaluate.lmeval_backend as backend

    monkeypatch.setattr(backend, "lmeval_missing", lambda: "lm-eval is not installed (test)")
    with pytest.raises(GradienceError, match=r"pip install 'gradience\[lmeval\]'") as err:
        backend.require_lmeval()
    assert "task.eval_backend" in str(err.value)


def test_without_lm_eval_eval_json_says_why_and_the_lm_eval_fields_are_null(monkeypatch, tmp_path):
    import gradience.evaluate.lmeval_scoring as scoring
    from gradience.models import load_model_and_tokenizer

    monkeypatch.setattr(scoring, "lmeval_missing", lambda: "lm-eval is not installed (test)")
    cfg = config(eval_samples=4, generated_eval_size=4, max_new_tokens=4)
    cfg.model.name = "embedded:tiny-mistral-random"
    model, tokenizer = load_model_and_tokenizer(cfg)
    result = evaluate_model(cfg, model, tokenizer, tmp_path)
    assert result.lmeval_note == "lm-eval is not installed (test)"
    assert result.lmeval_strict_match is None and result.lmeval_version is None
    assert result.primary_metric == "exact_match" and result.eval_backend == "hf"
    for line in (tmp_path / "predictions.jsonl").read_text().splitlines():
        record = Prediction.model_validate_json(line)
        assert record.lmeval_strict_match is None and record.lmeval_answers is None
