"""The run's shape and the small pure pieces of aggregation."""

from __future__ import annotations

import statistics

import pytest

from gradience.config import ExperimentConfig
from gradience.experiment.aggregate import value_stats
from gradience.experiment.plan import experiment_hash, job_ids, train_inputs_hash, trained_variants


def config(**compression: object) -> ExperimentConfig:
    cfg = ExperimentConfig()
    for key, value in compression.items():
        setattr(cfg.compression, key, value)
    return cfg


def test_variants_run_in_config_order_with_probe_first_and_k_shuffles_expanded() -> None:
    cfg = config(variants=["per_layer", "per_layer_shuffled_k", "probe"], shuffle_k=3)
    assert trained_variants(cfg) == [
        "probe",
        "per_layer",
        "per_layer_shuffled_k0",
        "per_layer_shuffled_k1",
        "per_layer_shuffled_k2",
    ]


def test_every_seed_gets_probe_then_audit_then_its_variants() -> None:
    cfg = config()
    cfg.train.seeds = [44, 42]
    assert job_ids(cfg) == [
        "seed_44/probe",
        "seed_44/audit",
        "seed_44/per_layer",
        "seed_44/per_layer_shuffled_within_type",
        "seed_44/per_layer_shuffled",
        "seed_42/probe",
        "seed_42/audit",
        "seed_42/per_layer",
        "seed_42/per_layer_shuffled_within_type",
        "seed_42/per_layer_shuffled",
    ]


def test_inputs_hash_changes_with_ranks_seed_and_training_but_not_with_where_it_runs() -> None:
    cfg = config()
    base = train_inputs_hash(cfg, 42, "per_layer", {"a": 4, "b": 8})
    assert train_inputs_hash(cfg, 42, "per_layer", {"b": 8, "a": 4}) == base  # order-free
    assert train_inputs_hash(cfg, 42, "per_layer", {"a": 4, "b": 4}) != base
    assert train_inputs_hash(cfg, 43, "per_layer", {"a": 4, "b": 8}) != base
    moved = config()
    moved.env.output_base_dir, moved.env.executor = "/elsewhere", "ray"
    assert train_inputs_hash(moved, 42, "per_layer", {"a": 4, "b": 8}) == base
    assert experiment_hash(moved) == experiment_hash(cfg)
    longer = config()
    longer.train.max_steps = 1201
    assert train_inputs_hash(longer, 42, "per_layer", {"a": 4, "b": 8}) != base
    assert experiment_hash(longer) != experiment_hash(cfg)


def test_value_stats_use_the_sample_standard_deviation() -> None:
    values = [0.61, 0.58, 0.66]
    stats = value_stats(values)
    mean = sum(values) / 3
    assert stats.mean == pytest.approx(mean)
    assert stats.std == pytest.approx((sum((v - mean) ** 2 for v in values) / 2) ** 0.5)
    assert stats.std == pytest.approx(statistics.stdev(values))
    assert value_stats([0.5]).std is None and value_stats([0.5]).mean == 0.5
    assert value_stats([]).mean is None


def test_inputs_hash_covers_data_file_contents_device_revision_and_versions(tmp_path, monkeypatch):
    import gradience

    train_file = tmp_path / "train.jsonl"
    train_file.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    cfg = config()
    cfg.task.train_file = str(train_file)
    base = train_inputs_hash(cfg, 42, "probe", None)
    train_file.write_text('{"question": "1+1?", "answer": "#### 3"}\n')  # same name, new bytes
    assert train_inputs_hash(cfg, 42, "probe", None) != base
    train_file.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    assert train_inputs_hash(cfg, 42, "probe", None) == base
    on_cpu = config()
    on_cpu.task.train_file, on_cpu.env.device = str(train_file), "cpu"
    assert train_inputs_hash(on_cpu, 42, "probe", None) != base
    pinned = config()
    pinned.task.train_file, pinned.task.revision = str(train_file), "abc123"
    assert train_inputs_hash(pinned, 42, "probe", None) != base
    monkeypatch.setattr(gradience, "__version__", "99.0")
    assert train_inputs_hash(cfg, 42, "probe", None) != base
