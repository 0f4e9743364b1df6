"""Train one LoRA variant with the Hugging Face Trainer and save a verified adapter.

Reads top to bottom: load → encode → seed → build (verified) → paired init → reseed → train
→ save. The seed is set before the PEFT model is built and given to the Trainer's sampler
(data order), so every variant of one seed sees the same batches in the same order; with
``lora.paired_init`` every module's A is drawn from its own (seed, module) generator, so the
variants also start from the same init wherever their ranks overlap; the global RNGs are
reseeded just before the first step, so they also draw the same dropout masks — the paired
design.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradience.config import ExperimentConfig, hash_data
from gradience.errors import GradienceError
from gradience.faults import fault_point
from gradience.io import read_json, write_json_atomic, write_model
from gradience.results import SCHEMA_VERSION, TrainResult
from gradience.train.arguments import training_arguments
from gradience.train.callbacks import FaultPoints, LossGuard, LossRecorder, NoFinalCheckpoint
from gradience.train.checkpoints import last_complete_checkpoint
from gradience.train.data import (
    CompletionCollator,
    FeatureDataset,
    encode_examples,
    training_collator,
)
from gradience.train.identity import library_versions, training_identity_hash
from gradience.train.lora_build import (
    build_peft_model,
    module_alphas,
    target_module_names,
    uniform_ranks,
    update_norms,
)
from gradience.train.paired_init import apply_paired_init

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from gradience.tasks import TaskData

ModelLoader = Callable[[ExperimentConfig], "tuple[PreTrainedModel, PreTrainedTokenizerBase]"]

#: Held-out examples (from the eval split, never trained on) for the eval loss.
EVAL_LOSS_EXAMPLES = 64
CHECKPOINT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
_RUN_MARKER = "gradience_run.json"


@dataclass
class TrainedVariant:
    """A finished training: its result, and the trained PeftModel still in memory.

    Evaluating this very model saves a second load of the base model (on Mistral-7B, 14.5 GB
    and about a minute per job) and scores exactly the weights that were trained. Call
    :meth:`release` when done with the model.
    """

    result: TrainResult
    model: Any
    tokenizer: Any

    def release(self) -> None:
        from gradience.models import release_memory

        self.model = None
        release_memory()


def train_variant(
    cfg: ExperimentConfig,
    ranks: Mapping[str, int] | int | None,
    seed: int,
    output_dir: str | Path,
    *,
    variant: str | None = None,
    task_data: TaskData | None = None,
    model_loader: ModelLoader | None = None,
    progress: Callable[[dict], None] | None = None,
    ranks_source: str | None = None,
    trainer_hook: Callable[[Any], None] | None = None,
) -> TrainResult:
    """Train one variant and write ``output_dir/adapter/`` and ``output_dir/train_result.json``.

    ``ranks``: one rank per adapted module (names relative to the base model); an int for the
    same rank everywhere; None for the probe (``lora.probe_r`` everywhere). ``progress`` gets
    ``{"step", "max_steps", "loss"}`` at every logging step. ``ranks_source`` names the rank
    file in error messages. Resumes from the last checkpoint when ``env.resume_from_checkpoint``.
    ``trainer_hook`` gets the built Trainer before training (e.g. ``RankAuditCallback.attach``).
    The model is freed before returning; :func:`train_and_keep` keeps it for evaluation.
    """
    trained = train_and_keep(
        cfg,
        ranks,
        seed,
        output_dir,
        variant=variant,
        task_data=task_data,
        model_loader=model_loader,
        progress=progress,
        ranks_source=ranks_source,
        trainer_hook=trainer_hook,
    )
    trained.release()
    return trained.result


def train_and_keep(
    cfg: ExperimentConfig,
    ranks: Mapping[str, int] | int | None,
    seed: int,
    output_dir: str | Path,
    *,
    variant: str | None = None,
    task_data: TaskData | None = None,
    model_loader: ModelLoader | None = None,
    progress: Callable[[dict], None] | None = None,
    ranks_source: str | None = None,
    trainer_hook: Callable[[Any], None] | None = None,
) -> TrainedVariant:
    """:func:`train_variant`, returning the trained model in memory (eval mode) with the result.

    The Trainer (and its optimizer state) is dropped and collected before returning, so only
    the model itself stays in memory.
    """
    import torch
    from transformers import set_seed

    from gradience.models import load_model_and_tokenizer, release_memory
    from gradience.tasks import load_task

    output_dir = Path(output_dir)
    started = time.perf_counter()
    if cfg.env.num_threads:
        torch.set_num_threads(cfg.env.num_threads)
    task_data = task_data if task_data is not None else load_task(cfg.task)
    model, tokenizer = (model_loader or load_model_and_tokenizer)(cfg)
    module_ranks = resolve_ranks(model, ranks, cfg)
    train_set = encode_examples(tokenizer, cfg.task, task_data.train)
    eval_features = held_out_features(tokenizer, cfg, task_data)

    set_seed(seed)  # before get_peft_model: LoRA's A matrices are drawn here
    peft_model, trainable = build_peft_model(model, module_ranks, cfg.lora, ranks_source)
    if cfg.lora.paired_init:
        apply_paired_init(peft_model, seed, cfg.lora.probe_r)
    # Training never reuses a KV cache; building one would also make transformers skip the
    # block-diagonal mask of packed (padding-free) batches. Generation turns it back on.
    peft_model.config.use_cache = False

    checkpoint_dir = output_dir / CHECKPOINT_DIR
    run_id = _run_identity(cfg, module_ranks, seed)
    resume = _checkpoint_to_resume(checkpoint_dir, run_id, cfg.env.resume_from_checkpoint)
    recorder = LossRecorder(progress)
    trainer = build_trainer(
        cfg,
        peft_model,
        tokenizer,
        train_set.features,
        eval_features,
        seed,
        checkpoint_dir,
        recorder,
    )
    if trainer_hook is not None:
        trainer_hook(trainer)
    if cfg.train.save_steps is not None:
        write_json_atomic(checkpoint_dir / _RUN_MARKER, run_id)
    loop_started = time.perf_counter()
    reseed_before_training(seed)  # last: nothing between here and the first step draws
    trainer.train(resume_from_checkpoint=resume)
    train_loop_s = time.perf_counter() - loop_started
    eval_loss = final_eval_loss(trainer, recorder) if eval_features else None
    adapter_dir = save_adapter(peft_model, output_dir / ADAPTER_DIR)

    result = TrainResult(
        seed=seed,
        variant=variant,
        base_model=cfg.model.name,
        ranks=dict(module_ranks),
        alphas=module_alphas(module_ranks, cfg.lora),
        alpha_policy=cfg.lora.alpha_policy,
        trainable_params=trainable,
        steps=trainer.state.global_step,
        tokens=int(trainer.state.num_input_tokens_seen),
        wall_time_s=time.perf_counter() - started,
        **loss_summary(recorder.curve),
        dropped_examples=len(train_set.dropped_ids),
        versions=library_versions(),
        config_hash=cfg.config_hash(),
        training_hash=cfg.training_hash(),
        train_examples=len(train_set.features),
        eval_loss=eval_loss,
        eval_loss_curve=recorder.eval_curve,
        probe_r=cfg.lora.probe_r,
        lora_alpha=cfg.lora.lora_alpha,
        use_rslora=cfg.lora.alpha_policy == "rslora",
        resumed_from=resume,
        train_loop_s=train_loop_s,
        adapter_dir=str(adapter_dir),
        paired_init=cfg.lora.paired_init,
        update_norms=update_norms(peft_model),
        padding_free=not isinstance(trainer.data_collator, CompletionCollator),
    )
    write_model(output_dir / "train_result.json", result)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the finished adapter supersedes them
    del trainer  # optimizer state and accelerate's references: not needed to evaluate
    release_memory()
    peft_model.config.use_cache = True
    peft_model.eval()
    return TrainedVariant(result, peft_model, tokenizer)


def reseed_before_training(seed: int) -> None:
    """Reset the python, numpy and torch RNGs to ``seed`` just before ``trainer.train()``.

    Why: building the adapter draws PEFT's LoRA init from the global stream in rank-dependent
    shapes, so afterwards the stream's position depends on the variant's ranks, and so may
    whatever runs between building and training (a ``trainer_hook`` attaching callbacks). The
    LoRA dropout masks (``lora.lora_dropout``) are drawn from that stream, with the input's
    shape whatever the rank: reseeded here, every variant of one seed draws the same masks at
    every step, in every module, as long as the variants adapt the same modules — the paired
    design. The Trainer's own ``set_seed`` in its constructor comes earlier than the hook and
    is its implementation detail, not a promise. A resumed run then restores the RNG states
    saved with its checkpoint, which replace these.
    """
    from transformers import set_seed

    set_seed(seed)


def build_trainer(
    cfg: ExperimentConfig,
    peft_model: Any,
    tokenizer: PreTrainedTokenizerBase,
    train_features: list[dict[str, list[int]]],
    eval_features: list[dict[str, list[int]]],
    seed: int,
    checkpoint_dir: Path,
    recorder: LossRecorder,
) -> Any:
    """:class:`GradienceTrainer` with gradience's collator, NaN guard and loss recorder.

    No checkpoint is written after the last step (:class:`NoFinalCheckpoint`): the adapter
    saved right after training supersedes it.
    """
    from transformers import PrinterCallback

    from gradience.train.trainer import GradienceTrainer

    quiet = recorder.progress is not None
    collator, _ = training_collator(
        cfg.train.padding_free, peft_model.get_base_model(), _pad_id(tokenizer)
    )
    trainer = GradienceTrainer(
        model=peft_model,
        args=training_arguments(
            cfg,
            seed,
            checkpoint_dir,
            quiet=quiet,
            held_out=bool(eval_features),
        ),
        train_dataset=FeatureDataset(train_features),
        eval_dataset=FeatureDataset(eval_features) if eval_features else None,
        data_collator=collator,
        callbacks=[
            LossGuard(cfg.train.learning_rate),
            recorder,
            FaultPoints(),
            NoFinalCheckpoint(),
        ],
    )
    if quiet:
        trainer.remove_callback(PrinterCallback)  # it would print every log dict to stdout
    return trainer


def held_out_features(
    tokenizer: PreTrainedTokenizerBase, cfg: ExperimentConfig, task_data: TaskData
) -> list[dict[str, list[int]]]:
    """Up to EVAL_LOSS_EXAMPLES eval items (never trained on) for the held-out loss; may be empty."""
    head = task_data.eval[:EVAL_LOSS_EXAMPLES]
    if not head:
        return []
    try:
        return encode_examples(tokenizer, cfg.task, head).features
    except GradienceError:  # every one too long: train anyway, without a held-out loss
        return []


def final_eval_loss(trainer: Any, recorder: LossRecorder) -> float:
    """Held-out loss after the last step (reused when the periodic eval just computed it)."""
    if recorder.eval_curve and recorder.eval_curve[-1][0] == trainer.state.global_step:
        return recorder.eval_curve[-1][1]
    return float(trainer.evaluate()["eval_loss"])


def resolve_ranks(
    model: PreTrainedModel, ranks: Mapping[str, int] | int | None, cfg: ExperimentConfig
) -> dict[str, int]:
    """Explicit ranks as given; an int (or None: ``lora.probe_r``) for every adapted module."""
    if ranks is None or isinstance(ranks, int):
        names = target_module_names(model, cfg.lora.target_modules)
        if not names:
            raise GradienceError(
                f"{cfg.lora.target_modules} match no module of {cfg.model.name}",
                field="lora.target_modules",
            )
        return uniform_ranks(names, cfg.lora.probe_r if ranks is None else ranks)
    return dict(ranks)


def save_adapter(peft_model: Any, adapter_dir: Path) -> Path:
    """PEFT save_pretrained (adapter_config.json + safetensors), swapped into place in one rename."""
    staging = adapter_dir.with_name(adapter_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    peft_model.save_pretrained(str(staging), safe_serialization=True)
    fault_point("rename", adapter_dir.name)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    staging.rename(adapter_dir)
    return adapter_dir


def loss_summary(curve: list[tuple[int, float]]) -> dict[str, Any]:
    losses = [loss for _, loss in curve]
    return {
        "loss_curve": curve,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_min": min(losses) if losses else None,
    }


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.pad_token_id is None:
        raise GradienceError("the tokenizer has no pad token", field="model.name")
    return int(tokenizer.pad_token_id)


def _run_identity(cfg: ExperimentConfig, ranks: Mapping[str, int], seed: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the training identity, the ranks and the seed."""
    return {
        "schema_version": SCHEMA_VERSION,
        "training_hash": training_identity_hash(cfg),
        "ranks_hash": hash_data(dict(ranks)),
        "seed": seed,
    }


def _checkpoint_to_resume(
    checkpoint_dir: Path, run_id: dict[str, Any], enabled: bool
) -> str | None:
    """The last checkpoint of this very run, or None; checkpoints of another run are removed."""
    if not checkpoint_dir.is_dir():
        return None
    marker = checkpoint_dir / _RUN_MARKER
    same_run = marker.is_file() and read_json(marker) == run_id
    last = last_complete_checkpoint(checkpoint_dir) if same_run else None
    if enabled and last is not None:
        return last
    shutil.rmtree(checkpoint_dir)  # stale (other config, ranks or seed) or resuming is off
    return None
