"""RankAuditCallback in a real Trainer run: TensorBoard receives the rank scalars; the final
audit.json is the audit of the saved adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_audit import MISTRAL_TARGETS, tiny_mistral
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments

from gradience.audit import audit_adapter
from gradience.errors import GradienceError
from gradience.integrations import RankAuditCallback
from gradience.io import read_model
from gradience.results import AuditResult

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trainer_for(tmp_path, report_to, steps=4):
    torch.manual_seed(0)
    model = get_peft_model(
        tiny_mistral(), LoraConfig(r=4, lora_alpha=8, target_modules=MISTRAL_TARGETS)
    )
    tokens = torch.randint(0, 64, (16, 12), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": t, "labels": t} for t in tokens]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=report_to,
        use_cpu=True,
        disable_tqdm=True,
    )
    return Trainer(model=model, args=args, train_dataset=data)


def test_rank_scalars_reach_tensorboard_and_the_final_audit_matches_the_saved_adapter(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = trainer_for(tmp_path, ["tensorboard"])
    callback = RankAuditCallback(every=2, output=tmp_path / "audit.json").attach(trainer)
    trainer.train()
    assert callback.audits == 2

    (event_file,) = (tmp_path / "run").rglob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for kind in MISTRAL_TARGETS:
        for metric in ("stable_rank", "effective_rank", "utilization", "energy_rank_0.9"):
            tag = f"train/rank/{kind}/{metric}"
            assert tag in tags
            assert [e.step for e in events.Scalars(tag)] == [2, 4]
    utilization = [e.value for e in events.Scalars("train/rank/q_proj/utilization")]
    assert all(0 < u <= 1 for u in utilization)  # B starts at zero; after training it is not

    trainer.model.save_pretrained(str(tmp_path / "adapter"))
    final = read_model(tmp_path / "audit.json", AuditResult)
    saved = audit_adapter(tmp_path / "adapter")
    assert [m.name for m in final.modules] == [m.name for m in saved.modules]
    for ours, theirs in zip(final.modules, saved.modules, strict=True):
        np.testing.assert_allclose(ours.singular_values, theirs.singular_values, rtol=1e-12)
        assert ours.suggested_rank == theirs.suggested_rank and ours.scaling == theirs.scaling
    assert final.summary == saved.summary


def test_logged_values_are_the_audit_medians(tmp_path):
    trainer = trainer_for(tmp_path, "none", steps=3)
    RankAuditCallback(every=3).attach(trainer)
    trainer.train()
    (logged,) = [h for h in trainer.state.log_history if "rank/v_proj/stable_rank" in h]
    trainer.model.save_pretrained(str(tmp_path / "adapter"))
    saved = [m for m in audit_adapter(tmp_path / "adapter").modules if m.type == "v_proj"]
    assert logged["step"] == 3
    assert logged["rank/v_proj/stable_rank"] == pytest.approx(
        float(np.median([m.stable_rank for m in saved])), rel=1e-12
    )
    assert logged["rank/v_proj/energy_rank_0.9"] == float(
        np.median([m.energy_rank["0.9"] for m in saved])
    )


def test_without_attach_training_stops_with_one_clear_error(tmp_path):
    trainer = trainer_for(tmp_path, "none", steps=1)
    trainer.add_callback(RankAuditCallback(every=1))
    with pytest.raises(GradienceError, match=r"attach\(trainer\)"):
        trainer.train()
    with pytest.raises(GradienceError, match="every"):
        RankAuditCallback(every=0)


def test_gradience_train_audit_every_writes_the_final_audit(tmp_path, capsys):
    import yaml

    from gradience.cli import main

    config = {
        "model": {"name": "embedded:tiny-mistral-random"},
        "task": {"name": "arithmetic", "generated_train_size": 16, "generated_eval_size": 4},
        "train": {
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "warmup_steps": 0,
            "logging_steps": 1,
            "save_steps": None,
        },
        "lora": {"probe_r": 4, "lora_alpha": 8},
        "compression": {"allowed_ranks": [1, 2, 4], "policy": "knee"},
        "env": {"device": "cpu", "torch_dtype": "float32", "num_threads": 1},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    args = ["train", "--config", str(tmp_path / "config.yaml"), "--uniform", "4"]
    code = main([*args, "--audit-every", "0", "--output", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--audit-every" in err[0]

    assert main([*args, "--audit-every", "1", "--output", str(tmp_path / "out")]) == 0
    final = read_model(tmp_path / "out" / "audit.json", AuditResult)
    saved = audit_adapter(tmp_path / "out" / "adapter", policies=list(final.summary.policies))
    assert "knee" in final.summary.policies and final.allowed_ranks == [1, 2, 4]
    for ours, theirs in zip(final.modules, saved.modules, strict=True):
        assert ours.name == theirs.name
        np.testing.assert_allclose(ours.singular_values, theirs.singular_values, rtol=1e-12)


def test_auditing_a_float64_model_leaves_its_weights_alone():
    from gradience.integrations.model_audit import lora_modules, spectra

    model = get_peft_model(
        tiny_mistral(), LoraConfig(r=1, target_modules=["q_proj"], init_lora_weights=False)
    ).double()
    before = [(a.clone(), b.clone()) for _, a, b in lora_modules(model)]
    assert all(sv[0] > 0 for _, sv in spectra(model))
    for (a0, b0), (_, a, b) in zip(before, lora_modules(model), strict=True):
        assert torch.equal(a0, a) and torch.equal(b0, b)
