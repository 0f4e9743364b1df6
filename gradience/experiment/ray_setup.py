"""What the Ray executor asks of Ray for each task: resources, environment and code; and
whether every node sees the run folder (:func:`run_dir_is_shared`).

* **Resources** (:func:`job_resources`): a train+eval task takes one GPU when the cluster has
  any, and ``env.ray_cpus_per_task`` CPUs (default 1) beside it; without GPUs, those CPUs
  alone. Ray sets ``OMP_NUM_THREADS`` in each task to its CPUs (unless it is set already),
  so torch uses that many threads (``env.num_threads`` overrides it). A request no alive node can meet would leave
  the tasks pending forever: :func:`check_task_fits` stops the run up front instead. The
  audit task (SVDs of r×r matrices) always takes one CPU.
* **Environment** (:func:`task_runtime_env`): Ray workers on another node do not inherit the
  driver's environment, and on this node they inherit the environment Ray was started with,
  not the driver's of today. Every task therefore gets, as its ``runtime_env`` ``env_vars``,
  the variables of :data:`PASSED_ENV_VARS` and ``env.ray_env_vars`` that are set on the
  driver, with the driver's values; variables that are not set are not passed (a task then
  sees its node's own). ``CUDA_VISIBLE_DEVICES`` is never passed: Ray sets it to the GPU it
  grants the task. A token passed this way (``HF_TOKEN``) is stored with the job in Ray's
  metadata, visible to whoever can read the cluster's dashboard or state API; on a cluster
  shared with others, log in on each node instead (``huggingface-cli login``).
* **Code** (:func:`code_runtime_env`): when gradience starts Ray (or connects to a cluster
  with ``env.ray_address``) it ships its own package with the job (``py_modules``), so every
  node runs the driver's gradience, whatever is installed there. The libraries it imports
  (torch, transformers, PEFT, Ray) must be installed on the nodes. Not the working directory:
  it would upload the whole current folder (run folders, caches, a virtualenv) and move the
  workers' cwd, while the jobs need only the code (task data travels through the object
  store; the run folder's path is absolute). Ray takes a local folder for ``py_modules``
  only in ``ray.init``: a Ray initialised before gradience runs keeps the code its own
  ``runtime_env`` says (the environment variables are still passed, per task).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gradience.config_env import EnvConfig
from gradience.errors import GradienceError
from gradience.experiment import plan

#: Passed to every Ray task when set on the driver: Hugging Face access, caches and offline
#: switches, gradience's own cache, and the CUDA allocator / cuBLAS settings.
PASSED_ENV_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "GRADIENCE_CACHE",
    "PYTORCH_CUDA_ALLOC_CONF",
    "PYTORCH_ALLOC_CONF",
    "CUBLAS_WORKSPACE_CONFIG",
)
#: CPUs of the audit task: it computes r×r SVDs and writes small JSON files.
AUDIT_CPUS = 1


def passed_env_vars(env: EnvConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of :data:`PASSED_ENV_VARS` and ``env.ray_env_vars`` set in ``environ``
    (default: this process's environment), with their values."""
    environ = os.environ if environ is None else environ
    names = dict.fromkeys([*PASSED_ENV_VARS, *env.ray_env_vars])
    return {name: environ[name] for name in names if name in environ}


def task_runtime_env(env: EnvConfig, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every task's ``runtime_env``: ``{"env_vars": ...}``, or empty when nothing is set."""
    variables = passed_env_vars(env, environ)
    return {"env_vars": variables} if variables else {}


def code_runtime_env() -> dict[str, Any]:
    """The ``runtime_env`` for ``ray.init``: this gradience package, shipped to every node."""
    import gradience

    return {"py_modules": [str(Path(gradience.__file__).resolve().parent)]}


def job_resources(ctx: plan.RunContext, cluster_gpus: float) -> dict[str, Any]:
    """A train+eval task's resources: one GPU when the cluster has any GPU, and
    ``env.ray_cpus_per_task`` CPUs; never a silent CPU fallback for a config that asks for
    CUDA (or a hub model on ``auto``)."""
    cpus = ctx.cfg.env.ray_cpus_per_task
    if cluster_gpus >= 1:
        return {"num_gpus": 1, "num_cpus": cpus}
    device = ctx.cfg.env.device
    wants_gpu = device == "cuda" or (
        device == "auto" and not ctx.cfg.model.name.startswith("embedded:")
    )
    if wants_gpu:
        raise GradienceError(
            f"env.device is {device!r} but the Ray cluster offers no GPU (on an autoscaling "
            "cluster: its GPU nodes are not up yet). Start GPU nodes and rerun, or set "
            "env.device: cpu to run on CPUs on purpose",
            field="env.device",
        )
    return {"num_cpus": cpus}


def check_task_fits(resources: Mapping[str, Any], nodes: Iterable[Mapping[str, Any]]) -> None:
    """Some alive node (``ray.nodes()``) has the CPUs (and GPU) of one train+eval task, or
    the run stops now: Ray would keep such tasks pending forever."""
    cpus, gpus = resources.get("num_cpus", 0), resources.get("num_gpus", 0)
    offered = [node.get("Resources", {}) for node in nodes if node.get("Alive")]
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in offered):
        return
    most = max((r.get("CPU", 0) for r in offered if r.get("GPU", 0) >= gpus), default=0)
    where = "a node with a GPU" if gpus else "a node"
    raise GradienceError(
        f"each train+eval task asks for {cpus:g} CPU(s), but {where} of this Ray cluster has "
        f"at most {most:g}: the tasks would never start. Lower env.ray_cpus_per_task or add "
        "larger nodes",
        field="env.ray_cpus_per_task",
    )


# ---------------------------------------------------------------- the run folder


def run_dir_is_shared(ctx: plan.RunContext) -> bool:
    """Whether jobs use the run folder directly (``env.ray_run_dir``; see
    :mod:`gradience.experiment.executors`)."""
    mode = ctx.cfg.env.ray_run_dir
    if mode == "shared":
        check_shared_run_dir(ctx)
        return True
    return mode == "auto" and not nodes_without_run_dir(ctx)


def check_shared_run_dir(ctx: plan.RunContext) -> None:
    """Every alive node must see the run folder's config.yaml, or the run stops now."""
    blind = nodes_without_run_dir(ctx)
    if blind:
        raise GradienceError(
            f"Ray node(s) {', '.join(blind)} cannot see the run folder {ctx.run_dir}, and "
            "env.ray_run_dir is 'shared' (jobs read the probe's adapter and write their results "
            "there). Put env.output_base_dir on a shared disk, or set env.ray_run_dir to 'auto' "
            "or 'object_store' to send files through Ray's object store",
            field="env.ray_run_dir",
        )


def nodes_without_run_dir(ctx: plan.RunContext) -> list[str]:
    """The alive nodes that cannot see the run folder's config.yaml (host names, sorted)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = str(ctx.run_dir / "config.yaml")
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    probes = {
        node.get("NodeManagerHostname", node["NodeID"]): ray.remote(_sees_file)
        .options(
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        )
        .remote(marker)
        for node in nodes
    }
    return sorted(host for host, ref in probes.items() if not ray.get(ref))


def _sees_file(path: str) -> bool:
    import os

    return os.path.isfile(path)
