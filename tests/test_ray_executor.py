"""The Ray executor on this machine: a two-node cluster, and no silent CPU fallback (the fake-GPU
hand-out is checked in test_experiment_pipeline.py, beside Ray matching the local executor).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gradience.config import ExperimentConfig, load_config
from gradience.errors import GradienceError
from gradience.experiment import run_mechanism_test
from gradience.experiment.records import file_digest, read_record

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
VARIANTS = ["probe", "per_layer", "per_layer_shuffled_within_type"]


def reduced_config() -> ExperimentConfig:
    cfg = load_config(REPO / "experiments" / "configs" / "tiny_test.yaml")
    cfg.train.seeds = [42]
    cfg.train.max_steps = 2
    cfg.train.save_steps = None
    cfg.compression.variants = list(VARIANTS)
    return cfg


def test_a_cuda_config_never_falls_back_to_cpu_on_a_gpu_less_cluster(tmp_path: Path) -> None:
    cfg = reduced_config()
    cfg.env.device = "cuda"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(GradienceError, match="offers no GPU") as error:
            run_mechanism_test(cfg, tmp_path, executor="ray")
    finally:
        ray.shutdown()
    assert error.value.field == "env.device"
    assert not (tmp_path / "seed_42" / "probe").exists()  # stopped before any job ran


def test_a_two_node_cluster_without_a_shared_disk_completes_the_reduced_config(
    tmp_path: Path,
) -> None:
    """Jobs work in per-node scratch folders; files travel through the object store and the
    driver writes every one into the run folder; a rerun reuses every job the same way."""
    from ray.cluster_utils import Cluster

    cfg = reduced_config()
    cfg.compression.variants = [*VARIANTS, "per_layer_truncated"]  # needs the probe's adapter
    cfg.env.ray_run_dir = "object_store"
    cfg.env.ray_scratch_dir = str(tmp_path / "scratch")
    run_dir = tmp_path / "run"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        run = run_mechanism_test(cfg, run_dir, executor="ray")
        rerun = run_mechanism_test(cfg, run_dir, executor="ray")
    finally:
        ray.shutdown()
        cluster.shutdown()
    trained = [*VARIANTS, "per_layer_truncated"]
    assert run.complete and set(run.results.variants) == set(trained)
    assert {o.status for o in rerun.outcomes.values()} == {"reused"}
    nodes = sorted((tmp_path / "scratch").glob("gradience-node-*"))
    assert len(nodes) == 2  # both nodes worked, each in its own scratch folder
    assert not [p for node in nodes for p in node.iterdir()]  # and removed it afterwards
    for variant in trained:
        folder = run_dir / "seed_42" / variant
        record = read_record(folder)
        assert record.status == "done"
        assert record.output_digest == file_digest(folder / "adapter" / "adapter_model.safetensors")
        result = json.loads((folder / "train_result.json").read_text())
        assert result.get("adapter_dir", str(folder / "adapter")) == str(folder / "adapter")
    assert (run_dir / "seed_42" / "probe" / "audit.json").is_file()
    assert not list(run_dir.rglob("*.tmp"))


def test_auto_sends_files_through_the_object_store_when_a_node_cannot_see_the_run_folder(
    tmp_path: Path,
) -> None:
    from gradience.experiment import plan
    from gradience.experiment.executors import run_dir_is_shared

    cfg = reduced_config()
    (tmp_path / "config.yaml").write_text("{}")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert run_dir_is_shared(plan.RunContext(cfg, tmp_path))
        assert not run_dir_is_shared(plan.RunContext(cfg, tmp_path / "elsewhere"))
    finally:
        ray.shutdown()


def test_a_node_that_cannot_see_a_shared_run_folder_stops_the_run(tmp_path: Path) -> None:
    from gradience.experiment import plan
    from gradience.experiment.executors import run_dir_is_shared

    cfg = reduced_config()
    cfg.env.ray_run_dir = "shared"
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(GradienceError, match="cannot see the run folder") as error:
            run_dir_is_shared(plan.RunContext(cfg, tmp_path / "elsewhere"))
    finally:
        ray.shutdown()
    assert error.value.field == "env.ray_run_dir"
