"""Seeds in worker processes (env.workers) give the results of one process; the base model is scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gradience.config import ExperimentConfig, load_config
from gradience.evaluate import evaluate_model
from gradience.experiment import run_mechanism_test
from gradience.experiment.jobs import BASE_DIR
from gradience.experiment.parallel import worker_threads
from gradience.models import load_model_and_tokenizer

REPO = Path(__file__).resolve().parents[1]
SEEDS = [42, 43]
VARIANTS = ["probe", "per_layer"]
#: Keys that legitimately differ between two runs of the same jobs (timings, paths).
RUN_SPECIFIC = {
    "wall_time_s",
    "train_loop_s",
    "adapter_dir",
    "adapter",
    "generation_time_s",
    "tokens_per_s",
    "config_hash",
}


def reduced_config(workers: int) -> ExperimentConfig:
    cfg = load_config(REPO / "experiments" / "configs" / "tiny_test.yaml")
    cfg.train.seeds = list(SEEDS)
    cfg.train.max_steps = 3
    cfg.train.save_steps = None
    cfg.compression.variants = list(VARIANTS)
    cfg.env.workers = workers
    cfg.env.num_threads = 1
    return cfg


def outputs(
    run_dir: Path, seed: int, variant: str
) -> tuple[dict, dict, str, dict[str, torch.Tensor]]:
    folder = run_dir / f"seed_{seed}" / variant
    train = json.loads((folder / "train_result.json").read_text())
    evaluation = json.loads((folder / "eval.json").read_text())
    for record in (train, evaluation):
        for key in RUN_SPECIFIC:
            record.pop(key, None)
    weights = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
    return train, evaluation, (folder / "predictions.jsonl").read_text(), weights


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    events: list = []
    one = run_mechanism_test(reduced_config(workers=1), root / "one")
    two = run_mechanism_test(reduced_config(workers=2), root / "two", sink=events.append)
    assert one.complete and two.complete
    return one, two, events


def test_two_workers_give_the_results_of_one_process(runs):
    one, two, _ = runs
    assert set(one.outcomes) == set(two.outcomes)
    for seed in SEEDS:
        for variant in VARIANTS:
            a = outputs(one.run_dir, seed, variant)
            b = outputs(two.run_dir, seed, variant)
            assert a[:3] == b[:3], (seed, variant)
            assert a[3].keys() == b[3].keys()
            for name in a[3]:
                assert torch.equal(a[3][name], b[3][name]), (seed, variant, name)
    assert one.results.model_dump() == two.results.model_dump()


def test_worker_events_reach_the_parent_sink(runs):
    _, two, events = runs
    finished = {e.job for e in events if e.kind == "finished"}
    assert finished == set(two.outcomes)
    assert any(e.kind == "progress" for e in events)


def test_threads_are_shared_out_unless_pinned():
    assert worker_threads(None, 2, cores=2) == 1
    assert worker_threads(None, 3, cores=2) == 1
    assert worker_threads(None, 2, cores=16) == 8
    assert worker_threads(4, 2, cores=2) == 4


def test_the_base_model_is_scored_once_and_matches_a_fresh_evaluation(runs, tmp_path):
    one, _, _ = runs
    base = one.results.base_model
    assert base is not None and base.seed == SEEDS[0]
    assert (one.run_dir / f"seed_{SEEDS[0]}" / "probe" / BASE_DIR / "eval.json").is_file()
    assert not (one.run_dir / f"seed_{SEEDS[1]}" / "probe" / BASE_DIR).exists()
    # Independently: the freshly loaded base model, no LoRA ever attached, scores the same.
    cfg = reduced_config(workers=1)
    model, tokenizer = load_model_and_tokenizer(cfg)
    fresh = evaluate_model(cfg, model, tokenizer, tmp_path, batch_size=None)
    assert fresh.exact_match == base.exact_match and fresh.strict_match == base.strict_match
    recorded = (
        one.run_dir / f"seed_{SEEDS[0]}" / "probe" / BASE_DIR / "predictions.jsonl"
    ).read_text()
    assert recorded == (tmp_path / "predictions.jsonl").read_text()


def test_workers_refuse_a_cuda_config():
    from gradience.errors import GradienceError
    from gradience.experiment.parallel import check_cpu_only

    cfg = reduced_config(workers=2)
    check_cpu_only(cfg)  # the CPU config is fine
    cfg.env.device = "cuda"
    with pytest.raises(GradienceError) as error:
        check_cpu_only(cfg)
    assert error.value.field == "env.workers"


def test_workers_kept_across_runs_give_the_results_of_one_process(runs, tmp_path):
    """The sequential loop's steps share one set of workers (each job carries its own run)."""
    from gradience.experiment.parallel import _SHARED, shared_workers

    one, _, _ = runs
    first = reduced_config(workers=2)
    first.train.seeds = SEEDS[:1] + [7]  # a step whose seed list differs from the next one's
    with shared_workers():
        run_mechanism_test(first, tmp_path / "kept")
        pool = _SHARED["workers"]
        second = run_mechanism_test(reduced_config(workers=2), tmp_path / "kept")
        assert _SHARED["workers"] is pool is not None  # the same processes served both
    assert _SHARED["workers"] is None
    assert second.complete
    for seed in SEEDS:
        for variant in VARIANTS:
            a = outputs(one.run_dir, seed, variant)
            b = outputs(second.run_dir, seed, variant)
            assert a[:3] == b[:3], (seed, variant)
