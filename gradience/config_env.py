"""The ``env`` section of the experiment configuration: where and how jobs run.

Split from :mod:`gradience.config` (which re-exports :class:`EnvConfig`) to keep each file
readable; like every section it rejects unknown keys.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Set by Ray in every task to the accelerators it grants: never passed from the driver.
RAY_OWNED_ENV_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
_ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EnvConfig(Section):
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="Where to train and evaluate; 'auto' picks CUDA when present."
    )
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "bfloat16",
        description="Weights dtype; bfloat16/float16 also turn on mixed-precision training.",
    )
    output_base_dir: str = Field(
        "experiments/mechanism_test_results",
        description="Where runs are written (relative to the working directory).",
    )
    executor: Literal["local", "ray"] = Field(
        "local", description="Run jobs one by one, or as Ray tasks."
    )
    ray_address: str | None = Field(
        None, description="ray.init(address=...) for the ray executor; null starts a local Ray."
    )
    resume_from_checkpoint: bool = Field(
        True, description="An unfinished training job restarts from its last Trainer checkpoint."
    )
    num_threads: int | None = Field(
        None,
        gt=0,
        description="torch CPU threads per process (null: torch's default, or the cores "
        "shared out among env.workers).",
    )
    workers: int = Field(
        1,
        gt=0,
        description="Local executor: run this many seeds at once, each in its own worker "
        "process (a seed's jobs stay in order: probe, audit, variants). On a CPU, small "
        "models train faster as two one-thread processes than as one two-thread process.",
    )
    deterministic: bool = Field(
        False,
        description="Deterministic kernels: torch.use_deterministic_algorithms(True), cuDNN "
        "deterministic without autotuning, CUBLAS_WORKSPACE_CONFIG=:4096:8. Same GPU model and "
        "library versions then give the same bits (slower; an op without a deterministic kernel "
        "fails). CPU runs are reproducible without it. See README, Reliability.",
    )
    reuse_base_model: bool | None = Field(
        None,
        description="Keep the base model loaded across jobs and re-initialise only LoRA (each "
        "job's LoRA is unloaded and the base weights checked bit-identical before the next job "
        "borrows them; results equal loading afresh). null: on with the local executor unless "
        "model.device_map or train.gradient_checkpointing is set; true: insist; false: load "
        "the base model afresh for every job. Ray jobs always run in fresh workers.",
    )
    ray_run_dir: Literal["auto", "shared", "object_store"] = Field(
        "auto",
        description="How Ray jobs reach the run folder. 'shared': every node sees it (a shared "
        "disk); the run stops up front, naming the node, when one cannot. 'object_store': no "
        "task touches it; job inputs and results travel through Ray's object store, each task "
        "works in a node-local scratch folder and the driver writes every file. 'auto': "
        "'shared' when every node sees the run folder, else 'object_store'.",
    )
    ray_scratch_dir: str | None = Field(
        None,
        description="Node-local folder where Ray tasks work when the run folder travels through "
        "the object store: one subfolder per node, in it one folder per run and job, the same "
        "for every attempt (a retried task resumes from the checkpoints its dead attempt left "
        "there), removed when the job ends (a failed job's checkpoints stay for its next "
        "attempt); null: each node's temp dir.",
    )
    ray_dashboard: bool = Field(
        False,
        description="Start Ray's dashboard (on 127.0.0.1) when gradience starts Ray itself; "
        "off by default. A Ray that gradience starts binds to 127.0.0.1 only.",
    )
    ray_env_vars: list[str] = Field(
        default_factory=list,
        description="More environment variables for Ray tasks, by name: each one set on the "
        "driver is passed to every task (runtime_env env_vars), beside the Hugging Face, "
        "gradience and CUDA allocator variables passed anyway "
        "(gradience.experiment.ray_setup.PASSED_ENV_VARS). Never CUDA_VISIBLE_DEVICES: Ray "
        "sets it per task.",
    )
    ray_cpus_per_task: float = Field(
        1,
        gt=0,
        description="CPUs each train+eval Ray task reserves (num_cpus, beside its GPU); torch "
        "in the task uses that many threads (Ray sets OMP_NUM_THREADS to it unless it is set "
        "already) unless env.num_threads says otherwise. 1 suits a GPU task (its Python loop runs on one core); on a CPU-only "
        "cluster it decides how many jobs share a node.",
    )

    @field_validator("ray_env_vars")
    @classmethod
    def _env_var_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _ENV_VAR_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if name in RAY_OWNED_ENV_VARS:
                raise ValueError(f"{name} is set by Ray in each task (the GPU it grants)")
        return value
