"""Checks before a long run: is there a GPU where the config needs one, can the model be loaded,
will the largest job fit in GPU memory and the adapters on disk?

Used by ``experiments/run_mechanism_test.sh`` (``python -m gradience.experiment.preflight
CONFIG``) so that a 6-hour run does not die after its first minute for want of a login, or
after its first hour for want of memory. Every problem comes with what to do about it. Prints
the run folder as the last stdout line. The memory and disk numbers are estimates from the
model's configuration (:mod:`gradience.experiment.resources`); ``gradience mechanism run``
prints them too, through :func:`resource_report`.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gradience.config import RUN_REQUIRED, ExperimentConfig, load_config
from gradience.errors import GradienceError
from gradience.experiment.resources import (
    CUDA_RESERVE,
    AdapterDisk,
    ModelShape,
    TrainingMemory,
    adapter_disk,
    check_fits,
    gib,
    shape_of,
    training_memory,
)

CPU_CONFIG = "experiments/configs/cpu_demo.yaml"


@dataclass(frozen=True)
class Check:
    level: Literal["ok", "warn", "error"]
    message: str


def is_embedded(cfg: ExperimentConfig) -> bool:
    return cfg.model.name.startswith("embedded:")


def device_check(cfg: ExperimentConfig, cuda_available: bool, mps_available: bool = False) -> Check:
    """A GPU config on a machine without CUDA stops here, unless env.device says cpu."""
    device, model = cfg.env.device, cfg.model.name
    if device == "cpu":
        return Check("ok", "device: cpu (env.device)")
    if device == "mps":
        if mps_available:
            return Check("ok", "device: mps")
        return Check("error", "env.device is 'mps' but MPS is not available; set env.device: cpu")
    if cuda_available:
        return Check("ok", "device: CUDA")
    if device == "cuda":
        return Check(
            "error",
            "env.device is 'cuda' but torch sees no CUDA device: install a CUDA build of torch "
            '(make setup TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu124"), '
            f"or run the CPU demo: {CPU_CONFIG}",
        )
    if is_embedded(cfg):
        return Check("ok", "device: cpu (no CUDA; fine for the embedded model)")
    return Check(
        "error",
        f"no CUDA GPU, and {model} is meant for one (the flagship's 12 jobs: ~40 min projected "
        "on one H100, days on a CPU). On a "
        f"CPU run {CPU_CONFIG}, or set env.device: cpu in the config to force this one.",
    )


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def model_access_check(cfg: ExperimentConfig) -> Check:
    """Embedded or local models are fine; a hub model must be cached, or reachable with access."""
    from gradience.models.hub import PACKAGE_PREFIX, resolve_model_name

    name = cfg.model.name
    if is_embedded(cfg):
        return Check("ok", f"model: {name} (built in, no download)")
    if name.startswith(PACKAGE_PREFIX):
        try:
            folder = Path(resolve_model_name(name))
        except GradienceError as error:
            return Check("error", str(error))
        return local_model_check(folder, cfg.model.gguf_file, f"{name} ({folder})")
    if Path(name).expanduser().is_dir():
        return local_model_check(
            Path(name).expanduser(), cfg.model.gguf_file, f"local folder {name}"
        )
    return hub_access_check(name, cfg.model.revision)


def local_model_check(folder: Path, gguf_file: str | None, label: str) -> Check:
    """A local model folder; with model.gguf_file, that file must be in it."""
    if gguf_file is not None and not (folder / gguf_file).is_file():
        present = sorted(p.name for p in folder.glob("*.gguf"))
        return Check(
            "error",
            f"model.gguf_file: {gguf_file} is not in {folder} (GGUF files there: "
            f"{', '.join(present) or 'none'})",
        )
    return Check("ok", f"model: {label}" + (f", {gguf_file}" if gguf_file else ""))


def hub_access_check(repo_id: str, revision: str | None) -> Check:
    from huggingface_hub import auth_check, get_token, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    cached = isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)
    if offline():
        if cached:
            return Check("ok", f"model: {repo_id} from the local cache (HF_HUB_OFFLINE)")
        return Check(
            "error",
            f"HF_HUB_OFFLINE is set but {repo_id} is not in the Hugging Face cache: unset "
            "HF_HUB_OFFLINE to download it, or set model.name to a local folder",
        )
    login = "run `huggingface-cli login` (or set HF_TOKEN)"
    try:
        auth_check(repo_id, token=get_token())
    except GatedRepoError:
        return Check(
            "error",
            f"{repo_id} is gated: accept its license at https://huggingface.co/{repo_id}, then {login}",
        )
    except RepositoryNotFoundError:
        return Check(
            "error", f"{repo_id} is not on the Hub or is private: check model.name, or {login}"
        )
    except Exception as error:  # noqa: BLE001 - any network failure gets the same advice
        if cached:
            return Check(
                "warn",
                f"Hub unreachable ({type(error).__name__}); the cached {repo_id} will be used: set HF_HUB_OFFLINE=1 to skip the Hub",
            )
        return Check(
            "error",
            f"cannot reach the Hugging Face Hub for {repo_id} ({type(error).__name__}): check the "
            "network; if the model is already cached, set HF_HUB_OFFLINE=1",
        )
    return Check("ok", f"model: {repo_id} accessible on the Hub")


def preflight(cfg: ExperimentConfig) -> list[Check]:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return [
        device_check(cfg, torch.cuda.is_available(), bool(mps and mps.is_available())),
        model_access_check(cfg),
    ]


def model_shape(cfg: ExperimentConfig) -> ModelShape:
    """The base model's shape and its adapted modules' shapes, from its configuration alone."""
    from gradience.models.skeleton import model_skeleton
    from gradience.train.lora_build import target_module_names

    skeleton = model_skeleton(cfg.model)
    modules = dict(skeleton.named_modules())
    names = target_module_names(skeleton, cfg.lora.target_modules)
    return shape_of(skeleton, {n: (modules[n].in_features, modules[n].out_features) for n in names})


def estimate(
    cfg: ExperimentConfig, shape: ModelShape, gradient_checkpointing: bool | None = None
) -> tuple[TrainingMemory, AdapterDisk]:
    """Memory of the probe job (at ``gradient_checkpointing``, default the config's) and disk."""
    from gradience.experiment.plan import trained_variants

    checkpointing = (
        cfg.train.gradient_checkpointing
        if gradient_checkpointing is None
        else gradient_checkpointing
    )
    cuda = runs_on_cuda(cfg)
    memory = training_memory(
        shape,
        batch_size=cfg.train.per_device_train_batch_size,
        seq_len=cfg.task.max_seq_length,
        lora_rank=cfg.lora.probe_r,
        weight_bytes=weight_bytes(cfg, cuda),
        lora_dropout=cfg.lora.lora_dropout,
        gradient_checkpointing=checkpointing,
        eager_attention=cfg.model.attn_implementation == "eager",
        reserve=CUDA_RESERVE if cuda else 0,
    )
    disk = adapter_disk(
        shape,
        lora_rank=cfg.lora.probe_r,
        adapters=len(trained_variants(cfg)) * len(cfg.train.seeds),
        checkpoints=cfg.train.save_steps is not None,
    )
    return memory, disk


def runs_on_cuda(cfg: ExperimentConfig) -> bool:
    """Whether the jobs train on CUDA: env.device cuda, or auto where this machine has CUDA
    (decided without raising: a Ray driver need not have the workers' GPUs)."""
    import torch

    return cfg.env.device == "cuda" or (cfg.env.device == "auto" and torch.cuda.is_available())


def weight_bytes(cfg: ExperimentConfig, cuda: bool) -> int:
    """Bytes per weight at env.torch_dtype; 'auto' is bfloat16 on CUDA, float32 elsewhere."""
    import torch

    from gradience.models import resolve_dtype

    if cfg.env.torch_dtype == "auto":
        return (torch.bfloat16 if cuda else torch.float32).itemsize
    return resolve_dtype(cfg.env).itemsize


def free_gpu_bytes(cfg: ExperimentConfig) -> int | None:
    """Free memory of the GPU the jobs will use; None where this process cannot see it: not
    a CUDA run, no CUDA here, a model spread by model.device_map, or Ray (workers' GPUs)."""
    import torch

    if (
        cfg.model.device_map is not None
        or cfg.env.executor == "ray"
        or not runs_on_cuda(cfg)
        or not torch.cuda.is_available()
    ):
        return None
    return int(torch.cuda.mem_get_info()[0])


def free_disk_bytes(folder: str | Path) -> int:
    """Free bytes on the disk that holds ``folder`` (or its nearest existing parent)."""
    path = Path(folder).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def resource_report(
    cfg: ExperimentConfig,
    output_dir: str | Path,
    config_path: str | None = None,
    emit: Callable[[str], None] | None = None,
) -> None:
    """Print (``emit``, default stderr) the estimates and the free space, then raise
    GradienceError, with the numbers, when the largest job or the adapters do not fit.

    A model whose configuration cannot be read (no access, an architecture the estimate does
    not know) gets a warning line instead: the estimate never blocks a run it cannot judge.
    """
    emit = emit or (lambda line: print(line, file=sys.stderr))
    try:
        shape = model_shape(cfg)
    except (GradienceError, AttributeError, ValueError, OSError) as error:
        emit(f"[warn] no memory/disk estimate: {str(error).splitlines()[0][:300]}")
        return
    memory, disk = estimate(cfg, shape)
    other, _ = estimate(cfg, shape, not cfg.train.gradient_checkpointing)
    free_memory, free_disk = free_gpu_bytes(cfg), free_disk_bytes(output_dir)
    emit(
        f"[estimate] largest job (probe, r={cfg.lora.probe_r}, batch "
        f"{cfg.train.per_device_train_batch_size} x {cfg.task.max_seq_length} tokens): "
        f"{memory.describe()}; with gradient checkpointing "
        f"{'off' if memory.gradient_checkpointing else 'on'}: {gib(other.total)}"
    )
    emit(
        f"[estimate] GPU memory free: {gib(free_memory)}"
        if free_memory is not None
        else "[estimate] GPU memory not checked here (not a CUDA run, no CUDA on this machine, "
        "model.device_map, or Ray workers' GPUs)"
    )
    emit(f"[estimate] adapters on disk: {disk.describe()}; free at {output_dir}: {gib(free_disk)}")
    check_fits(memory, free_memory, disk, free_disk, config_path=config_path)


def main(argv: Sequence[str] | None = None) -> int:
    """``CONFIG``: print each check to stderr, the run folder to stdout.

    Exit codes: 0 ok; 2 a bad config, or the largest job or the adapters would not fit (the
    message has the numbers); 3 blocked (no GPU, no access to the model).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m gradience.experiment.preflight CONFIG", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args[0], required=RUN_REQUIRED)
    except GradienceError as error:
        print(f"gradience: error: {error}", file=sys.stderr)
        return 2
    checks = preflight(cfg)
    for check in checks:
        print(f"[{check.level}] {check.message}", file=sys.stderr)
    if any(check.level == "error" for check in checks):
        print(Path(cfg.env.output_base_dir))
        return 3
    try:
        resource_report(cfg, cfg.env.output_base_dir, config_path=args[0])
    except GradienceError as error:
        print(f"gradience: error: {error}", file=sys.stderr)
        print(Path(cfg.env.output_base_dir))
        return error.exit_code
    print(Path(cfg.env.output_base_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
