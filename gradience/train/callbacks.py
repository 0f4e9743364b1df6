"""Trainer callbacks: stop on a non-finite loss, keep the loss curve, report progress, skip the
final checkpoint."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from gradience.errors import GradienceError
from gradience.faults import fault_point


class NonFiniteLossError(GradienceError):
    """The training loss became NaN or infinite (learning rate, dtype or data)."""


class LossGuard(TrainerCallback):
    """Raises NonFiniteLossError as soon as a logged loss is NaN/inf.

    The Trainer must run with ``logging_nan_inf_filter=False``: otherwise it replaces a
    non-finite step loss by the running mean and the divergence would never be seen.
    """

    def __init__(self, learning_rate: float):
        self.learning_rate = learning_rate

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        # Under fp16 the grad scaler skips steps whose gradients overflow: an inf grad_norm
        # there is routine, not divergence. The loss tells in every precision.
        keys = (
            ("loss", "train_loss")
            if getattr(args, "fp16", False)
            else ("loss", "train_loss", "grad_norm")
        )
        for key in keys:
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value):
                raise NonFiniteLossError(
                    f"training stopped at step {state.global_step}: {key} is {value}; "
                    f"lower train.learning_rate (now {self.learning_rate:g}) or use a wider env.torch_dtype",
                    field="train.learning_rate",
                )


class LossRecorder(TrainerCallback):
    """Keeps (step, loss) of every logging step and the held-out eval losses; forwards progress."""

    def __init__(self, progress: Callable[[dict], None] | None = None):
        self.curve: list[tuple[int, float]] = []
        self.eval_curve: list[tuple[int, float]] = []
        self.progress = progress

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        if "loss" in logs:
            self.curve.append((state.global_step, float(logs["loss"])))
            if self.progress is not None:
                self.progress(
                    {
                        "step": state.global_step,
                        "max_steps": state.max_steps,
                        "loss": float(logs["loss"]),
                    }
                )
        if "eval_loss" in logs:
            self.eval_curve.append((state.global_step, float(logs["eval_loss"])))


class FaultPoints(TrainerCallback):
    """The training fault points of :mod:`gradience.faults` (inert unless GRADIENCE_FAULT is set)."""

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        fault_point("train_step")  # gradients computed, weights not yet updated: mid-step

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        fault_point("checkpoint")  # the Trainer calls this once the checkpoint is on disk


class NoFinalCheckpoint(TrainerCallback):
    """Skips the checkpoint the Trainer writes after the last step (``save_strategy="steps"``).

    The finished adapter is saved right after training and the checkpoint folder deleted, so
    that last checkpoint (on Mistral-7B ~2 GB of adapter, optimizer and RNG state) would be
    written only to be removed. A job killed between the last step and the adapter's save
    resumes from the checkpoint before it. Register it after the Trainer's own callbacks
    (the Trainer's ``callbacks=`` argument does): it undoes what ``DefaultFlowCallback`` set.
    """

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_save = False
