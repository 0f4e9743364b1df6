"""AdaLoRA's rank allocation (PEFT's ``RankAllocator``), trained with the HF Trainer and read as ranks.

AdaLoRA (Zhang et al., ICLR 2023) parametrises each update as P·Λ·Q (``lora_B``, ``lora_E``,
``lora_A``) at ``init_r`` and, during training, zeroes the triplets of lowest smoothed
importance |θ·∇θ| until ``target_r x n_modules`` remain (cubic budget schedule from step
``tinit`` to ``total_step - tfinal``). PEFT does all of this in
``AdaLoraModel.update_and_allocate(global_step)``, which must run every step *after*
``optimizer.step()`` (it zeroes ``lora_E`` entries the step may have revived) and *before*
``zero_grad()`` (it reads ``p.grad``).

Where that is in the HF Trainer (transformers 5.x ``_inner_training_loop``):
``optimizer.step()`` → ``on_optimizer_step`` → ``lr_scheduler.step()`` → ``model.zero_grad()``
→ ``global_step += 1`` → ``on_step_end``. So :class:`AdaLoraAllocator` calls it in
``on_optimizer_step`` (gradients still there, already clipped to ``max_grad_norm``), with
``state.global_step`` = the number of steps finished before this one: 0 at the first step,
as in PEFT's example loop. ``on_step_end`` is too late: the gradients are gone.

PEFT fixes the final pattern at step ``total_step - tfinal`` (``force_mask``) and stores it
in ``peft_config.rank_pattern``: one boolean per triplet, keyed
``<module>.lora_E.<adapter>``. A module's rank is its number of kept triplets (0 if all were
pruned). After that step PEFT only re-applies the same masks, so training stops there: the
last ``tfinal - 1`` steps could not change the allocation. The learning-rate schedule is
still the one of ``total_step`` steps (default ``train.max_steps``), the variants' schedule.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from gradience.errors import GradienceError

if TYPE_CHECKING:
    from gradience.config import ExperimentConfig
    from gradience.tasks import TaskData

ADAPTER_NAME = "default"


@dataclass(frozen=True)
class AdaLoraSettings:
    """AdaLoRA's schedule and regularisation (PEFT's ``AdaLoraConfig`` fields).

    The defaults suit short runs (hundreds of steps): allocation spans most of the run, and
    PEFT's own values are kept where they do not depend on the run's length.
    """

    init_r: int | None = None
    """Rank every module starts from; None: ``lora.probe_r``."""
    target_r: int | None = None
    """Average rank left after allocation; None: 2/3 of ``init_r`` (PEFT's 12 → 8), at least 1."""
    total_step: int | None = None
    """Length of the schedule (and of the LR schedule); None: ``train.max_steps``."""
    tinit: int | None = None
    """Steps before pruning starts, so importance is measured on trained, not random, factors;
    None: 10% of ``total_step``."""
    tfinal: int | None = None
    """Steps after the final allocation; None: 20% of ``total_step``. At least 1, or the
    final allocation (step ``total_step - tfinal``) would fall after the last step."""
    deltaT: int = 1  # noqa: N815 (PEFT's name)
    """Steps between re-allocations; 1 re-allocates every step (short runs have few)."""
    beta1: float = 0.85
    """EMA factor of the importance (PEFT default)."""
    beta2: float = 0.85
    """EMA factor of the importance's uncertainty (PEFT default)."""
    orth_reg_weight: float = 0.5
    """Weight of the orthogonality penalty on P and Q (PEFT default)."""

    def resolved(self, probe_r: int, max_steps: int) -> AdaLoraSettings:
        """Every None filled in and the schedule checked, as PEFT would check it."""
        init_r = self.init_r if self.init_r is not None else probe_r
        total = self.total_step if self.total_step is not None else max_steps
        settings = replace(
            self,
            init_r=init_r,
            target_r=self.target_r if self.target_r is not None else max(1, round(init_r * 2 / 3)),
            total_step=total,
            tinit=self.tinit if self.tinit is not None else total // 10,
            tfinal=self.tfinal if self.tfinal is not None else max(1, total // 5),
        )
        settings._check()
        return settings

    def _check(self) -> None:
        assert self.init_r is not None and self.target_r is not None
        assert self.total_step is not None and self.tinit is not None and self.tfinal is not None
        if not 1 <= self.target_r <= self.init_r:
            raise GradienceError(
                f"target_r must lie in [1, init_r={self.init_r}], got {self.target_r}",
                field="adalora.target_r",
            )
        if self.tfinal < 1:
            raise GradienceError(
                "tfinal must be at least 1: PEFT fixes the ranks at step total_step - tfinal",
                field="adalora.tfinal",
            )
        if self.tinit < 0 or self.tinit >= self.total_step - self.tfinal:
            raise GradienceError(
                f"tinit={self.tinit}, tfinal={self.tfinal} leave no allocation phase in "
                f"total_step={self.total_step} steps",
                field="adalora.tinit",
            )
        if self.deltaT < 1:
            raise GradienceError("deltaT must be at least 1", field="adalora.deltaT")

    @property
    def final_step(self) -> int:
        """The ``global_step`` at which PEFT fixes the allocation."""
        assert self.total_step is not None and self.tfinal is not None
        return self.total_step - self.tfinal


@dataclass
class AdaLoraAllocation:
    """What one AdaLoRA run allocated: ranks per module and PEFT's own masks behind them."""

    ranks: dict[str, int]
    """Kept triplets per module, in model order (0: every triplet pruned)."""
    rank_pattern: dict[str, list[bool]]
    """PEFT's ``peft_config.rank_pattern`` as PEFT left it (keys ``<module>.lora_E.default``)."""
    settings: AdaLoraSettings
    """The settings used, every None resolved."""
    steps: int
    """Optimizer steps trained (``final_step + 1``)."""
    wall_time_s: float


class AdaLoraAllocator(TrainerCallback):
    """Calls ``update_and_allocate`` after every optimizer step; stops once the ranks are final."""

    def __init__(self, peft_model: Any, final_step: int):
        self.peft_model = peft_model
        self.final_step = final_step
        self.allocated_final = False

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # state.global_step counts finished steps: the 0-based index of this one.
        self.peft_model.base_model.update_and_allocate(state.global_step)
        if state.global_step == self.final_step:
            self.allocated_final = True

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.allocated_final:
            control.should_training_stop = True
        return control


def adalora_ranks(
    cfg: ExperimentConfig,
    seed: int,
    settings: AdaLoraSettings | None = None,
    *,
    task_data: TaskData | None = None,
    model_loader: Callable[[ExperimentConfig], tuple[Any, Any]] | None = None,
) -> dict[str, int]:
    """AdaLoRA's final rank per module of ``lora.target_modules`` (see :func:`run_adalora`)."""
    return run_adalora(cfg, seed, settings, task_data=task_data, model_loader=model_loader).ranks


def run_adalora(
    cfg: ExperimentConfig,
    seed: int,
    settings: AdaLoraSettings | None = None,
    *,
    task_data: TaskData | None = None,
    model_loader: Callable[[ExperimentConfig], tuple[Any, Any]] | None = None,
) -> AdaLoraAllocation:
    """Train PEFT's AdaLoRA on the task's training examples until its allocation is final.

    Same data, batches and order (``seed`` is the Trainer's seed and data seed), optimizer,
    learning-rate schedule, clipping and collator as a gradience variant of ``cfg``;
    ``lora.lora_alpha`` and ``lora.lora_dropout`` as configured. ``set_seed(seed)`` before the
    adapter is built and again before training, so a run is a function of ``seed``.
    """
    from transformers import PrinterCallback, Trainer, set_seed

    from gradience.models import load_model_and_tokenizer, quiet_peft_deprecations, release_memory
    from gradience.tasks import load_task
    from gradience.train.arguments import training_arguments
    from gradience.train.data import FeatureDataset, encode_examples, training_collator
    from gradience.train.lora_build import target_module_names

    started = time.perf_counter()
    settings = (settings or AdaLoraSettings()).resolved(cfg.lora.probe_r, cfg.train.max_steps)
    task_data = task_data if task_data is not None else load_task(cfg.task)
    model, tokenizer = (model_loader or load_model_and_tokenizer)(cfg)
    if tokenizer.pad_token_id is None:
        raise GradienceError("the tokenizer has no pad token", field="model.name")
    features = encode_examples(tokenizer, cfg.task, task_data.train).features

    set_seed(seed)  # before get_peft_model: AdaLoRA's P and Q are drawn here
    with quiet_peft_deprecations():
        peft_model = build_adalora_model(model, cfg, settings)
    peft_model.config.use_cache = False
    collator, _ = training_collator(
        cfg.train.padding_free, peft_model.get_base_model(), int(tokenizer.pad_token_id)
    )
    allocator = AdaLoraAllocator(peft_model, settings.final_step)
    # The variants' training settings over total_step steps, without checkpoints or evals.
    train = cfg.train.model_copy(
        update={"max_steps": settings.total_step, "save_steps": None, "eval_steps": None}
    )
    run_cfg = cfg.model_copy(update={"train": train})
    with tempfile.TemporaryDirectory(prefix="gradience-adalora-") as scratch:
        trainer = Trainer(
            model=peft_model,
            args=training_arguments(run_cfg, seed, Path(scratch), quiet=True, held_out=False),
            train_dataset=FeatureDataset(features),
            data_collator=collator,
            callbacks=[allocator],
        )
        trainer.remove_callback(PrinterCallback)
        set_seed(seed)  # the same dropout masks whatever ran since the adapter was built
        trainer.train()
        steps = int(trainer.state.global_step)
    if not allocator.allocated_final:
        raise GradienceError(
            f"AdaLoRA stopped after {steps} steps, before its final allocation at step "
            f"{settings.final_step}",
            field="adalora.total_step",
        )
    rank_pattern = peft_model.peft_config[ADAPTER_NAME].rank_pattern
    ranks = ranks_from_rank_pattern(rank_pattern)
    targeted = target_module_names(peft_model.get_base_model(), cfg.lora.target_modules)
    if list(ranks) != targeted:
        raise GradienceError(
            f"AdaLoRA's rank_pattern names {len(ranks)} modules, lora.target_modules "
            f"selects {len(targeted)} (e.g. {sorted(set(ranks) ^ set(targeted))[:3]})",
            field="lora.target_modules",
        )
    allocation = AdaLoraAllocation(
        ranks=ranks,
        rank_pattern={key: [bool(k) for k in kept] for key, kept in rank_pattern.items()},
        settings=settings,
        steps=steps,
        wall_time_s=time.perf_counter() - started,
    )
    del trainer, peft_model, model, allocator  # only the ranks are kept (accelerate's cycles:
    release_memory()  # collected now, not at some later, larger allocation)
    return allocation


def build_adalora_model(model: Any, cfg: ExperimentConfig, settings: AdaLoraSettings) -> Any:
    """``get_peft_model`` with an ``AdaLoraConfig`` for ``lora.target_modules`` and ``settings``."""
    from peft import AdaLoraConfig, get_peft_model

    config = AdaLoraConfig(
        task_type="CAUSAL_LM",
        init_r=settings.init_r,
        target_r=settings.target_r,
        total_step=settings.total_step,
        tinit=settings.tinit,
        tfinal=settings.tfinal,
        deltaT=settings.deltaT,
        beta1=settings.beta1,
        beta2=settings.beta2,
        orth_reg_weight=settings.orth_reg_weight,
        lora_alpha=cfg.lora.lora_alpha,
        lora_dropout=cfg.lora.lora_dropout,
        target_modules=list(cfg.lora.target_modules),
    )
    return get_peft_model(model, config, adapter_name=ADAPTER_NAME)


def ranks_from_rank_pattern(
    rank_pattern: Mapping[str, Any], adapter_name: str = ADAPTER_NAME
) -> dict[str, int]:
    """Module name → kept triplets, from PEFT's ``rank_pattern`` (booleans per triplet).

    PEFT keys it by the ``lora_E`` parameter's name in the base model
    (``model.layers.0.self_attn.q_proj.lora_E.default``; without ``.default`` once saved);
    the module name is that key without the suffix.
    """
    if not rank_pattern:
        raise GradienceError("AdaLoRA's rank_pattern is empty: no allocation ran", field="adalora")
    ranks = {}
    for key, kept in rank_pattern.items():
        name = key.removesuffix(f".{adapter_name}").removesuffix(".lora_E")
        ranks[name] = int(sum(bool(k) for k in _flat(kept)))
    return ranks


def _flat(kept: Any) -> list:
    return kept.view(-1).tolist() if hasattr(kept, "view") else list(kept)
