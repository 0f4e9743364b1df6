"""The truncation arm's placement test is cross-seed, so it is not circular.

per_layer_truncated cuts a seed's probe to the ranks its own audit read off that very spectrum,
so any shuffle of them loses by construction. The placement pair instead cuts the probe to the
per_layer ranks ANOTHER seed's audit chose (per_layer_truncated_crossseed) and to their
within-type shuffle (probe_truncated_shuffled): same parameters, neither read off this probe.
Checked here: the DAG edge across seeds in every executor's scheduling, resume, the config
refusal with one seed, the step-size slope over trained variants only, and the scaling the
truncated adapters record (end to end on the tiny real model, under rsLoRA).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures.mechanism import audit_result, build_results

from gradience.config import ExperimentConfig, load_config
from gradience.errors import GradienceError
from gradience.experiment import plan
from gradience.experiment.jobs import JobOutcome
from gradience.experiment.parallel import Job, _unlocked
from gradience.experiment.variants import (
    check_parameter_exact,
    crossseed_patterns,
    make_pattern,
    module_shapes,
    module_types,
    per_layer_ranks,
)
from gradience.io import read_model, write_model
from gradience.ranks import controls, lora_params
from gradience.results import (
    CROSS_SEED_VARIANTS,
    TRUNCATED_VARIANTS,
    AuditResult,
    EvalResult,
    RankPattern,
    TrainResult,
)
from gradience.stats.step_size import pooled_dependence, update_norm_dependence

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "experiments" / "configs" / "tiny_test.yaml"
ARM = ["probe", "per_layer_truncated", "per_layer_truncated_crossseed", "probe_truncated_shuffled"]
#: The truncation arm's cross-seed pair (the tournament's per_layer_crossfit trains instead).
CROSS_TRUNCATIONS = tuple(v for v in CROSS_SEED_VARIANTS if v in TRUNCATED_VARIANTS)


def config(seeds=(42, 43, 44), variants=("probe", "per_layer", *TRUNCATED_VARIANTS)):
    return ExperimentConfig.model_validate(
        {
            "train": {"seeds": list(seeds)},
            "lora": {"probe_r": 16},
            "compression": {"variants": list(variants), "allowed_ranks": [1, 2, 4, 8, 16]},
        }
    )


# ---------------------------------------------------------------- plan and config


def test_the_rank_source_is_the_next_seed_cyclically() -> None:
    cfg = config()
    assert CROSS_SEED_VARIANTS == plan.CROSS_SEED
    for variant in CROSS_SEED_VARIANTS:
        sources = [plan.rank_source_seed(cfg, s, variant) for s in (42, 43, 44)]
        assert sources == [43, 44, 42]
    assert plan.rank_source_seed(cfg, 42, "per_layer_truncated") == 42  # its own audit


def test_a_cross_seed_job_runs_only_after_both_audits_it_needs() -> None:
    cfg = config()
    order = plan.job_ids(cfg)
    assert len(order) == len(set(order)) == 3 * (2 + len(plan.trained_variants(cfg)) - 1)
    for seed in (42, 43, 44):
        for variant in plan.trained_variants(cfg)[1:]:
            position = order.index(plan.job_id(seed, variant))
            needed = {seed, plan.rank_source_seed(cfg, seed, variant)}
            assert all(order.index(plan.job_id(s, plan.AUDIT)) < position for s in needed)
    # seed 42's cross-seed jobs wait for seed 43's audit; its own truncation does not
    assert order.index("seed_42/per_layer_truncated") < order.index("seed_43/probe")
    assert order.index("seed_42/per_layer_truncated_crossseed") > order.index("seed_43/audit")
    # the audit hands per_layer on even when per_layer itself is not trained
    assert plan.audit_variants(config(variants=ARM)) == [
        "probe",
        "per_layer_truncated",
        "per_layer",
    ]


@pytest.mark.parametrize("variant", CROSS_SEED_VARIANTS)
def test_a_cross_seed_variant_with_one_seed_is_refused_naming_compression_variants(
    tmp_path: Path, variant: str
) -> None:
    path = tmp_path / "one_seed.yaml"
    path.write_text(
        f"train:\n  seeds: [42]\ncompression:\n  variants: [probe, per_layer, {variant}]\n"
    )
    with pytest.raises(GradienceError) as error:
        load_config(path)
    assert "compression.variants" in str(error.value) and variant in str(error.value)
    assert "2 seeds" in str(error.value)
    # a config changed after validation (mechanism run --seeds 42) is refused before any job
    cfg = config(seeds=(42, 43), variants=["probe", variant])
    cfg.train.seeds = [42]
    with pytest.raises(GradienceError) as error:
        plan.RunContext(cfg, tmp_path / "run", identity="x")
    assert error.value.field == "compression.variants"
    assert config(seeds=(42, 43), variants=["probe", variant])  # two seeds are enough


def test_the_inputs_hash_of_a_cross_seed_job_holds_its_source_ranks() -> None:
    cfg = config()
    ranks = {"a": 4, "b": 2}
    base = plan.train_inputs_hash(cfg, 42, "per_layer_truncated_crossseed", ranks, "i", "p", 43)
    assert base != plan.train_inputs_hash(
        cfg, 42, "per_layer_truncated_crossseed", {"a": 2, "b": 4}, "i", "p", 43
    )
    assert base != plan.train_inputs_hash(
        cfg, 42, "per_layer_truncated_crossseed", ranks, "i", "p", 44
    )
    # the hash of every other job is what it was before the cross-seed arm existed
    assert plan.train_inputs_hash(cfg, 42, "per_layer", ranks, "i") == plan.train_inputs_hash(
        cfg, 42, "per_layer", ranks, "i", None, None
    )


# ---------------------------------------------------------------- rank patterns


def test_the_cross_seed_pair_is_the_other_audits_ranks_and_their_parameter_exact_shuffle() -> None:
    cfg = config()
    rng = np.random.default_rng(3)
    own, other = audit_result(6, rng), audit_result(6, rng)
    source = per_layer_ranks(other, cfg)
    patterns = crossseed_patterns(own, source, cfg, 42, 43)
    crossseed = patterns["per_layer_truncated_crossseed"]
    shuffled = patterns["probe_truncated_shuffled"]
    assert crossseed.ranks == source
    assert shuffled.ranks == controls.shuffled_within_type(source, module_types(own), 42)
    assert shuffled.ranks != crossseed.ranks  # 6 layers: the shuffle moves something
    assert shuffled.trainable_params == crossseed.trainable_params
    assert crossseed.trainable_params == lora_params(source, module_shapes(own))
    assert "seed 43" in crossseed.policy and "random.Random(42 + 10000)" in shuffled.policy


def test_the_parameter_exact_check_compares_the_truncated_shuffle_with_the_cross_seed_ranks():
    cfg = config()
    audit = audit_result(4, np.random.default_rng(1))
    shapes = module_shapes(audit)
    per_layer = per_layer_ranks(audit, cfg)
    smaller = {name: 1 for name in per_layer}
    patterns = {
        "per_layer": make_pattern("per_layer", "p", per_layer, shapes, cfg),
        "per_layer_truncated_crossseed": make_pattern("c", "c", smaller, shapes, cfg),
        "probe_truncated_shuffled": make_pattern("s", "s", smaller, shapes, cfg),
    }
    check_parameter_exact(patterns)  # equal to the cross-seed ranks, not to per_layer: fine
    patterns["probe_truncated_shuffled"] = make_pattern("s", "s", per_layer, shapes, cfg)
    with pytest.raises(GradienceError, match="per_layer_truncated_crossseed"):
        check_parameter_exact(patterns)


def test_another_models_ranks_are_refused() -> None:
    cfg = config()
    audit = audit_result(2, np.random.default_rng(1))
    source = dict(per_layer_ranks(audit, cfg))
    source.pop(next(iter(source)))
    with pytest.raises(GradienceError, match="do not name seed 42's modules"):
        crossseed_patterns(audit, source, cfg, 42, 43)


# ---------------------------------------------------------------- the workers' scheduler


def _outcome(job: str) -> JobOutcome:
    return JobOutcome(job, "done", ranks={"per_layer": {"m": 1}})


def test_parallel_workers_unlock_a_cross_seed_job_once_when_its_second_audit_finishes() -> None:
    cfg = config(variants=ARM)
    variants = plan.trained_variants(cfg)[1:]
    audits: dict[int, JobOutcome] = {}
    unlocked: list[Job] = []
    for order, seed in ((1, 43), (0, 42), (2, 44)):  # audits finish out of seed order
        audit = _outcome(plan.job_id(seed, plan.AUDIT))
        jobs = _unlocked(cfg, Job(0, order, "audit", seed), audit, variants, audits)
        unlocked += jobs
        for job in jobs:
            needed = {job.seed, plan.rank_source_seed(cfg, job.seed, job.variant)}
            assert needed <= set(audits) and job.upstream is audits[job.seed]
            if job.variant in CROSS_SEED_VARIANTS:
                source = plan.rank_source_seed(cfg, job.seed, job.variant)
                assert job.source is audits[source]
            else:
                assert job.source is None
    names = sorted((job.seed, job.variant) for job in unlocked)
    assert names == sorted((s, v) for s in (42, 43, 44) for v in variants)  # each exactly once
    first = [(j.seed, j.variant) for j in unlocked[: len(variants)]]
    assert (43, "per_layer_truncated") in first and (43, "probe_truncated_shuffled") not in first


def test_a_cross_seed_job_is_skipped_when_its_rank_source_did_not_finish(tmp_path) -> None:
    from gradience.experiment.jobs import variant_job

    ctx = plan.RunContext(config(), tmp_path, identity="x")
    audit = _outcome("seed_42/audit")
    source = JobOutcome("seed_43/audit", "gated", "seed 43: below compression.probe_gate")
    outcome = variant_job(ctx, 42, "probe_truncated_shuffled", audit, None, None, source)  # type: ignore[arg-type]
    assert outcome.status == "skipped" and "seed_43/audit" in outcome.message
    assert "gated" in outcome.message
    assert not (tmp_path / "seed_42").exists()
    with pytest.raises(ValueError, match="seed_43/audit"):  # a miswired executor fails loudly
        variant_job(ctx, 42, "probe_truncated_shuffled", audit, None, None, audit)  # type: ignore[arg-type]


# ---------------------------------------------------------------- step size


def test_the_pooled_step_size_slope_ignores_the_evaluation_only_truncations() -> None:
    names = [f"model.layers.{i}.mlp.up_proj" for i in range(4)]
    acc = {v: {42: 0.6, 43: 0.61} for v in ("probe", "per_layer", *TRUNCATED_VARIANTS)}
    results = build_results(acc, n_items=50)
    for variant, ranks, slope in (
        ("probe", [8, 8, 8, 8], 0.5),
        ("per_layer", [1, 2, 4, 8], 0.5),
        ("per_layer_truncated", [8, 4, 2, 1], 2.0),  # a spectrum cut, not a step size
        ("per_layer_truncated_crossseed", [1, 8, 2, 4], 2.0),
        ("probe_truncated_shuffled", [4, 1, 8, 2], 2.0),
    ):
        for run in results.variants[variant].runs.values():
            run.ranks = dict(zip(names, ranks, strict=True))
            run.update_norms = {n: 0.1 * r**slope for n, r in zip(names, ranks, strict=True)}
    per_variant = update_norm_dependence(results)
    assert set(per_variant) == {"probe", "per_layer"}
    assert per_variant["per_layer"].slope == pytest.approx(0.5)
    pooled = pooled_dependence(results)
    assert pooled.slope == pytest.approx(0.5)
    assert pooled.n_modules == 2 * 2 * len(names)  # probe and per_layer, two seeds
    for variant in TRUNCATED_VARIANTS:
        del results.variants[variant]
    assert pooled_dependence(results) == pooled


# ---------------------------------------------------------------- end to end


def arm_config(**env: object) -> ExperimentConfig:
    """The tiny real model, two seeds, the probes and per_layer trained (the analysis reads
    truncation contrasts beside per_layer); the arm itself is evaluation only."""
    cfg = load_config(TINY_CONFIG).model_copy(deep=True)
    cfg.train.seeds = [42, 43]
    cfg.train.max_steps = 3
    cfg.train.save_steps = None
    cfg.lora.alpha_policy = "rslora"  # the scaling a truncated module keeps is α/√r_probe
    cfg.compression.variants = ["probe", "per_layer", *ARM[1:]]
    for key, value in env.items():
        setattr(cfg.env, key, value)
    return ExperimentConfig.model_validate(cfg.model_dump())


@pytest.fixture(scope="module")
def arm_run(tmp_path_factory: pytest.TempPathFactory):
    from gradience.experiment import run_mechanism_test

    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield run_mechanism_test(arm_config(), tmp_path_factory.mktemp("arm") / "run")
    finally:
        torch.set_num_threads(threads)


def ranks_of(run_dir: Path, seed: int, variant: str) -> RankPattern:
    return read_model(run_dir / f"seed_{seed}" / "ranks" / f"{variant}.json", RankPattern)


@pytest.mark.slow
def test_two_seeds_cut_each_probe_to_the_other_seeds_audit(arm_run) -> None:
    assert arm_run.complete and not arm_run.failed
    run_dir = arm_run.run_dir
    for seed, other in ((42, 43), (43, 42)):
        audit = read_model(run_dir / f"seed_{seed}" / "probe" / "audit.json", AuditResult)
        source = ranks_of(run_dir, other, "per_layer").ranks
        crossseed = ranks_of(run_dir, seed, "per_layer_truncated_crossseed")
        shuffled = ranks_of(run_dir, seed, "probe_truncated_shuffled")
        assert crossseed.ranks == source
        assert shuffled.ranks == controls.shuffled_within_type(source, module_types(audit), seed)
        assert shuffled.trainable_params == crossseed.trainable_params
        assert ranks_of(run_dir, seed, "per_layer_truncated").ranks == (
            ranks_of(run_dir, seed, "per_layer").ranks  # its own audit's: the cost of compressing
        )
        for variant in ("per_layer_truncated_crossseed", "probe_truncated_shuffled"):
            result = read_model(
                run_dir / f"seed_{seed}" / variant / "train_result.json", TrainResult
            )
            assert result.steps == 0 and result.ranks == ranks_of(run_dir, seed, variant).ranks
            assert result.trainable_params == ranks_of(run_dir, seed, variant).trainable_params
            run = arm_run.results.variants[variant].runs[str(seed)]
            assert run.ranks_file == f"seed_{seed}/ranks/{variant}.json"


@pytest.mark.slow
def test_the_analysis_reads_placement_without_retraining_only_across_seeds(arm_run, tmp_path):
    from gradience.report.files import analyze_results

    contrasts = analyze_results(arm_run.run_dir, output_dir=tmp_path).analysis.contrasts
    placement = contrasts["per_layer_truncated_crossseed_vs_probe_truncated_shuffled"]
    assert "another seed's audit" in placement.role
    assert "per_layer_truncated_vs_probe" in contrasts
    assert "per_layer_vs_per_layer_truncated" in contrasts
    assert "per_layer_truncated_vs_probe_truncated_shuffled" not in contrasts


@pytest.mark.slow
def test_a_truncated_module_records_the_scaling_its_saved_adapter_applies(arm_run) -> None:
    from peft import PeftModel

    from gradience.models import load_model_and_tokenizer
    from gradience.train.lora_build import lora_layers

    cfg = arm_config()
    folder = arm_run.run_dir / "seed_42" / "probe_truncated_shuffled"
    result = read_model(folder / "train_result.json", TrainResult)
    base, _ = load_model_and_tokenizer(cfg)
    loaded = PeftModel.from_pretrained(base, str(folder / "adapter"))
    layers = lora_layers(loaded)
    assert result.scalings is not None and set(result.scalings) == set(layers) == set(result.ranks)
    probe_scaling = cfg.lora.lora_alpha / math.sqrt(cfg.lora.probe_r)  # rsLoRA: α/√r
    for name, layer in layers.items():
        rank = result.ranks[name]
        assert layer.r["default"] == rank
        assert result.scalings[name] == pytest.approx(layer.scaling["default"], rel=1e-12)
        assert result.scalings[name] == pytest.approx(probe_scaling, rel=1e-6)
        # the alpha recorded is the one that gives that scaling under rsLoRA: s·√k, not s·k
        assert result.alphas[name] == pytest.approx(probe_scaling * math.sqrt(rank), rel=1e-6)


@pytest.mark.slow
def test_a_changed_source_audit_redoes_the_other_seeds_cross_seed_jobs(arm_run, tmp_path) -> None:
    from gradience.experiment import run_mechanism_test
    from gradience.experiment.aggregate import seed_states

    run_dir = tmp_path / "run"
    shutil.copytree(arm_run.run_dir, run_dir)
    cfg = arm_config()
    rerun = run_mechanism_test(cfg, run_dir)
    assert {o.status for o in rerun.outcomes.values()} == {"reused"}
    # seed 43's audit now says something else (simulated: its per_layer rank file changes)
    path = run_dir / "seed_43" / "ranks" / "per_layer.json"
    pattern = read_model(path, RankPattern)
    changed = {name: 1 for name in pattern.ranks}
    assert changed != pattern.ranks
    write_model(path, pattern.model_copy(update={"ranks": changed}))
    states, _ = seed_states(plan.RunContext(cfg, run_dir), 42)
    assert {states[v].status for v in CROSS_TRUNCATIONS} == {"pending"}
    assert "stale" in states["per_layer_truncated_crossseed"].error
    assert states["per_layer_truncated"].status == states["per_layer"].status == "done"
    redo = run_mechanism_test(cfg, run_dir)
    statuses = {job: o.status for job, o in redo.outcomes.items()}
    redone = {job for job, status in statuses.items() if status != "reused"}
    # seed 42's cross-seed pair, and seed 43's own per_layer (trained at those ranks); seed
    # 43's cross-seed pair (cut to seed 42's ranks) and every truncation of its own are kept
    assert redone == {f"seed_42/{v}" for v in CROSS_TRUNCATIONS} | {"seed_43/per_layer"}
    assert ranks_of(run_dir, 42, "per_layer_truncated_crossseed").ranks == changed
    assert redo.complete


def same_arm_outputs(run_dir: Path, reference: Path, variants) -> None:
    """Rank files, adapters and predictions of the cross-seed jobs equal the reference run's."""
    from gradience.experiment.records import read_record

    for seed in (42, 43):
        for variant in variants:
            assert ranks_of(run_dir, seed, variant) == ranks_of(reference, seed, variant)
            job = Path(f"seed_{seed}") / variant
            assert (
                read_record(run_dir / job).output_digest
                == read_record(reference / job).output_digest
            )
            predictions = job / "predictions.jsonl"
            assert (run_dir / predictions).read_bytes() == (reference / predictions).read_bytes()


@pytest.mark.slow
def test_ray_wires_the_other_seeds_audit_into_the_cross_seed_jobs(arm_run, tmp_path):
    """Object-store mode: the cross-seed job waits on the other seed's audit ref, gets its
    ranks from that outcome, and ships its own rank file back to the driver. A rerun on the
    shared folder then reuses every job: its inputs hash, built from the other seed's ranks
    handed over by Ray, is the one the first run recorded."""
    ray = pytest.importorskip("ray")
    from gradience.experiment import run_mechanism_test

    cfg = arm_config(ray_run_dir="object_store", ray_scratch_dir=str(tmp_path / "scratch"))
    cfg.compression.variants = ["probe", "per_layer_truncated_crossseed"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run = run_mechanism_test(cfg, tmp_path / "run", executor="ray")
        cfg.env.ray_run_dir = "shared"
        rerun = run_mechanism_test(cfg, tmp_path / "run", executor="ray")
    finally:
        ray.shutdown()
    assert run.complete, [o for o in run.outcomes.values() if not o.ok]
    same_arm_outputs(run.run_dir, arm_run.run_dir, ["per_layer_truncated_crossseed"])
    assert {o.status for o in rerun.outcomes.values()} == {"reused"}


@pytest.mark.slow
def test_a_gated_rank_source_skips_the_cross_seed_jobs_but_keeps_their_seed(arm_run, tmp_path):
    from gradience.experiment.aggregate import aggregate, seed_bench

    run_dir = tmp_path / "run"
    shutil.copytree(arm_run.run_dir, run_dir)
    probe = run_dir / "seed_43" / "probe"
    gate = read_model(probe / "eval.json", EvalResult).model_copy(update={"exact_match": 0.0})
    write_model(probe / "gate" / "eval.json", gate)  # seed 43's probe fails the gate
    cfg = arm_config()
    cfg.compression.probe_gate = 0.5
    ctx = plan.RunContext(cfg, run_dir)
    results = aggregate(ctx)
    assert results.gated_seeds == [43]
    errors = {(f.seed, f.variant): f.error for f in results.failures}
    for variant in CROSS_TRUNCATIONS:
        assert "seed 43's audit" in errors[(42, variant)]
        assert not results.variants[variant].runs
    assert list(results.variants["per_layer_truncated"].runs) == ["42"]
    assert seed_bench(ctx, 42).status == "partial"  # its own jobs all done
