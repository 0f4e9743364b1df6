"""``RankAuditCallback``: watch rank use while a PEFT LoRA model trains under the HF Trainer.

Every ``every`` optimizer steps it audits the model's LoRA modules in memory (the audit's own
math, :mod:`gradience.integrations.model_audit`) and logs, per module type, the median stable
rank, effective rank, utilisation and energy rank through the Trainer's own ``log``, so that
TensorBoard, W&B, MLflow and every other ``report_to`` target receive them with no extra
code (TensorBoard shows them as ``train/rank/<type>/<metric>``). After training it can write
the final audit as ``audit.json``, the same file ``gradience audit --output`` writes::

    trainer = Trainer(model=peft_model, args=args, ...)
    RankAuditCallback(every=50, output="audit.json").attach(trainer)
    trainer.train()

Callbacks are not handed the Trainer, so ``attach`` gives it one (and registers it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from gradience.errors import GradienceError
from gradience.integrations.model_audit import audit_model, spectra, type_metrics
from gradience.io import write_model
from gradience.ranks.policies import DEFAULT_POLICIES

#: Steps between audits when none is given. An audit costs about one training step of the
#: embedded CPU model (benchmarks/callback_overhead.py measures the whole overhead).
DEFAULT_EVERY = 50


class RankAuditCallback(TrainerCallback):
    """Logs per-module-type rank metrics every ``every`` steps; writes ``output`` at the end.

    ``energy`` is the threshold of the logged energy rank; ``policies``, ``allowed_ranks`` and
    ``margin`` only shape the final audit.json, as in ``gradience audit``. ``seconds`` and
    ``audits`` say how much time the periodic audits took, and how many ran.
    """

    def __init__(
        self,
        every: int = DEFAULT_EVERY,
        *,
        energy: float = 0.9,
        output: str | Path | None = None,
        policies: Sequence[str] = DEFAULT_POLICIES,
        allowed_ranks: Sequence[int] | None = None,
        margin: float = 1.0,
        adapter_name: str | None = None,
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise GradienceError(
                f"must be a positive number of steps, got {every!r}", field="every"
            )
        if not 0 < energy <= 1:
            raise GradienceError(f"must be in (0, 1], got {energy}", field="energy")
        self.every = every
        self.energy = energy
        self.output = Path(output) if output is not None else None
        self.policies = tuple(policies)
        self.allowed_ranks = allowed_ranks
        self.margin = margin
        self.adapter_name = adapter_name
        self.trainer: Any = None
        self.seconds = 0.0
        self.audits = 0

    def attach(self, trainer: Any) -> RankAuditCallback:
        """Log through ``trainer`` and register with it (once); returns the callback."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer is None:
            raise GradienceError(
                "RankAuditCallback logs through the Trainer: add it with "
                "RankAuditCallback(...).attach(trainer) rather than Trainer(callbacks=[...])",
                field="trainer",
            )

    def on_step_end(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        if state.global_step % self.every or model is None:
            return
        started = time.perf_counter()
        metrics = type_metrics(spectra(model, self.adapter_name), self.energy)
        self.seconds += time.perf_counter() - started
        self.audits += 1
        self.trainer.log(metrics)

    def on_train_end(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        if self.output is None or model is None or not state.is_world_process_zero:
            return
        audit = audit_model(
            model,
            policies=self.policies,
            allowed_ranks=self.allowed_ranks,
            margin=self.margin,
            adapter_name=self.adapter_name,
            path=f"<in memory: training step {state.global_step}>",
        )
        write_model(self.output, audit)
