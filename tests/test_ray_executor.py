"""The Ray executor on this machine: a two-node cluster, and no silent CPU fallback (the fake-GPU
hand-out is checked in test_experiment_pipeline.py, beside Ray matching the local executor);
what each task gets (its GPU as the model's device map, its environment variables, its CPUs);
and a retried task resuming from its dead attempt's checkpoint.
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


@pytest.fixture(scope="class")
def local_ray():
    """One local Ray for the checks that need a cluster but run no job on it (~10 s a start)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.usefixtures("local_ray")
class TestBeforeAnyJobRuns:
    def test_a_cuda_config_never_falls_back_to_cpu_on_a_gpu_less_cluster(
        self, tmp_path: Path
    ) -> None:
        cfg = reduced_config()
        cfg.env.device = "cuda"
        with pytest.raises(GradienceError, match="offers no GPU") as error:
            run_mechanism_test(cfg, tmp_path, executor="ray")
        assert error.value.field == "env.device"
        assert not (tmp_path / "seed_42" / "probe").exists()  # stopped before any job ran

    def test_auto_sends_files_through_the_object_store_when_a_node_cannot_see_the_run_folder(
        self, tmp_path: Path
    ) -> None:
        from gradience.experiment import plan
        from gradience.experiment.executors import run_dir_is_shared

        cfg = reduced_config()
        (tmp_path / "config.yaml").write_text("{}")
        assert run_dir_is_shared(plan.RunContext(cfg, tmp_path))
        assert not run_dir_is_shared(plan.RunContext(cfg, tmp_path / "elsewhere"))

    def test_a_node_that_cannot_see_a_shared_run_folder_stops_the_run(self, tmp_path: Path) -> None:
        from gradience.experiment import plan
        from gradience.experiment.executors import run_dir_is_shared

        cfg = reduced_config()
        cfg.env.ray_run_dir = "shared"
        with pytest.raises(GradienceError, match="cannot see the run folder") as error:
            run_dir_is_shared(plan.RunContext(cfg, tmp_path / "elsewhere"))
        assert error.value.field == "env.ray_run_dir"


def test_only_a_gpu_task_gets_a_fresh_worker_process() -> None:
    from gradience.experiment.executors import task_options

    gpu = {"num_gpus": 1, "num_cpus": 2, "runtime_env": {"env_vars": {"A": "1"}}}
    assert task_options(gpu) == {**gpu, "max_calls": 1}
    assert task_options({"num_cpus": 2}) == {"num_cpus": 2}  # Ray's default: reused
    assert "max_calls" not in gpu  # the caller's options are left as they were


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
    pids = [read_record(run_dir / "seed_42" / v).worker["pid"] for v in trained]
    assert len(set(pids)) < len(pids)  # CPU-only tasks: a worker took more than one job
    for variant in trained:
        folder = run_dir / "seed_42" / variant
        record = read_record(folder)
        assert record.status == "done"
        assert record.output_digest == file_digest(folder / "adapter" / "adapter_model.safetensors")
        result = json.loads((folder / "train_result.json").read_text())
        assert result.get("adapter_dir", str(folder / "adapter")) == str(folder / "adapter")
    assert (run_dir / "seed_42" / "probe" / "audit.json").is_file()
    assert not list(run_dir.rglob("*.tmp"))


# ---------------------------------------------------------------- the task's GPU, env and CPUs


def test_a_gpu_job_loads_its_model_straight_onto_its_gpu() -> None:
    """On CUDA the hub loader asks from_pretrained for a one-device map on the task's GPU (no
    full copy in host memory first); CPU, MPS, GGUF and an explicit model.device_map as before."""
    import torch

    from gradience.config import ModelConfig
    from gradience.models.hub import load_device_map

    plain = ModelConfig(name="some/model")
    # A Ray task holding one GPU sees only it, as cuda:0 (its current device).
    assert load_device_map(plain, torch.device("cuda"), 0) == {"": torch.device("cuda", 0)}
    # Several visible GPUs: the process's current device, unless the device names one.
    assert load_device_map(plain, torch.device("cuda"), 2) == {"": torch.device("cuda", 2)}
    assert load_device_map(plain, torch.device("cuda", 1), 2) == {"": torch.device("cuda", 1)}
    for device in ("cpu", "mps"):
        assert load_device_map(plain, torch.device(device)) is None  # loaded, then .to(device)
    gguf = ModelConfig(name="some/model", gguf_file="model.gguf")
    assert load_device_map(gguf, torch.device("cuda")) is None
    spread = ModelConfig(name="some/model", device_map="auto")
    assert load_device_map(spread, torch.device("cuda")) == "auto"
    assert load_device_map(spread, torch.device("cpu")) == "auto"


def test_a_one_device_map_loads_an_ordinary_module_without_dispatch_hooks(tmp_path: Path) -> None:
    """What the GPU path relies on, shown on the CPU: a ``{"": device}`` map gives the same
    weights as a plain load, without accelerate hooks or an hf_device_map (so the Trainer and
    the base-model cache see an ordinary module)."""
    import torch
    from transformers import AutoModelForCausalLM

    from gradience.models.embedded import random_model

    model, _ = random_model()
    model.save_pretrained(tmp_path)
    mapped = AutoModelForCausalLM.from_pretrained(tmp_path, device_map={"": torch.device("cpu")})
    assert not any(hasattr(module, "_hf_hook") for module in mapped.modules())
    assert getattr(mapped, "hf_device_map", None) in (None, {"": torch.device("cpu")})
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, mapped.state_dict()[name]), name


def test_the_tasks_runtime_env_passes_the_set_variables_only(tmp_path: Path) -> None:
    from gradience.config import EnvConfig
    from gradience.experiment.ray_setup import code_runtime_env, passed_env_vars, task_runtime_env

    environ = {
        "HF_TOKEN": "hf_x",
        "HF_HOME": "/data/hf",
        "HF_HUB_OFFLINE": "1",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "CUDA_VISIBLE_DEVICES": "3",  # Ray's to set, per task
        "MY_SETTING": "on",
        "UNRELATED": "x",
    }
    env = EnvConfig(ray_env_vars=["MY_SETTING", "NOT_SET_HERE"])
    assert passed_env_vars(env, environ) == {
        "HF_TOKEN": "hf_x",
        "HF_HOME": "/data/hf",
        "HF_HUB_OFFLINE": "1",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "MY_SETTING": "on",
    }
    assert task_runtime_env(EnvConfig(), {"UNRELATED": "x"}) == {}
    assert task_runtime_env(EnvConfig(), {"TRANSFORMERS_OFFLINE": "1"}) == {
        "env_vars": {"TRANSFORMERS_OFFLINE": "1"}
    }
    (package,) = code_runtime_env()["py_modules"]
    assert (Path(package) / "experiment" / "ray_setup.py").is_file()
    config = tmp_path / "c.yaml"
    config.write_text("env:\n  ray_env_vars: [CUDA_VISIBLE_DEVICES]\n")
    with pytest.raises(GradienceError, match="set by Ray in each task") as error:
        load_config(config)
    assert "env.ray_env_vars" in str(error.value)


def test_train_eval_tasks_reserve_the_configured_cpus_and_never_more_than_a_node_has() -> None:
    from gradience.experiment import plan
    from gradience.experiment.ray_setup import check_task_fits, job_resources

    cfg = reduced_config()
    cfg.env.ray_cpus_per_task = 4
    ctx = plan.RunContext(cfg, Path("/run"))
    assert job_resources(ctx, cluster_gpus=8) == {"num_gpus": 1, "num_cpus": 4}
    assert job_resources(ctx, cluster_gpus=0) == {"num_cpus": 4}  # embedded model on CPU
    cpu_node = {"Alive": True, "Resources": {"CPU": 16.0}}
    gpu_node = {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}}
    dead = {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}
    check_task_fits({"num_cpus": 4}, [gpu_node, cpu_node])
    check_task_fits({"num_gpus": 1, "num_cpus": 2}, [gpu_node, cpu_node])
    with pytest.raises(GradienceError, match="a node with a GPU of this Ray cluster has at most 2"):
        check_task_fits({"num_gpus": 1, "num_cpus": 4}, [gpu_node, cpu_node, dead])
    with pytest.raises(GradienceError, match="at most 2") as error:
        check_task_fits({"num_cpus": 4}, [gpu_node, dead])
    assert error.value.field == "env.ray_cpus_per_task"


# ---------------------------------------------------------------- retries resume


def test_a_jobs_scratch_folder_is_the_same_for_every_attempt_and_keeps_only_checkpoints(
    tmp_path: Path,
) -> None:
    from gradience.experiment.shipping import clear, scratch_name

    run = tmp_path / "run"
    assert scratch_name(run, "seed_42/probe") == scratch_name(run, "seed_42/probe")
    names = {
        scratch_name(run, "seed_42/probe"),
        scratch_name(run, "seed_43/probe"),
        scratch_name(run, "seed_42/per_layer"),
        scratch_name(tmp_path / "other", "seed_42/probe"),
    }
    assert len(names) == 4
    folder = tmp_path / "scratch" / scratch_name(run, "seed_42/probe")
    job = folder / "seed_42" / "probe"
    for rel in ("job.json", "adapter/adapter_model.safetensors", "checkpoints/checkpoint-3/x"):
        (job / rel).parent.mkdir(parents=True, exist_ok=True)
        (job / rel).write_text("x")
    (folder / "seed_42" / "ranks").mkdir()
    clear(folder, job / "checkpoints")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "seed_42",
        "seed_42/probe",
        "seed_42/probe/checkpoints",
        "seed_42/probe/checkpoints/checkpoint-3",
        "seed_42/probe/checkpoints/checkpoint-3/x",
    ]
    clear(folder)
    assert not folder.exists()


def test_a_retried_task_resumes_from_the_checkpoint_its_dead_attempt_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Object-store mode, a Ray that run_on_ray starts itself (shipping the package): the
    probe's worker is killed mid step 5 (``GRADIENCE_FAULT``, passed to the tasks through
    ``env.ray_env_vars``: without it the task never dies), after checkpoint-3. Ray retries
    the task on this node; the retry resumes from checkpoint-3, so it runs steps 4-6, never
    reaches a 5th step, and finishes. An attempt that started over would die at its 5th step
    again, every time, and the job would fail."""
    from gradience.faults import ENV_VAR

    cfg = reduced_config()
    cfg.compression.variants = ["probe"]
    cfg.train.max_steps = 6
    cfg.train.save_steps = 3
    cfg.env.ray_run_dir = "object_store"
    cfg.env.ray_scratch_dir = str(tmp_path / "scratch")
    cfg.env.ray_env_vars = [ENV_VAR]
    monkeypatch.setenv(ENV_VAR, "train_step@5")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    run_dir = tmp_path / "run"
    assert not ray.is_initialized()
    run = run_mechanism_test(cfg, run_dir, executor="ray")
    assert not ray.is_initialized()  # started and shut down by the executor
    assert run.complete, {job: o.message for job, o in run.outcomes.items() if not o.ok}
    probe = run_dir / "seed_42" / "probe"
    result = json.loads((probe / "train_result.json").read_text())
    assert result["steps"] == 6
    assert result["resumed_from"] == str(probe / "checkpoints" / "checkpoint-3")
    assert read_record(probe).status == "done"
    assert not (probe / "checkpoints").exists()
    assert not [p for node in (tmp_path / "scratch").iterdir() for p in node.iterdir()]
