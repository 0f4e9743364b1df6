"""The Ray executor on this machine: fake GPUs, a two-node cluster, and no silent CPU fallback.

``ray.init(num_gpus=2)`` on a CPU-only machine gives Ray two GPU resources to hand out: each
task that takes one gets its own CUDA_VISIBLE_DEVICES, which the jobs record in job.json.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gradience.config import ExperimentConfig, load_config
from gradience.errors import GradienceError
from gradience.experiment import run_mechanism_test
from gradience.experiment.records import read_record

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


def test_each_job_gets_its_own_gpu_and_its_own_worker(tmp_path: Path) -> None:
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run = run_mechanism_test(reduced_config(), tmp_path, executor="ray")
    finally:
        ray.shutdown()
    assert run.complete
    workers = [read_record(tmp_path / "seed_42" / v).worker for v in VARIANTS]
    assert all(w["cuda_visible_devices"] in ("0", "1") for w in workers)
    assert len({w["pid"] for w in workers}) == len(workers)  # no worker ran two jobs


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


def test_a_two_node_cluster_completes_the_reduced_config(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        run = run_mechanism_test(reduced_config(), tmp_path, executor="ray")
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert run.complete and set(run.results.variants) == set(VARIANTS)


def test_a_node_that_cannot_see_the_run_folder_stops_the_run(tmp_path: Path) -> None:
    from gradience.experiment import plan
    from gradience.experiment.executors import check_shared_run_dir

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(GradienceError, match="cannot see the run folder"):
            check_shared_run_dir(plan.RunContext(reduced_config(), tmp_path / "elsewhere"))
    finally:
        ray.shutdown()
