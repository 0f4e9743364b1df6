"""The Trainer gradience trains with: Hugging Face's, minus two costs of every GPU step.

**Tokens seen without a per-step sync.** With ``include_num_input_tokens_seen`` the Trainer
reads its token count back to the host (``.item()``) after every micro-batch, which stalls
the GPU queue once per step. :class:`GradienceTrainer` counts the same tokens instead (the
non-padding tokens: ``attention_mask.sum()`` of a padded batch, every ``input_ids`` entry of
a flattened one, exactly what the Trainer's ``"non_padding"`` and ``"all"`` modes counted
for those batches) as a host integer (flattened: a shape, no kernel) or a running sum on the
device (padded), and adds it to ``state.num_input_tokens_seen`` only where that number is
read: before a checkpoint is written (so a resumed run continues from the right count) and
when training ends.

**PEFT's per-layer input casting off where autocast makes it a no-op.** See
:func:`lora_input_casting_removable` and :func:`lora_input_casting`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from transformers import Trainer, TrainerCallback


def lora_input_casting_removable(args: Any) -> bool:
    """Whether PEFT's cast of every LoRA input to the adapter's dtype can be skipped: under autocast.

    PEFT keeps the LoRA weights in fp32 on a bf16 base (``autocast_adapter_dtype``) and, in
    every adapted layer, copies the layer's input to fp32 before the LoRA branch: on
    Mistral-7B 224 full-size activation copies per forward. Under autocast (the Trainer's
    ``bf16``/``fp16``, i.e. gradience's CUDA training) that copy buys nothing: autocast runs
    every ``nn.Linear``, LoRA's A and B included, in the autocast dtype, so it casts the fp32
    copy straight back, and the fp32 master weights and their fp32 gradients (what Adam
    updates) are the same either way. What changes is where LoRA dropout runs: on the bf16
    input instead of its fp32 copy, which rounds the 1/(1-p) scaling differently (and a
    device's kernel may lay the mask out differently per dtype). Measured on a CPU under
    bf16 autocast (``tests/test_train_fast_path.py``): with ``lora_dropout: 0`` the losses
    are equal bit for bit; with 0.1 they differ by at most 7e-5 relative over 4 steps.

    Without autocast the cast is not optional: a bf16 base with fp32 adapters (a bf16 model
    on a CPU, where gradience never autocasts) would hand bf16 inputs to fp32 weights, which
    ``F.linear`` refuses; and with an fp32 base the cast is already a no-op (PEFT skips it
    when the dtypes match), so there is nothing to save.
    """
    return bool(getattr(args, "bf16", False) or getattr(args, "fp16", False))


@contextlib.contextmanager
def lora_input_casting(model: Any, enabled: bool) -> Iterator[int]:
    """Within the block, PEFT's input casting is ``enabled`` or not in every plain LoRA layer.

    Yields how many layers were switched off (0 when ``enabled``, or when this PEFT has no
    ``cast_input_dtype_enabled`` switch: it arrived with huggingface/peft#2353, in 2025, and
    older versions always cast). LoRA variants (DoRA and the like) keep casting: their
    forward does more than two ``nn.Linear``. The previous values are restored on exit, so
    evaluation and generation after training (no autocast) cast as PEFT does by default.
    """
    switched = []
    if not enabled:
        for module in model.modules():
            if getattr(module, "cast_input_dtype_enabled", None) is not True:
                continue
            if getattr(module, "lora_variant", None):
                continue
            module.cast_input_dtype_enabled = False
            switched.append(module)
    try:
        yield len(switched)
    finally:
        for module in switched:
            module.cast_input_dtype_enabled = True


class TokenCounter:
    """Non-padding input tokens of the micro-batches trained on since the last :meth:`take`."""

    def __init__(self) -> None:
        self._host = 0
        self._device: Any = None

    def add(self, inputs: Mapping[str, Any]) -> None:
        """Count one micro-batch; never reads a device tensor back."""
        mask = inputs.get("attention_mask")
        if mask is None:  # flattened (padding-free): every token is a real one
            self._host += int(inputs["input_ids"].numel())
            return
        tokens = mask.sum()
        self._device = tokens if self._device is None else self._device + tokens

    def take(self, trainer: Trainer) -> int:
        """The count over every process (one sync), reset to 0."""
        import torch

        local = torch.as_tensor(self._host, device=trainer.args.device, dtype=torch.int64)
        if self._device is not None:
            local = local + self._device.to(device=local.device, dtype=torch.int64)
        self._host, self._device = 0, None
        return int(trainer.accelerator.gather(local).sum().item())


class GradienceTrainer(Trainer):
    """The Trainer, counting tokens without a per-step sync and skipping PEFT's input casting
    under autocast (see the module docstring). Give it ``include_num_input_tokens_seen=False``:
    it keeps ``state.num_input_tokens_seen`` itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.token_counter = TokenCounter()
        #: LoRA layers whose input casting was off during the last train() (0: none).
        self.uncast_lora_layers = 0
        self.add_callback(_FlushTokens(self))

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.token_counter.add(inputs)
        return super().training_step(model, inputs, *args, **kwargs)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        enabled = not lora_input_casting_removable(self.args)
        with lora_input_casting(self.model, enabled=enabled) as switched:
            self.uncast_lora_layers = switched
            return super().train(*args, **kwargs)

    def flush_tokens(self) -> None:
        """Add the tokens counted since the last flush to ``state.num_input_tokens_seen``."""
        self.state.num_input_tokens_seen += self.token_counter.take(self)


class _FlushTokens(TrainerCallback):
    """Flushes the token count where it is read: before a checkpoint is saved, at the end."""

    def __init__(self, trainer: GradienceTrainer):
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_save:  # the checkpoint written next stores the state
            self.trainer.flush_tokens()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.flush_tokens()
