"""The allocation tournament end to end on the tiny config (issue 20): every allocator trains at
the budget, every shuffle exactly at it, and the analysis and report carry the leaderboard."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

from gradience.config import load_config
from gradience.experiment import run_mechanism_test
from gradience.experiment.allocation import BUDGET_TOLERANCE
from gradience.io import read_model
from gradience.ranks import lora_params
from gradience.results import ALLOCATOR_VARIANTS, AuditResult, RankPattern, TrainResult

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "experiments" / "configs" / "tiny_test.yaml"
ALLOCATORS = [
    "alloc_energy",
    "alloc_global_energy",
    "alloc_depth",
    "alloc_oht",
    "alloc_eva",
    "alloc_adalora",
]
VARIANTS = ["probe", "per_layer", "per_layer_shuffled_k", *ALLOCATORS, "per_layer_crossfit"]
K = 3

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def tournament_config():
    cfg = load_config(TINY_CONFIG).model_copy(deep=True)
    cfg.compression.variants = list(VARIANTS)
    cfg.compression.shuffle_k = K
    cfg.train.max_steps = 10  # AdaLoRA needs room for its warm-up, allocation and final phases
    cfg.train.save_steps = None
    return cfg


@pytest.fixture(scope="module")
def tournament_run(tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("tournament") / "run"
    return run_mechanism_test(tournament_config(), run_dir)


def _adapter_params(folder: Path) -> int:
    """LoRA parameters in the saved adapter's own tensors."""
    total = 0
    with safe_open(str(folder / "adapter" / "adapter_model.safetensors"), "pt") as weights:
        for key in weights.keys():  # noqa: SIM118 - safe_open is not iterable
            count = 1
            for size in weights.get_slice(key).get_shape():
                count *= size
            total += count
    return total


def test_every_allocator_trains_at_the_budget_and_every_shuffle_exactly_at_it(tournament_run):
    assert tournament_run.complete and not tournament_run.failed
    run_dir = tournament_run.run_dir
    for seed in (42, 43):
        ranks_dir = run_dir / f"seed_{seed}" / "ranks"
        audit = read_model(run_dir / f"seed_{seed}" / "probe" / "audit.json", AuditResult)
        shapes = {m.name: (m.d_in, m.d_out) for m in audit.modules}
        budget = read_model(ranks_dir / "per_layer.json", RankPattern).trainable_params
        for variant in ALLOCATORS:
            pattern = read_model(ranks_dir / f"{variant}.json", RankPattern)
            assert pattern.budget == budget
            assert abs(pattern.trainable_params / budget - 1) <= BUDGET_TOLERANCE
            assert pattern.trainable_params == lora_params(pattern.ranks, shapes)
            # what was trained: the adapter's own tensors, and the train result's count
            folder = run_dir / f"seed_{seed}" / variant
            assert _adapter_params(folder) == pattern.trainable_params
            trained = read_model(folder / "train_result.json", TrainResult)
            assert trained.trainable_params == pattern.trainable_params
            assert all(1 <= r <= 8 for r in pattern.ranks.values())
        for index in range(K):
            shuffle = read_model(ranks_dir / f"per_layer_shuffled_k{index}.json", RankPattern)
            assert shuffle.trainable_params == budget
        # the cross-fit trains at the other seed's per_layer ranks
        other = 43 if seed == 42 else 42
        crossfit = read_model(ranks_dir / "per_layer_crossfit.json", RankPattern)
        source = read_model(run_dir / f"seed_{other}" / "ranks" / "per_layer.json", RankPattern)
        assert crossfit.ranks == source.ranks


def test_the_analysis_and_report_carry_the_tournament(tournament_run):
    from gradience.report.files import analyze_results

    run_dir = tournament_run.run_dir
    output = analyze_results(run_dir / "aggregated_results.json")
    section = output.analysis.tournament
    assert section is not None and section.k == K
    names = {entry.variant for entry in section.entries}
    assert set(ALLOCATORS) | {"per_layer", "per_layer_crossfit"} <= names
    assert section.outcome in (
        "allocators_beat_random",
        "no_allocator_beats_random",
        "undetermined",
    )
    for entry in section.entries:
        if entry.variant in ALLOCATOR_VARIANTS:
            assert abs(entry.param_ratio - 1) <= BUDGET_TOLERANCE
    report = (run_dir / "report.md").read_text()
    assert "tournament.png" in report and (run_dir / "tournament.png").stat().st_size > 10_000
    assert (run_dir / "allocation_heatmaps.png").stat().st_size > 10_000


def test_a_tournament_carried_without_weights_resumes_with_every_job_reused(
    tournament_run, tmp_path
):
    from gradience.experiment.reuse import copy_without_weights

    carried = tmp_path / "carried"
    trained = [j for j, o in tournament_run.outcomes.items() if not j.endswith("/audit")]
    assert sorted(copy_without_weights(tournament_run.run_dir, carried)) == sorted(trained)
    resumed = run_mechanism_test(tournament_config(), tmp_path / "resumed", reuse_from=carried)
    statuses = {job: outcome.status for job, outcome in resumed.outcomes.items()}
    # the allocators' and the cross-fit's own rank files came along: nothing is retrained
    assert {s for j, s in statuses.items() if not j.endswith("/audit")} == {"reused"}
    assert {s for j, s in statuses.items() if j.endswith("/audit")} == {"done"}
    for path in tournament_run.run_dir.glob("seed_*/ranks/*.json"):
        relative = path.relative_to(tournament_run.run_dir)
        if relative.name != "job.json":
            assert (resumed.run_dir / relative).read_bytes() == path.read_bytes(), relative
