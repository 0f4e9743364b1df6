"""The model a train+eval job evaluates: trained (or loaded) once per job, freed once.

Training keeps its PeftModel in memory and the evaluations (the probe gate's and the eval
set's) run on that very model: no second load of the base model, and the weights scored are
the weights trained. Only a job whose training finished in an earlier attempt loads the saved
adapter from disk.

When the executor activated a :class:`~gradience.models.reuse.BaseModelCache`, the base model
is borrowed from it instead of loaded, and given back (LoRA unloaded, weights checked) when
the job releases its model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradience.experiment import plan
from gradience.experiment.records import require_weights

if TYPE_CHECKING:
    from gradience.evaluate.batch_size import BatchSize
    from gradience.models.reuse import BaseModelCache
    from gradience.results import EvalResult
    from gradience.tasks import TaskData


@dataclass
class TrainedModel:
    """The model a train+eval job evaluates: loaded once, freed once (see ``release``)."""

    model: Any
    tokenizer: Any
    adapter: str
    #: Where the base model was borrowed from (None: loaded for this job alone).
    base_cache: BaseModelCache | None = None

    def evaluate(
        self,
        ctx: plan.RunContext,
        output_dir: Path,
        task_data: TaskData,
        progress: Callable[[dict], None],
        batch_size: BatchSize | None = None,
        *,
        base_model: bool = False,
    ) -> EvalResult:
        """Score the model on the task's eval items into ``output_dir``.

        ``base_model``: the same evaluation with the LoRA layers switched off, the base model
        as loaded; always on the transformers backend (the model in memory, LoRA switched
        off: no engine to start for one evaluation per run)."""
        from gradience.evaluate import evaluate_model

        cfg, adapter_label, lora = ctx.cfg, self.adapter, contextlib.nullcontext()
        if base_model:
            task = cfg.task.model_copy(update={"eval_backend": "hf"})
            cfg = cfg.model_copy(update={"task": task})
            adapter_label, lora = None, self.model.disable_adapter()
        with lora:
            return evaluate_model(
                cfg,
                self.model,
                self.tokenizer,
                output_dir,
                task_data=task_data,
                progress=progress,
                adapter_label=adapter_label,
                batch_size=batch_size,
            )

    def batch_size(self, ctx: plan.RunContext, task_data: TaskData) -> BatchSize:
        """The generation batch size for this model on the task's eval items."""
        from gradience.evaluate.run import eval_batch_size
        from gradience.tasks import build_prompt

        prompts = [build_prompt(ctx.cfg.task, example) for example in task_data.eval]
        return eval_batch_size(ctx.cfg, self.model, self.tokenizer, prompts)

    def release(self) -> None:
        from gradience.models import release_memory

        if self.base_cache is not None and self.model is not None:
            self.base_cache.give_back(self.model)
        self.model = None
        release_memory()


def job_batch_size(
    ctx: plan.RunContext, model: TrainedModel, task_data: TaskData, decided: int | None
) -> BatchSize:
    """The job's generation batch size: pinned by the config, else ``decided`` by the seed's
    probe, else chosen now (the probe's job; it also holds the most LoRA memory of the seed)."""
    from gradience.evaluate.batch_size import BatchSize

    if ctx.cfg.task.eval_batch_size != "auto":
        return BatchSize(ctx.cfg.task.eval_batch_size, "config")
    if decided is not None:
        return BatchSize(decided, "run")
    return model.batch_size(ctx, task_data)


def train(
    ctx: plan.RunContext,
    seed: int,
    variant: str,
    ranks: Mapping[str, int] | None,
    folder: Path,
    task_data: TaskData,
    progress: Callable[[dict], None],
) -> TrainedModel:
    """Train the variant and keep it in memory: evaluation reuses this very model."""
    from gradience.models.reuse import active_cache
    from gradience.train.run import train_and_keep

    source = None if ranks is None else str(plan.ranks_file(ctx.run_dir, seed, variant))
    cache = active_cache()
    trained = train_and_keep(
        ctx.cfg,
        ranks,
        seed,
        folder,
        variant=variant,
        task_data=task_data,
        progress=progress,
        ranks_source=source,
        model_loader=cache.borrow if cache is not None else None,
    )
    return TrainedModel(trained.model, trained.tokenizer, str(folder / "adapter"), cache)


def load_trained(ctx: plan.RunContext, folder: Path) -> TrainedModel:
    """The base model with the job's saved adapter (unmerged), for an evaluation-only attempt."""
    from gradience.evaluate.run import load_adapter, resolve_adapter_dir
    from gradience.models import load_model_and_tokenizer
    from gradience.models.reuse import active_cache

    adapter = resolve_adapter_dir(folder / "adapter")
    cache = active_cache()
    model, tokenizer = (cache.borrow if cache is not None else load_model_and_tokenizer)(ctx.cfg)
    return TrainedModel(load_adapter(model, adapter), tokenizer, str(adapter), cache)


def truncate_probe(
    ctx: plan.RunContext, seed: int, variant: str, ranks: Mapping[str, int], folder: Path
) -> TrainedModel:
    """The truncation arm: the seed's probe cut to ``ranks`` by exact SVD, no retraining.

    Writes ``adapter/`` (with ``compress.json``) and a ``train_result.json`` with 0 steps,
    the adapter's parameter count and update norms, so that aggregation and the report treat
    it like any variant; then loads it for evaluation (unmerged, like every variant).

    Each module keeps the probe's scaling s at its smaller rank k. ``scalings`` records the s
    the loaded adapter applies (PEFT's ``module.scaling``), ``alphas`` the α it carries for
    it (s·k, or s·√k with rsLoRA: whatever the adapter's config says), both read from the
    loaded model and checked against what the truncation meant to write.
    """
    import shutil
    import time

    from gradience.compress import truncate_adapter
    from gradience.io import write_model
    from gradience.results import TrainResult
    from gradience.train.identity import library_versions
    from gradience.train.lora_build import update_norms

    started = time.perf_counter()
    probe_folder = plan.job_dir(ctx.run_dir, seed, plan.PROBE)
    require_weights(probe_folder)
    probe_adapter = probe_folder / "adapter"
    staging = folder / "adapter.partial"
    shutil.rmtree(staging, ignore_errors=True)
    compressed = truncate_adapter(probe_adapter, ranks, staging)
    shutil.rmtree(folder / "adapter", ignore_errors=True)
    staging.rename(folder / "adapter")
    model = load_trained(ctx, folder)
    try:  # a failure here gives the borrowed base model back before it propagates
        scalings, alphas = loaded_scalings(model.model, {m.name: m for m in compressed.modules})
        write_model(
            folder / "train_result.json",
            TrainResult(
                seed=seed,
                variant=variant,
                base_model=ctx.cfg.model.name,
                ranks=dict(ranks),
                alphas=alphas,
                alpha_policy=f"{ctx.cfg.lora.alpha_policy} (probe's scaling kept by the truncation)",
                scalings=scalings,
                trainable_params=compressed.params_after,
                steps=0,
                tokens=0,
                wall_time_s=time.perf_counter() - started,
                versions=library_versions(),
                config_hash=ctx.cfg.config_hash(),
                update_norms=update_norms(model.model),
                truncated_from=str(probe_adapter),
                kept_energy={m.name: m.kept_energy for m in compressed.modules},
            ),
        )
    except BaseException:
        model.release()
        raise
    return model


def loaded_scalings(
    peft_model: Any, intended: Mapping[str, Any]
) -> tuple[dict[str, float], dict[str, float]]:
    """Each module's (scaling, lora_alpha) as the loaded PEFT model applies them.

    ``intended``: the truncation's ModuleCompression records by module name; a module whose
    loaded rank or scaling differs from them (relative 1e-6: α is rounded once through a
    float) stops the job, so a recorded scaling is always the one the evaluation used.
    """
    from gradience.errors import GradienceError
    from gradience.train.lora_build import ADAPTER_NAME, lora_layers

    scalings: dict[str, float] = {}
    alphas: dict[str, float] = {}
    for name, layer in lora_layers(peft_model).items():
        scaling = float(layer.scaling[ADAPTER_NAME])
        rank = int(layer.r[ADAPTER_NAME])
        record = intended.get(name)
        if (
            record is None
            or rank != record.rank
            or not math.isclose(scaling, record.output_scaling, rel_tol=1e-6)
        ):
            raise GradienceError(
                f"the truncated adapter loads {name} at rank {rank}, scaling {scaling!r}; the "
                f"truncation wrote {getattr(record, 'rank', None)}, "
                f"{getattr(record, 'output_scaling', None)!r}",
                field="compression.variants",
            )
        scalings[name] = scaling
        alphas[name] = float(layer.lora_alpha[ADAPTER_NAME])
    missing = sorted(set(intended) - set(scalings))
    if missing:
        raise GradienceError(
            f"the truncated adapter has no LoRA on {missing[:3]} after loading",
            field="compression.variants",
        )
    return scalings, alphas
