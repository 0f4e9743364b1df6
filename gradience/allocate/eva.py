"""EVA's rank redistribution (PEFT's ``get_eva_state_dict``), read as one rank per module.

EVA (Paischer et al., arXiv 2410.07170) runs the frozen base model on training batches,
takes an incremental SVD of each adapted module's *inputs*, and gives the rank budget
``probe_r x n_modules`` to the modules whose leading right-singular vectors explain the most
variance, at most ``round(probe_r * rho)`` each, possibly 0. PEFT computes this in
:func:`peft.tuners.lora.eva.get_eva_state_dict`, whose result maps every targeted module to a
``(rank, in_features)`` matrix of singular vectors: the number of rows *is* the rank EVA
allocates. Only that number is kept here; the vectors (EVA's initialisation) are dropped.

Modules that receive the same input (``q``/``k``/``v``, ``gate``/``up``) share one SVD in
PEFT; ties at the budget's edge are then resolved by PEFT's own rule, so such modules can
differ by one. Module names are those of ``model.named_modules()`` on the base model
(``model.layers.0.self_attn.q_proj``): the names of gradience's rank patterns and audits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gradience.errors import GradienceError

if TYPE_CHECKING:
    import torch.nn as nn
    from torch.utils.data import DataLoader

    from gradience.config import ExperimentConfig
    from gradience.tasks import TaskData


@dataclass(frozen=True)
class EvaSettings:
    """EVA's knobs; the first three are PEFT's ``EvaConfig`` fields with PEFT's defaults."""

    rho: float = 2.0
    """At most ``round(probe_r * rho)`` rank per module (>= 1; 1 = no redistribution)."""
    tau: float = 0.99
    """Cosine similarity of successive singular vectors at which a module's SVD has converged."""
    use_label_mask: bool = True
    """SVD of the inputs at answer tokens only (labels != -100), as the loss sees them."""
    batch_size: int | None = None
    """Training examples per SVD batch; None: ``train.per_device_train_batch_size``."""
    max_batches: int = 1000
    """Forward passes before giving up on convergence (PEFT itself would cycle forever)."""

    def __post_init__(self) -> None:
        if self.rho < 1.0:
            raise GradienceError(f"rho must be >= 1, got {self.rho}", field="eva.rho")
        if not 0.0 <= self.tau <= 1.0:
            raise GradienceError(f"tau must lie in [0, 1], got {self.tau}", field="eva.tau")
        if self.batch_size is not None and self.batch_size < 1:
            raise GradienceError("batch_size must be positive", field="eva.batch_size")
        if self.max_batches < 2:
            raise GradienceError("max_batches must be at least 2", field="eva.max_batches")


class EvaNotConverged(GradienceError):
    """PEFT's incremental SVD did not converge within ``max_batches`` forward passes."""


def eva_ranks(
    model: nn.Module,
    batches: DataLoader,
    target_modules: Sequence[str],
    probe_r: int,
    settings: EvaSettings | None = None,
) -> dict[str, int]:
    """EVA's rank per targeted module of ``model`` (a plain transformers model, no adapter).

    ``batches``: a sized iterable of model inputs (``input_ids``, ``attention_mask``,
    ``labels``), e.g. :func:`training_batches`; PEFT cycles through it until every module's
    SVD has converged. Returns every module ``target_modules`` selects, in model order, with
    EVA's rank (0 where EVA leaves the module out). The model is left as it was (mode, hooks).
    """
    from peft import LoraConfig

    try:
        from peft.tuners.lora.config import EvaConfig
        from peft.tuners.lora.eva import get_eva_state_dict
    except ImportError as error:  # EVA first shipped in PEFT 0.14
        raise GradienceError(f"EVA needs peft>=0.14 ({error})", field="peft") from error

    from gradience.train.lora_build import target_module_names

    settings = settings or EvaSettings()
    if hasattr(model, "peft_config"):
        raise GradienceError(
            "EVA allocates ranks on the base model: pass it without an adapter", field="model"
        )
    names = target_module_names(model, target_modules)
    if not names:
        raise GradienceError(
            f"{list(target_modules)} match no module of the model", field="lora.target_modules"
        )
    peft_config = LoraConfig(
        r=probe_r,
        target_modules=list(target_modules),
        init_lora_weights="eva",
        eva_config=EvaConfig(
            rho=settings.rho, tau=settings.tau, use_label_mask=settings.use_label_mask
        ),
    )
    forward = _bounded_forward(settings.max_batches)
    try:
        state = get_eva_state_dict(
            model, batches, peft_config=peft_config, forward_fn=forward, show_progress_bar=False
        )
    finally:
        _remove_eva_hooks(model)  # PEFT leaves them behind when a forward pass raises
    return _ranks_in_model_order(state, names)


def _ranks_in_model_order(state: Mapping[str, Any], names: Sequence[str]) -> dict[str, int]:
    """Rows of each module's EVA matrix, keyed in model order; every targeted module present."""
    missing = [name for name in names if name not in state]
    if missing:
        raise GradienceError(
            f"PEFT's EVA returned no rank for {len(missing)} targeted module(s), e.g. "
            f"{missing[:3]} (EVA supports Linear and Conv1D layers only)",
            field="lora.target_modules",
        )
    return {name: int(state[name].shape[0]) for name in names}


def _bounded_forward(max_batches: int) -> Callable[[Any, dict], Any]:
    """PEFT's default forward (``model(**inputs)``), raising after ``max_batches`` calls."""
    calls = 0

    def forward(model: Any, inputs: dict) -> Any:
        nonlocal calls
        calls += 1
        if calls > max_batches:
            raise EvaNotConverged(
                f"EVA's SVD did not converge within {max_batches} batches: lower eva.tau, "
                "raise eva.max_batches, or use larger batches",
                field="eva.max_batches",
            )
        return model(**inputs)

    return forward


def _remove_eva_hooks(model: nn.Module) -> None:
    from peft.tuners.lora.eva import _Hook

    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if isinstance(hook, _Hook):
                del module._forward_hooks[key]


def training_batches(
    features: Sequence[dict[str, list[int]]], pad_token_id: int, batch_size: int, seed: int
) -> DataLoader:
    """The tokenized training examples in a seeded random order, right-padded (labels -100)."""
    import torch
    from torch.utils.data import DataLoader

    from gradience.train.data import CompletionCollator, FeatureDataset

    return DataLoader(
        FeatureDataset(features),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=CompletionCollator(pad_token_id=pad_token_id),
    )


def eva_ranks_for_config(
    cfg: ExperimentConfig,
    seed: int,
    settings: EvaSettings | None = None,
    *,
    task_data: TaskData | None = None,
    model_loader: Callable[[ExperimentConfig], tuple[Any, Any]] | None = None,
) -> dict[str, int]:
    """:func:`eva_ranks` on the configured base model and its task's training examples.

    The examples are encoded as training encodes them (prompt masked, EOS appended, over-long
    ones dropped) and batched in an order drawn from ``seed``; ``lora.target_modules`` and
    ``lora.probe_r`` set the modules and the rank budget (``probe_r`` per module).
    """
    from gradience.models import load_model_and_tokenizer
    from gradience.tasks import load_task
    from gradience.train.data import encode_examples

    settings = settings or EvaSettings()
    task_data = task_data if task_data is not None else load_task(cfg.task)
    model, tokenizer = (model_loader or load_model_and_tokenizer)(cfg)
    if tokenizer.pad_token_id is None:
        raise GradienceError("the tokenizer has no pad token", field="model.name")
    features = encode_examples(tokenizer, cfg.task, task_data.train).features
    batch_size = settings.batch_size or cfg.train.per_device_train_batch_size
    batches = training_batches(features, int(tokenizer.pad_token_id), batch_size, seed)
    return eva_ranks(model, batches, cfg.lora.target_modules, cfg.lora.probe_r, settings)
