"""End to end on the reduced config: real tiny model, real PEFT adapters, real audit, real Ray.

One full local run (module fixture) is checked from every side; the resume, failure and
Ray tests reuse or copy it, so the whole module stays well inside its time budget.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from gradience.cli import main
from gradience.config import ExperimentConfig, load_config
from gradience.experiment import run_mechanism_test
from gradience.experiment.jobs import JobEvent
from gradience.experiment.records import JobRecord, read_record
from gradience.io import read_model
from gradience.ranks import lora_params
from gradience.results import (
    AggregatedResults,
    AuditResult,
    EvalResult,
    RankPattern,
    SeedBench,
    TrainResult,
)

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "experiments" / "configs" / "tiny_test.yaml"
VARIANTS = [
    "probe",
    "per_layer",
    "per_layer_shuffled_within_type",
    "per_layer_shuffled",
    "uniform_matched",
    "per_layer_reversed",
    "per_layer_truncated",
    "per_layer_truncated_crossseed",
    "probe_truncated_shuffled",
]
TRAINED = [v for v in VARIANTS if "truncated" not in v]
#: One variant of each kind of job, for the Ray run (one seed, fake GPUs).
RAY_VARIANTS = ["probe", "per_layer", "per_layer_shuffled_within_type", "per_layer_truncated"]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def tiny_config(**compression: object) -> ExperimentConfig:
    cfg = load_config(TINY_CONFIG).model_copy(deep=True)
    for key, value in compression.items():
        setattr(cfg.compression, key, value)
    return cfg


def one_seed_config(**compression: object) -> ExperimentConfig:
    cfg = tiny_config(**compression)
    cfg.train.seeds = [42]
    if "variants" not in compression:
        cfg.compression.variants = ["probe", "per_layer", "per_layer_shuffled"]
    return cfg


def records(run_dir: Path) -> dict[str, JobRecord]:
    return {
        path.parent.relative_to(run_dir).as_posix(): read_model(path, JobRecord)
        for path in sorted(run_dir.glob("seed_*/*/job.json"))
    }


def ranks_of(run_dir: Path, seed: int, variant: str) -> dict[str, int]:
    return read_model(run_dir / f"seed_{seed}" / "ranks" / f"{variant}.json", RankPattern).ranks


class Interrupt:
    """A progress hook that raises once a job's training reaches a step (a test's 'kill')."""

    def __init__(self, job: str, step: int, error: BaseException):
        self.job, self.step, self.error = job, step, error

    def __call__(self, event: JobEvent) -> None:
        training = event.kind == "progress" and event.data.get("phase") == "train"
        if event.job == self.job and training and (event.data.get("step") or 0) >= self.step:
            raise self.error


class SimulatedKill(BaseException):
    """Not an Exception: like SIGKILL or Ctrl-C, nothing inside the run may catch it."""


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("mechanism") / "run"
    return run_mechanism_test(tiny_config(), run_dir)


def test_every_job_finishes_and_every_output_is_written(local_run) -> None:
    assert local_run.complete and not local_run.failed
    run_dir = local_run.run_dir
    assert load_config(run_dir / "config.yaml") == tiny_config()
    for seed in (42, 43):
        read_model(run_dir / f"seed_{seed}" / "probe" / "audit.json", AuditResult)
        bench = read_model(run_dir / f"seed_{seed}" / "bench.json", SeedBench)
        assert bench.status == "done" and list(bench.variants) == VARIANTS
        for variant in VARIANTS:
            folder = run_dir / f"seed_{seed}" / variant
            for name in ("train_result.json", "eval.json", "predictions.jsonl", "job.json"):
                assert (folder / name).is_file(), folder / name
            summary = bench.variants[variant]
            ranks = ranks_of(run_dir, seed, variant)
            assert summary.rank_histogram == {
                str(r): list(ranks.values()).count(r) for r in sorted(set(ranks.values()))
            }
            assert (
                summary.trainable_params
                == read_model(folder / "train_result.json", TrainResult).trainable_params
            )


def test_saved_adapters_have_exactly_the_rank_pattern_of_their_variant(local_run) -> None:
    for seed in (42, 43):
        for variant in VARIANTS:
            weights = (
                local_run.run_dir
                / f"seed_{seed}"
                / variant
                / "adapter"
                / "adapter_model.safetensors"
            )
            saved = {}
            with safe_open(str(weights), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                    if key.endswith(".lora_A.weight"):
                        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                        saved[name] = handle.get_slice(key).get_shape()[0]
            assert saved == ranks_of(local_run.run_dir, seed, variant), (seed, variant)


def test_per_layer_comes_from_the_probe_audit_and_is_heterogeneous(local_run) -> None:
    for seed in (42, 43):
        audit = read_model(local_run.run_dir / f"seed_{seed}" / "probe" / "audit.json", AuditResult)
        per_layer = ranks_of(local_run.run_dir, seed, "per_layer")
        assert list(per_layer) == [m.name for m in audit.modules]
        assert per_layer == {m.name: m.suggested_rank["energy@0.90"] for m in audit.modules}
        assert max(per_layer.values()) <= 8 and len(set(per_layer.values())) > 1
        assert set(ranks_of(local_run.run_dir, seed, "probe").values()) == {8}


def test_per_layer_shuffled_is_the_seed_rule_permutation_of_per_layer(local_run) -> None:
    for seed in (42, 43):
        per_layer = ranks_of(local_run.run_dir, seed, "per_layer")
        ranks = list(per_layer.values())
        random.Random(seed + 10000).shuffle(ranks)
        assert ranks_of(local_run.run_dir, seed, "per_layer_shuffled") == dict(
            zip(per_layer, ranks, strict=True)
        )


def test_within_type_shuffle_trains_per_layer_parameter_count(local_run) -> None:
    for seed in (42, 43):
        audit = read_model(local_run.run_dir / f"seed_{seed}" / "probe" / "audit.json", AuditResult)
        shapes = {m.name: (m.d_in, m.d_out) for m in audit.modules}
        per_layer = ranks_of(local_run.run_dir, seed, "per_layer")
        within = ranks_of(local_run.run_dir, seed, "per_layer_shuffled_within_type")
        assert lora_params(within, shapes) == lora_params(per_layer, shapes)
        trained = {
            v: read_model(
                local_run.run_dir / f"seed_{seed}" / v / "train_result.json", TrainResult
            ).trainable_params
            for v in ("per_layer", "per_layer_shuffled_within_type")
        }
        assert (
            trained["per_layer"]
            == trained["per_layer_shuffled_within_type"]
            == lora_params(per_layer, shapes)
        )


def test_aggregated_results_follow_the_schema_and_the_runs(local_run) -> None:
    path = local_run.run_dir / "aggregated_results.json"
    results = AggregatedResults.model_validate_json(path.read_text())
    assert results == local_run.results and results.failures == []
    assert results.seeds == [42, 43] and list(results.variants) == VARIANTS
    assert results.alpha_policy == "rslora"  # the default
    ids = results.eval_item_ids
    assert len(ids) == 8 and len(set(ids)) == 8
    for variant, aggregate in results.variants.items():
        assert list(aggregate.runs) == ["42", "43"]
        for seed, run in aggregate.runs.items():
            folder = local_run.run_dir / f"seed_{seed}" / variant
            lines = [
                json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()
            ]
            correct = {item["id"]: int(item["correct"]) for item in lines}
            assert run.item_correct == [correct[i] for i in ids]
            assert run.exact_match == pytest.approx(sum(run.item_correct) / len(ids))
            assert run.ranks_file == f"seed_{seed}/ranks/{variant}.json"
        params = [float(aggregate.runs[s].trainable_params) for s in ("42", "43")]
        assert aggregate.trainable_params.values == params
        mean = sum(params) / 2
        assert aggregate.trainable_params.std == pytest.approx(
            ((params[0] - mean) ** 2 + (params[1] - mean) ** 2) ** 0.5  # ddof=1 with n=2
        )


def test_every_train_result_records_paired_init_and_update_norms(local_run) -> None:
    for seed in (42, 43):
        for variant in TRAINED:
            result = read_model(
                local_run.run_dir / f"seed_{seed}" / variant / "train_result.json", TrainResult
            )
            assert result.paired_init is True
            assert set(result.update_norms) == set(result.ranks)
            assert all(norm > 0 for norm in result.update_norms.values())
    run = local_run.results.variants["per_layer"].runs["42"]
    assert run.ranks and set(run.update_norms) == set(run.ranks)
    assert local_run.results.paired_init is True


def test_reversed_keeps_each_types_ranks_and_gives_the_neediest_module_the_least(local_run) -> None:
    for seed in (42, 43):
        audit = read_model(local_run.run_dir / f"seed_{seed}" / "probe" / "audit.json", AuditResult)
        per_layer = ranks_of(local_run.run_dir, seed, "per_layer")
        reversed_ranks = ranks_of(local_run.run_dir, seed, "per_layer_reversed")
        for kind in {m.type for m in audit.modules}:
            names = [m.name for m in audit.modules if m.type == kind]
            assert sorted(per_layer[n] for n in names) == sorted(reversed_ranks[n] for n in names)
            for a in names:
                for b in names:
                    if per_layer[a] > per_layer[b]:  # the audit says a needs more than b
                        assert reversed_ranks[a] <= reversed_ranks[b]


def test_the_truncation_arm_cuts_the_probe_without_retraining(local_run, tmp_path) -> None:
    from gradience.experiment.variants import module_types
    from gradience.ranks.controls import shuffled_within_type
    from gradience.report.files import analyze_results

    for seed, other in ((42, 43), (43, 42)):
        audit = read_model(local_run.run_dir / f"seed_{seed}" / "probe" / "audit.json", AuditResult)
        shapes = {m.name: (m.d_in, m.d_out) for m in audit.modules}
        # its own per_layer ranks (the cost of compressing); the placement pair: the other
        # seed's audit's ranks and their within-type shuffle, never this probe's own choice
        source = ranks_of(local_run.run_dir, other, "per_layer")
        for variant, expected in (
            ("per_layer_truncated", ranks_of(local_run.run_dir, seed, "per_layer")),
            ("per_layer_truncated_crossseed", source),
            ("probe_truncated_shuffled", shuffled_within_type(source, module_types(audit), seed)),
        ):
            folder = local_run.run_dir / f"seed_{seed}" / variant
            result = read_model(folder / "train_result.json", TrainResult)
            assert result.steps == 0 and result.truncated_from.endswith("probe/adapter")
            assert result.ranks == ranks_of(local_run.run_dir, seed, variant) == expected
            assert result.trainable_params == lora_params(result.ranks, shapes)
            assert set(result.scalings) == set(result.ranks)
            assert (folder / "adapter" / "compress.json").is_file()
        assert lora_params(source, shapes) == lora_params(
            ranks_of(local_run.run_dir, seed, "probe_truncated_shuffled"), shapes
        )
    output = analyze_results(local_run.run_dir, output_dir=tmp_path)
    assert "per_layer_truncated_vs_probe" in output.analysis.contrasts
    assert "per_layer_truncated_crossseed_vs_probe_truncated_shuffled" in output.analysis.contrasts
    assert "## Compression without retraining" in (tmp_path / "report.md").read_text()


def test_a_new_gradience_version_retrains_every_job(local_run, tmp_path: Path, monkeypatch) -> None:
    import gradience

    run_dir = tmp_path / "run"
    shutil.copytree(local_run.run_dir, run_dir)
    monkeypatch.setattr(gradience, "__version__", gradience.__version__ + ".post1")
    cfg = one_seed_config(variants=["probe", "per_layer"])
    run = run_mechanism_test(cfg, run_dir)
    assert {o.status for o in run.outcomes.values()} == {"done"}
    versions = read_model(run_dir / "seed_42" / "probe" / "train_result.json", TrainResult).versions
    assert versions["gradience"].endswith(".post1")


def test_evaluating_the_in_memory_model_equals_loading_the_saved_adapter(
    local_run, tmp_path
) -> None:
    """Each job trains and evaluates one in-memory model; a fresh load of its saved adapter
    scores exactly the same completions."""
    from gradience.evaluate import evaluate_adapter

    for variant in ("probe", "per_layer"):
        folder = local_run.run_dir / "seed_42" / variant
        fresh = evaluate_adapter(tiny_config(), folder / "adapter", tmp_path / variant)
        assert (tmp_path / variant / "predictions.jsonl").read_text() == (
            folder / "predictions.jsonl"
        ).read_text()
        assert fresh.exact_match == read_model(folder / "eval.json", EvalResult).exact_match


def test_rerun_retrains_nothing_and_reproduces_the_aggregate(local_run) -> None:
    before = records(local_run.run_dir)
    aggregated = (local_run.run_dir / "aggregated_results.json").read_text()
    again = run_mechanism_test(tiny_config(), local_run.run_dir)
    assert {o.status for o in again.outcomes.values()} == {"reused"}
    assert records(local_run.run_dir) == before  # attempts, timestamps: untouched
    assert all(r.attempts == 1 for r in before.values())
    assert (local_run.run_dir / "aggregated_results.json").read_text() == aggregated


def test_status_command_lists_every_job(local_run, capsys) -> None:
    assert main(["mechanism", "status", str(local_run.run_dir)]) == 0
    out = capsys.readouterr().out
    for seed in (42, 43):
        for job in ["probe", "audit", *VARIANTS[1:]]:
            assert f"seed_{seed}/{job}" in out
    assert "failed" not in out and "pending" not in out


def test_killed_job_restarts_from_its_checkpoint_and_finished_jobs_are_kept(tmp_path: Path) -> None:
    cfg = one_seed_config()
    kill = Interrupt("seed_42/per_layer_shuffled", step=4, error=SimulatedKill())
    with pytest.raises(SimulatedKill):
        run_mechanism_test(cfg, tmp_path, sink=kill)
    before = records(tmp_path)
    assert before["seed_42/per_layer_shuffled"].status == "running"  # what a kill leaves behind
    assert (tmp_path / "seed_42" / "per_layer_shuffled" / "checkpoints" / "checkpoint-3").is_dir()
    # Another form of damage: a finished job whose eval output disappeared.
    (tmp_path / "seed_42" / "per_layer" / "eval.json").unlink()
    trained_before = (tmp_path / "seed_42" / "per_layer" / "train_result.json").read_text()

    resumed = run_mechanism_test(cfg, tmp_path)
    after = records(tmp_path)
    assert resumed.complete
    for job in ("probe", "ranks"):
        assert after[f"seed_42/{job}"] == before[f"seed_42/{job}"]
    assert after["seed_42/per_layer_shuffled"].attempts == 2
    result = read_model(
        tmp_path / "seed_42" / "per_layer_shuffled" / "train_result.json", TrainResult
    )
    assert result.steps == cfg.train.max_steps and result.resumed_from.endswith("checkpoint-3")
    # Only the evaluation of per_layer was redone: its training result is byte-identical.
    assert after["seed_42/per_layer"].attempts == 2
    assert (tmp_path / "seed_42" / "per_layer" / "train_result.json").read_text() == trained_before
    assert resumed.outcomes["seed_42/probe"].status == "reused"


def test_a_failing_job_is_recorded_and_the_others_still_run(tmp_path: Path) -> None:
    cfg = one_seed_config()
    run = run_mechanism_test(
        cfg, tmp_path, sink=Interrupt("seed_42/per_layer", 2, RuntimeError("disk on fire"))
    )
    assert [o.job for o in run.failed] == ["seed_42/per_layer"]
    assert run.outcomes["seed_42/per_layer_shuffled"].status == "done"
    bench = read_model(tmp_path / "seed_42" / "bench.json", SeedBench)
    assert bench.status == "partial"
    assert bench.variants["per_layer"].status == "failed"
    assert "disk on fire" in bench.variants["per_layer"].error
    assert [(f.seed, f.variant) for f in run.results.failures] == [(42, "per_layer")]
    assert run.results.variants["per_layer"].runs == {}
    assert list(run.results.variants["per_layer_shuffled"].runs) == ["42"]
    record = read_model(tmp_path / "seed_42" / "per_layer" / "job.json", JobRecord)
    assert record.status == "failed" and "RuntimeError: disk on fire" in record.error

    rerun = run_mechanism_test(cfg, tmp_path)
    assert rerun.complete and rerun.outcomes["seed_42/per_layer"].status == "done"
    assert rerun.outcomes["seed_42/per_layer_shuffled"].status == "reused"


def test_probe_gate_stops_the_seed_before_any_variant_trains(tmp_path: Path, capsys) -> None:
    config = tmp_path / "gated.yaml"
    data = load_config(TINY_CONFIG).model_dump(mode="json")
    data["compression"]["probe_gate"] = 1.0  # a random model cannot be perfect
    data["compression"]["variants"] = ["probe", "per_layer"]
    config.write_text(json.dumps(data))  # JSON is YAML
    run_dir = tmp_path / "run"
    code = main(
        ["mechanism", "run", "--config", str(config), "--output", str(run_dir), "--seeds", "42"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "below compression.probe_gate" in err and "training items" in err
    # judged on training items, never on the eval items (no selection on the test set)
    gate = read_model(run_dir / "seed_42" / "probe" / "gate" / "eval.json", EvalResult)
    probe_eval = read_model(run_dir / "seed_42" / "probe" / "eval.json", EvalResult)
    assert gate.n_items > 0 and not set(gate.item_ids) & set(probe_eval.item_ids)
    assert not (run_dir / "seed_42" / "per_layer").exists()
    assert not (run_dir / "seed_42" / "probe" / "audit.json").exists()
    bench = read_model(run_dir / "seed_42" / "bench.json", SeedBench)
    assert bench.status == "gated" and bench.variants["per_layer"].status == "gated"
    results = read_model(run_dir / "aggregated_results.json", AggregatedResults)
    assert {f.variant for f in results.failures} == {"probe", "per_layer"}
    assert results.gated_seeds == [42]
    assert all(not v.runs for v in results.variants.values())
    assert main(["mechanism", "status", str(run_dir)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "seed_42/" in line]
    assert any("seed_42/probe" in row and "done" in row for row in rows)
    assert any("seed_42/per_layer" in row and "gated" in row for row in rows)


def test_ray_executor_matches_the_local_executor(local_run, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    # One seed and one variant of each kind of job (the probe, an audit-ranked and a shuffled
    # variant, a truncation of the probe): every job that takes a GPU is a fresh Ray worker
    # process (max_calls=1, ~10 s each here). The other variants run the same job functions,
    # and the CPU-only two-node test in test_ray_executor.py runs its own set on Ray.
    cfg = tiny_config(variants=RAY_VARIANTS)
    cfg.train.seeds = [42]
    # Two fake GPUs on this CPU-only machine: Ray hands each train+eval job one of them (its
    # CUDA_VISIBLE_DEVICES, recorded in job.json); torch still sees no CUDA and runs on CPU.
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run = run_mechanism_test(cfg, tmp_path, executor="ray")
    finally:
        ray.shutdown()
    assert run.complete
    workers = [read_record(tmp_path / "seed_42" / v).worker for v in RAY_VARIANTS]
    assert all(w["cuda_visible_devices"] in ("0", "1") for w in workers)
    assert len({w["pid"] for w in workers}) == len(workers)  # no worker ran two jobs
    assert list(run.results.variants) == RAY_VARIANTS
    for variant, aggregate in run.results.variants.items():
        assert aggregate.runs == {"42": local_run.results.variants[variant].runs["42"]}
    assert run.results.base_model == local_run.results.base_model
    # Same seed, same threads: the very same adapter bytes, whichever process trained them.
    local_digests = {
        job: r.output_digest
        for job, r in records(local_run.run_dir).items()
        if job.startswith("seed_42/") and job.split("/")[1] in [*RAY_VARIANTS, "ranks"]
    }
    assert {job: r.output_digest for job, r in records(tmp_path).items()} == local_digests
    for variant in RAY_VARIANTS:
        assert ranks_of(tmp_path, 42, variant) == ranks_of(local_run.run_dir, 42, variant)
        predictions = Path("seed_42") / variant / "predictions.jsonl"
        assert (tmp_path / predictions).read_bytes() == (
            local_run.run_dir / predictions
        ).read_bytes()


def test_changed_inputs_retrain_only_what_they_change(local_run, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(local_run.run_dir, run_dir)
    cfg = tiny_config(variants=[*VARIANTS, "uniform_median"])
    run = run_mechanism_test(cfg, run_dir)
    statuses = {job: o.status for job, o in run.outcomes.items()}
    assert statuses["seed_42/uniform_median"] == "done"
    assert statuses["seed_42/audit"] == "done"  # the variant list is an input of the ranks
    assert {statuses[f"seed_42/{v}"] for v in VARIANTS} == {"reused"}
